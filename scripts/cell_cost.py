"""Wall time and strength of one PGD cell, today's settings beside the quick profile's, in one run.

    python scripts/cell_cost.py --model birqa --n 96 --eps 4 --direction mos-split \
        --json reports/bench/cell-cost.json

Each configuration runs ``robench.engine.cell.run_cell`` on the same items (the quick test split
of the default dataset), so the time includes the cell's convergence checks as a run pays them.
"today" is PGD as it was before the heavy-ball step and restarts (80 plain sign steps from δ = 0,
one start, the half-budget check only); the others are named on the command line as
``name:param=value,...`` (default: the quick profile's PGD). Strength is the mean directed move
``sign · (q_adv − q_clean)`` on the downward and upward items, as a ratio to today's on the same items."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--eps", type=float, default=4.0)
    ap.add_argument("--direction", default="mos-split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="name:param=value,... (PGD parameters; repeatable; default: quick:)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from robench.attacks.pgd import PGD
    from robench.core.config import dataset_options_for
    from robench.core.device import tune_cpu_allocator
    from robench.core.profiles import get_profile
    from robench.core.registry import default_dataset
    from robench.engine.bench import machine
    from robench.engine.cell import direction_signs, run_cell
    from robench.engine.items import load_items
    from robench.models import load_model

    class TodayPGD(PGD):
        another_start = None  # the check issue 38 added: today's cell did not pay for it

    torch.set_num_threads(args.threads)
    tune_cpu_allocator(True)
    prof = get_profile("quick")
    ds = default_dataset()
    items = load_items(ds, "test", args.n, 0, dataset_options_for(ds, prof, {}))
    signs = direction_signs(args.direction, items)[0].numpy()
    target = load_model(args.model)
    configs = [("today", TodayPGD, {"steps": 80, "restarts": 1, "patience": 0, "inertia": 0.0})]
    for spec in args.config or ["quick:"]:
        name, _, rest = spec.partition(":")
        params = {}
        for kv in filter(None, rest.split(",")):
            k, _, v = kv.partition("=")
            params[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false", "null") else v
        configs.append((name, PGD, params))
    out = {
        "model": args.model,
        "n": len(items),
        "eps": args.eps,
        "direction": args.direction,
        "profile": "quick",
        "machine": machine("cpu"),
        "threads": args.threads,
        "runs": [],
    }
    gains = {}
    for name, cls, params in configs:
        attack = cls(profile="quick", seed=0, **params)
        t0 = time.perf_counter()
        rec, rows = run_cell(target, attack, items, [args.eps], batch_size=prof.attack_batch, direction=args.direction)
        wall = time.perf_counter() - t0
        g = np.array([r["score"] - r["clean_score"] for r in sorted(rows, key=lambda r: r["item"])])
        g = signs * (-g if target.lower_better else g)
        gains[name] = g
        conv = rec["flags"].get("convergence", {})
        out["runs"].append(
            {
                "name": name,
                "params": {
                    k: attack.params[k]
                    for k in ("steps", "restarts", "patience", "inertia", "amp")
                    if k in attack.params
                },
                "seconds": round(wall, 1),
                "attack_seconds": round(rec["attack_seconds"], 1),
                "mean_move_down": float(g[signs < 0].mean()),
                "mean_move_up": float(g[signs > 0].mean()),
                "srocc": rec["summary"]["attacked_srocc"][0],
                "clean_srocc": rec["summary"]["clean_srocc"],
                "not_converged": bool(rec["flags"].get("not_converged")),
                "half_rel_gap": conv.get("rel_gap"),
                "another_start_rel_gap": (conv.get("another_start") or {}).get("rel_gap"),
            }
        )
        print(
            f"{name}: {wall:.0f} s, SROCC {out['runs'][-1]['srocc']:.3f}, move down {g[signs < 0].mean():.4g} "
            f"up {g[signs > 0].mean():.4g}",
            file=sys.stderr,
            flush=True,
        )
    base = out["runs"][0]
    for r in out["runs"]:
        r["time_ratio"] = r["seconds"] / base["seconds"]
        r["strength_down"] = r["mean_move_down"] / base["mean_move_down"]
        r["strength_up"] = r["mean_move_up"] / base["mean_move_up"]
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
