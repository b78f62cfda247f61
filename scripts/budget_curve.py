"""Mean gain of one attack at a ladder of budgets (each a run of its own, same items and seed),
and the relative gap of each budget to the one before: where the half-budget rule would pass.

    python scripts/budget_curve.py --model birqa.aat --attack square --param queries \
        --budgets 150,300,600 --set p_init=0.05 --set p_init=0.3 --n 16 --eps 8

Each ``--set`` is one setting of the other parameters (repeatable; none = the profile's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import robench
from robench.engine.cell import _rel_gap, directed_gains
from robench.engine.items import load_items


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--param", required=True, help="the budget parameter")
    ap.add_argument("--budgets", required=True)
    ap.add_argument("--set", action="append", default=[], help="key=value[,key=value] (repeatable)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    target = robench.load_model(args.model)
    items = load_items("mini", "test", args.n, args.seed, {})
    settings = [dict(kv.split("=", 1) for kv in s.split(",")) for s in args.set] or [{}]
    out = []
    for st in settings:
        params = {k: _value(v) for k, v in st.items()}
        gains, secs = [], []
        for b in [int(v) for v in args.budgets.split(",")]:
            atk = robench.load_attack(args.attack, seed=args.seed, **params, **{args.param: b})
            t0 = time.perf_counter()
            res = atk(target, items.dist, items.ref, eps=[args.eps / 255], return_images=False, batch_size=32)
            secs.append(time.perf_counter() - t0)
            gains.append(directed_gains(res, target.lower_better)[0])
        gaps = [None] + [_rel_gap([g], [h])[0] for g, h in zip(gains[1:], gains[:-1])]
        row = {
            "model": args.model,
            "attack": args.attack,
            "setting": params,
            "n": len(items),
            "eps": args.eps,
            "budgets": args.budgets,
            "gains": gains,
            "rel_gap_to_half": gaps,
            "seconds": secs,
        }
        out.append(row)
        print(json.dumps(row), flush=True)
        print(
            f"{params}: "
            + ", ".join(
                f"{b}: {g:+.4f}" + ("" if gp is None else f" (gap {gp:.3f})")
                for b, g, gp in zip(args.budgets.split(","), gains, gaps)
            ),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
