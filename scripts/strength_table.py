"""Merge the per-target attack-strength runs into one table (JSON and markdown).

    python scripts/strength_table.py reports/bench/attack-strength-*.json \
        --out reports/bench/attack-strength

Each input is the ``--json`` output of ``robench bench attack-strength`` for one or more targets.
The markdown lists every attack × target × direction × ε ratio with its interval, and per attack
and direction the lowest ratio over targets and ε: the figure an attack declares as its
``strength`` (robench/attacks/*.py), which flags its cells [nc] below core.flags.STRENGTH_FLOOR."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

#: which rows measure a way of moving: the items of a one-way direction, and each half of mos-split
WAYS = {("up", "all"): "up", ("down", "all"): "down", ("mos-split", "up"): "up", ("mos-split", "down"): "down"}


def lowest(rows: list[dict], key: str = "ratio") -> dict[str, dict[str, float]]:
    """Per attack and way (up, down) the lowest ``key`` over targets, ε and directions."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        way = WAYS.get((r["direction"], r.get("items", "all")))
        if way is None or r.get(key) is None or r[key] != r[key]:
            continue
        cur = out[r["attack"]].get(way)
        out[r["attack"]][way] = r[key] if cur is None else min(cur, r[key])
    return {a: dict(sorted(v.items())) for a, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", required=True, help="path without extension: writes .json and .md")
    ap.add_argument("--note", default="", help="a sentence for the markdown header (e.g. the commit measured)")
    args = ap.parse_args()
    runs = [json.load(open(p)) for p in args.inputs]
    rows = [r for run in runs for r in run["rows"]]
    refs = [r for run in runs for r in run["references"]]
    # the reading: the move over the converged reference's alone (the table's ratio divides
    # by the per-item best of the reference and every attack, which other attacks' optima raise)
    by_ref = {(r["model"], r["direction"], r.get("items", "all"), r["eps"]): r for r in refs}
    for r in rows:
        ref_move = by_ref[(r["model"], r["direction"], r.get("items", "all"), r["eps"])]["reference_move"]
        r["vs_reference"] = r["mean_move"] / ref_move if ref_move > 0 else None
    first = runs[0]
    merged = {
        "profile": first["profile"],
        "dataset": first["dataset"],
        "split": first["split"],
        "n": first["n"],
        "interval": first["interval"],
        "reference": first["reference"],
        "machine": first["machine"],
        "inputs": args.inputs,
        "rows": rows,
        "references": refs,
        "lowest": lowest(rows),
        "lowest_vs_reference": lowest(rows, "vs_reference"),
    }
    with open(args.out + ".json", "w") as fh:
        json.dump(merged, fh, indent=1)
        fh.write("\n")
    ref = first["reference"]
    lines = [
        f"# Attack strength per direction ({first['profile']} profile)",
        "",
        f"Mean directed move `sign · (q_adv − q_clean)` of each attack as a fraction of the per-item best of a "
        f"converged reference (PGD {ref['steps']} steps × {ref['restarts']} starts: δ = 0, then random; cosine "
        f"step{'' if not ref.get('inertia') else ', heavy ball ' + format(ref['inertia'], 'g')}; best iterate) "
        f"and every attack measured, on the same {first['n']} items of "
        f"`{first['dataset']}` {first['split']} (128 px), ε in /255 of [0, 1]. Interval: {first['interval']}. "
        "`mos-split` rows give each half of the ranking attack (its upward and downward items).",
        "",
        *([args.note, ""] if args.note else []),
        "Command: `robench bench attack-strength --json` per target, merged by `python scripts/strength_table.py`.",
        "",
        "## Lowest ratio per attack and way (over targets and ε)",
        "",
        "Two readings: *ratio* (what each attack declares as its `strength` and what flags its cells) divides by "
        "the per-item best of the reference and every attack measured; *vs reference* divides by the converged "
        "reference PGD's own mean move. Where they differ, another attack (AutoAttack, Zhang) found better points "
        "than many-step restarted PGD does on some items: the per-image worst case over attacks (the robustness "
        "table's 'worst' column) is the number that sees them.",
        "",
        "| attack | up: ratio | down: ratio | up: vs reference | down: vs reference |",
        "|---|---|---|---|---|",
    ]
    nan = float("nan")
    for a, v in merged["lowest"].items():
        w = merged["lowest_vs_reference"].get(a, {})
        lines.append(
            f"| {a} | {v.get('up', nan):.3f} | {v.get('down', nan):.3f} | {w.get('up', nan):.3f} | "
            f"{w.get('down', nan):.3f} |"
        )
    lines += [
        "",
        "## Every measurement",
        "",
        "| target | direction | items | ε/255 | attack | budget | ratio | 95 % interval | vs reference | moved | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["direction"], r.get("items", "all"), r["eps"], r["attack"])):
        lines.append(
            f"| {r['model']} | {r['direction']} | {r.get('items', 'all')} | {r['eps']:g} | {r['attack']} | "
            f"`{json.dumps(r.get('settings', r['budget']))}` | {r['ratio']:.3f} | {r['lo']:.3f}–{r['hi']:.3f} | "
            f"{'—' if r['vs_reference'] is None else format(r['vs_reference'], '.3f')} | "
            f"{r['moved']}/{r.get('n', first['n'])} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "## The reference",
        "",
        "| target | direction | items | ε/255 | best move | reference / best | reference s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(refs, key=lambda r: (r["model"], r["direction"], r.get("items", "all"), r["eps"])):
        lines.append(
            f"| {r['model']} | {r['direction']} | {r.get('items', 'all')} | {r['eps']:g} | {r['best_move']:.4g} | "
            f"{r['reference_ratio']:.3f} | {r['reference_seconds']:.0f} |"
        )
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(json.dumps(merged["lowest"], indent=1))


if __name__ == "__main__":
    main()
