"""A recipe's fine-tune at several learning rates: where each run stopped, its held-out curve and
clean scale, side by side (the measurement behind the quick profile's fine-tune learning rates).

    ROBENCH_HOME=/tmp/lr-home python scripts/finetune_lr.py --model lpips.alex --recipes at,aat --lrs 3e-4,1e-3

Each run registers its weights in ``$ROBENCH_HOME`` (use a scratch home) and writes its run folder
to ``/tmp/ft-<model>-<recipe>-lr<lr>``; one line per run: recipe, lr, stop reason, steps, val SROCC,
then (step, held-out EMA, clean SD / step-0 SD, calibrated R²) per evaluation and, for AAT, the
batches whose Theorem-1 bound was non-vacuous."""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--recipes", default="r")
    ap.add_argument("--lrs", default="1e-4,2e-5")
    args = ap.parse_args()

    from robench.engine.finetune import adversarial_train

    for recipe in args.recipes.split(","):
        for lr in [float(x) for x in args.lrs.split(",")]:
            out = f"/tmp/ft-{args.model}-{recipe}-lr{lr:g}"
            r = adversarial_train(args.model, recipe, overrides={"adv_lr": lr}, out=out, progress=False)
            log = json.load(open(f"{out}/steps.json"))
            held = [
                (h["step"], round(h["ema"], 4), round(h["clean_sd_ratio"], 2), round(h["clean_r2"], 2))
                for h in log["heldout"]
            ]
            bound = [s for s in log["steps"] if "vacuous" in s]
            nonvac = f" non-vacuous {sum(not s['vacuous'] for s in bound)}/{len(bound)}" if bound else ""
            print(recipe, lr, r["stopped"], r["steps"], round(r["val_srocc"], 4), held, nonvac, flush=True)


if __name__ == "__main__":
    main()
