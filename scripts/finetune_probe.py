"""A recipe's fine-tune run past its stopping rule, to see whether a "did not train" verdict is the
rule's window or the recipe: the held-out rule's patience raised so the run goes to the cap, its
curves drawn as a PNG beside the run.

    ROBENCH_HOME=/tmp/probehome python scripts/finetune_probe.py lpips.alex at --patience 40 \
        --steps 400 --out /tmp/probe/lpips.alex.at

Prints the held-out objective every 50 steps, the clean calibrated R² and where it stopped."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("recipe")
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from robench.engine.finetune import adversarial_train
    from robench.results.plots import plot_training

    torch.set_num_threads(args.threads)
    overrides = {"adv_patience": args.patience, **({"adv_lr": args.lr} if args.lr else {})}
    res = adversarial_train(
        args.model, args.recipe, steps=args.steps, overrides=overrides, out=args.out, progress=False
    )
    log = json.loads((Path(args.out) / "steps.json").read_text())
    rows = log["heldout"]
    print(plot_training(Path(args.out), str(Path(args.out) / "curves")))
    summary = {
        "model": args.model,
        "recipe": args.recipe,
        "overrides": overrides,
        "stopped": log.get("stopped"),
        "val_srocc": res.get("val_srocc"),
        "heldout_ema": [(r["step"], round(r["ema"], 4)) for r in rows if r["step"] % 50 == 0],
        "clean_r2": [(r["step"], round(r["clean_r2"], 3)) for r in rows if r["step"] % 50 == 0],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
