"""Which inner objective should a recipe's adversarial fine-tune maximise? One slice per recipe ×
inner objective: fine-tune BiRQA (quick profile, same cap and seed), then attack the val split
with quick PGD under the ranking attack (mos-split) at each ε and record SROCC, clean SROCC,
the calibrated R² on the val items, steps run and seconds.

    python scripts/inner_objective.py --recipe aat --inner loss --json reports/bench/inner/aat-loss.json
    python scripts/inner_objective.py --recipe aat --set aat_band_fraction=1.0 --json ...   # other settings

Each slice trains in its own ROBENCH_HOME (``--homes``/<slice name>), so slices run side by
side without overwriting each other's ``birqa.<recipe>`` entry; the built datasets of the default
home are linked in (read-only use). Merge: ``python scripts/inner_objective.py --merge
reports/bench/inner/*.json --out reports/bench/inner-objective``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def overrides(args) -> dict:
    """``--set field=value`` pairs: profile fields of the fine-tune (values read as JSON when they parse)."""
    out = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def slice_name(args) -> str:
    if args.recipe == "none":
        return "none"
    return "-".join([args.recipe, args.inner] + [f"{k}={v}" for k, v in sorted(overrides(args).items())])


def run_slice(args) -> dict:
    home = Path(args.homes) / slice_name(args)
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    shared = Path.home() / ".cache" / "robench" / "datasets"
    for d in shared.glob("*") if shared.exists() else []:
        link = home / "datasets" / d.name
        if not link.exists():
            link.symlink_to(d)
    os.environ["ROBENCH_HOME"] = str(home)

    import numpy as np
    import torch

    from robench.attacks.pgd import PGD
    from robench.core.config import dataset_options_for
    from robench.core.profiles import get_profile
    from robench.core.registry import default_dataset
    from robench.engine.finetune import adversarial_train
    from robench.engine.bench import machine
    from robench.engine.cell import run_cell
    from robench.engine.items import load_items
    from robench.models import load_model

    torch.set_num_threads(args.threads)
    prof = get_profile("quick")
    ds = default_dataset()
    t0 = time.perf_counter()
    if args.recipe == "none":  # the undefended model on the same items: the row the recipes are read against
        tr = {"steps": 0, "cap": 0, "stopped": "not trained", "sha256": None}
        target = load_model(args.model).eval()
    else:
        tr = adversarial_train(
            args.model,
            args.recipe,
            dataset=ds,
            profile="quick",
            seed=0,
            steps=args.steps,
            progress=False,
            inner=args.inner,
            overrides=overrides(args),
        )
        target = load_model(f"{args.model}.{args.recipe}").eval()
    train_s = time.perf_counter() - t0
    items = load_items(ds, "val", args.n, 0, dataset_options_for(ds, prof, {}))
    with torch.no_grad():
        pred = torch.cat(
            [target.predict_mos(items.dist[i : i + 32], items.ref[i : i + 32]) for i in range(0, len(items), 32)]
        )
    y = torch.tensor(items.labels["mos"], dtype=torch.float32)
    r2 = 1.0 - float(((pred - y) ** 2).mean()) / float(y.var(unbiased=False))
    t1 = time.perf_counter()
    rec, _ = run_cell(
        target, PGD(profile="quick", seed=0), items, list(args.eps), batch_size=prof.attack_batch, direction="mos-split"
    )
    prov = target.card.weights.provenance
    return {
        "model": args.model,
        "recipe": args.recipe,
        "inner": args.inner,
        "set": overrides(args),
        "name": slice_name(args),
        "n": len(items),
        "split": "val",
        "eps": list(args.eps),
        "direction": "mos-split",
        "attack": "pgd (quick)",
        "clean_srocc": rec["summary"]["clean_srocc"],
        "attacked_srocc": rec["summary"]["attacked_srocc"],
        "calibrated_r2": r2,
        "clean_sd": float(pred.std()),
        "mos_sd": float(y.std()),
        "not_converged": bool(rec["flags"].get("not_converged")),
        "steps_run": tr["steps"],
        "cap": tr["cap"],
        "stopped": tr["stopped"],
        "theorem1": prov.get("theorem1"),
        "train_seconds": round(train_s, 1),
        "attack_seconds": round(time.perf_counter() - t1, 1),
        "sha256": tr["sha256"] or target.card.weights.sha256,
        "machine": machine("cpu"),
        "threads": args.threads,
        "np": np.__version__,
    }


def merge(paths: list[str], out: str, note: str = "") -> None:
    runs = sorted(
        (json.loads(Path(p).read_text()) for p in paths), key=lambda r: (r["recipe"], r["inner"], str(r.get("set")))
    )
    eps = runs[0]["eps"]
    lines = [
        "# Inner objective of the adversarial fine-tunes",
        "",
        "BiRQA fine-tuned from the shipped clean weights (quick profile: cap "
        f"{max(r['cap'] for r in runs)} steps, inner PGD-5 at "
        f"ε 4/255, seed 0) with each inner objective; then quick PGD under the ranking attack (mos-split) on "
        f"{runs[0]['n']} val items (128 px), ε in /255 of [0, 1]. Higher attacked SROCC is better.",
        "",
        "Command: `bash reports/bench/inner/run.sh` (one slice per recipe × objective), merged by "
        "`python scripts/inner_objective.py --merge reports/bench/inner/*.json --out reports/bench/inner-objective`.",
        "",
        "| recipe | inner objective | other settings | clean SROCC | "
        + " | ".join(f"SROCC ε {e:g}" for e in eps)
        + " | calibrated R² | clean SD / MOS SD | Theorem 1 non-vacuous | steps (stop) | [nc] | train s |",
        "|---|---|---|---|" + "---|" * len(eps) + "---|---|---|---|---|---|",
    ]
    for r in runs:
        t1 = r.get("theorem1") or {}
        nv = f"{t1['non_vacuous']}/{t1['n_batches']}" if t1 else "–"
        other = ", ".join(f"{k}={v}" for k, v in sorted((r.get("set") or {}).items())) or "–"
        lines.append(
            f"| {r['recipe']} | {r['inner']} | {other} | {r['clean_srocc']:.3f} | "
            + " | ".join(f"{v:.3f}" for v in r["attacked_srocc"])
            + f" | {r['calibrated_r2']:.3f} | {r['clean_sd'] / r['mos_sd']:.2f} | {nv} | "
            f"{r['steps_run']} ({r['stopped']})"
            f" | {'yes' if r['not_converged'] else ''} | {r['train_seconds']:.0f} |"
        )
    best = {}
    # the inner-objective comparison: other settings at their defaults, the undefended row aside
    for r in (r for r in runs if not r.get("set") and r["recipe"] != "none"):
        score = sum(r["attacked_srocc"]) / len(r["attacked_srocc"])
        if r["recipe"] not in best or score > best[r["recipe"]][1]:
            best[r["recipe"]] = (r["inner"], score)
    lines += [
        "",
        "Best mean attacked SROCC over the ε per recipe: "
        + ", ".join(f"{k}: {v[0]} ({v[1]:.3f})" for k, v in sorted(best.items()))
        + ".",
    ]
    if note:
        lines += ["", note]
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    Path(out + ".json").write_text(json.dumps({"runs": runs, "best": best}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--recipe", default="aat")
    ap.add_argument("--inner", default="loss")
    ap.add_argument("--steps", type=int, default=None, help="fine-tune cap (default: the profile's)")
    ap.add_argument("--set", action="append", default=[], help="profile field=value of the fine-tune (repeatable)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[2.0, 4.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--homes", default="/tmp/robench-inner")
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge", nargs="*", default=None)
    ap.add_argument("--out", default="reports/bench/inner-objective")
    ap.add_argument("--note", default="", help="with --merge: a reading of the table, appended to the markdown")
    args = ap.parse_args()
    if args.merge is not None:
        merge(args.merge, args.out, args.note)
        return
    text = json.dumps(run_slice(args), indent=1)
    if args.json:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    print(text, file=sys.stdout)


if __name__ == "__main__":
    main()
