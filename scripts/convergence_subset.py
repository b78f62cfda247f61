"""Does the convergence check on a quarter of the items decide as the re-run on every item did?

For every stored cell with a convergence record (``--store``): the half-budget attack on the
check's items (robench.engine.cell.check_items), the cell's stored full-budget rows for the same
items, and the rule's decision — beside the decision stored by the re-run on every item. With
``--fresh ATTACK[,ATTACK…]`` also new cells of ``--model`` on ``--n`` test items, each decided
both ways in this process (the attacks whose quick budgets the old rule flags).

    python scripts/convergence_subset.py --store reports/protocols/results.sqlite \
        --fresh square,parsimonious,autoattack,cw,zhang --model birqa --n 32 --out reports/bench/convergence-subset

Needs the stored cells' weights on this machine (their sha256 is checked) and the same items.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import robench
from robench.core.registry import ATTACKS
from robench.engine import cell as C
from robench.engine.items import load_items
from robench.engine.store import Store
from robench.core.target import fingerprint


def _target(cfg: dict):
    name = cfg["target"]["name"]
    tag = cfg["defense"].get("training")
    return robench.load_model(f"{name}.{tag}" if tag and not name.endswith(f".{tag}") else name)


def _decide(target, attack, items, eps, signs, full_gain_items, batch=32, all_items=False):
    """The rule on the check's items (or on every item, the old rule, with ``all_items``): half
    gains, full gains, gaps, flag, seconds."""
    n = len(items)
    idx = torch.arange(n) if all_items else C.check_items(n, attack.seed, attack)
    sub = None if len(idx) == n else idx
    t0 = time.perf_counter()
    res = C._run_at(attack, attack.half_budget(), target, items, eps, batch, signs, sub)
    half = C.directed_gains(res, target.lower_better, C._rows(signs, sub))
    full = [float(g[idx].mean()) for g in full_gain_items]
    gap = C._rel_gap(full, half)
    return {
        "items": len(idx),
        "half_gain": half,
        "full_gain": full,
        "rel_gap": gap,
        "not_converged": C._short(gap),
        "seconds": time.perf_counter() - t0,
    }


def stored(store: Path) -> list[dict]:
    out = []
    with Store(store) as s:
        cells = s.cells()
        for _, r in cells.iterrows():
            conv = (r["flags"] or {}).get("convergence")
            if not conv:
                continue
            cfg = r["config"]
            target = _target(cfg)
            if fingerprint(target) != r["weights_sha256"]:
                print(
                    f"skip {r['key'][:10]}: this machine's {r['target']} weights are not the stored cell's",
                    file=sys.stderr,
                )
                continue
            ds = cfg["dataset"]
            items = load_items(ds["name"], ds["split"], ds["n_requested"], ds["subset_seed"], ds["options"])
            if items.digest != ds["items_sha256"]:
                print(f"skip {r['key'][:10]}: items differ from the stored cell's", file=sys.stderr)
                continue
            a = cfg["attack"]
            attack = ATTACKS.get(a["name"])(profile=cfg["profile"], seed=cfg["seed"], **a["params"])
            eps = list(cfg["eps"])
            signs, _ = C.direction_signs(cfg.get("direction", "up"), items)
            rows = s.results(r["key"]).sort_values(["eps", "item"])
            gains = []
            for e in eps:
                g = rows[rows.eps == e]
                d = torch.tensor((g["score"] - g["clean_score"]).to_numpy(), dtype=torch.float64)
                if target.lower_better:
                    d = -d
                gains.append(d * signs.double())
            # the half-budget rule's own decision (a plateau probe's verdict is a separate check)
            stored_rec = {
                "items": conv.get("items", len(items)),
                "rel_gap": conv["rel_gap"],
                "not_converged": C._short(conv["rel_gap"]),
                "plateau_probe_flagged": (conv.get("plateau_probe") or {}).get("not_converged"),
            }
            if stored_rec["items"] < len(items):  # stored by the subset rule: compute the old one
                old_rec, new_rec = _decide(target, attack, items, eps, signs, gains, all_items=True), stored_rec
            else:  # stored by the old rule (every item): compute the subset rule
                old_rec, new_rec = stored_rec, _decide(target, attack, items, eps, signs, gains)
            out.append(
                {
                    "cell": r["key"][:12],
                    "target": r["target"],
                    "defense": cfg["defense"]["name"],
                    "attack": a["name"],
                    "direction": cfg.get("direction", "up"),
                    "n": len(items),
                    "old": old_rec,
                    "new": new_rec,
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def fresh(model: str, attacks: list[str], n: int, eps: float) -> list[dict]:
    target = robench.load_model(model)
    items = load_items("mini", "test", n, 0, {})
    out = []
    for name in attacks:
        attack = robench.load_attack(name)
        t0 = time.perf_counter()
        rec, rows = C.run_cell(target, attack, items, [eps], batch_size=32)
        conv = rec["flags"].get("convergence")
        if conv is None:
            continue
        cell_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        half_all = C._run_at(attack, attack.half_budget(), target, items, [eps], 32)
        half_s = time.perf_counter() - t1
        full_all = sum(r["score"] - r["clean_score"] for r in rows) / len(rows) * (-1 if target.lower_better else 1)
        gap_all = C._rel_gap([full_all], C.directed_gains(half_all, target.lower_better))
        out.append(
            {
                "target": model,
                "defense": "none",
                "attack": name,
                "direction": "up",
                "n": len(items),
                "old": {"items": len(items), "rel_gap": gap_all, "not_converged": C._short(gap_all), "seconds": half_s},
                "new": {k: conv[k] for k in ("items", "half_gain", "full_gain", "rel_gap", "not_converged")},
                "cell_seconds_with_new_check": cell_s,
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--fresh", default="")
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    rows = (stored(args.store) if args.store else []) + (
        fresh(args.model, [a for a in args.fresh.split(",") if a], args.n, args.eps) if args.fresh else []
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    same = sum(r["old"]["not_converged"] == r["new"]["not_converged"] for r in rows)
    lines = [
        "# Convergence check on a quarter of the items vs on all items\n",
        f"`{' '.join(sys.argv)}`\n",
        f"Same decision on **{same} of {len(rows)}** cells.\n",
        "| target | defence | attack | direction | items | check items | old gap | old [nc] | new gap | new [nc] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['defense']} | {r['attack']} | {r['direction']} | {r['n']} | {r['new']['items']} | "
            f"{', '.join(f'{g:.3f}' for g in r['old']['rel_gap'])} | {'yes' if r['old']['not_converged'] else 'no'} | "
            f"{', '.join(f'{g:.3f}' for g in r['new']['rel_gap'])} | {'yes' if r['new']['not_converged'] else 'no'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
