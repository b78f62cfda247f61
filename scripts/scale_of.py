"""Clean-score scale of targets on a dataset split: SD of the MOS-scale prediction (the target's
own calibration), its ratio to the first target's, SROCC and R² = 1 − MSE/Var(MOS), and the
Theorem-1 evidence of recipe weights (non-vacuous batch fraction).

    python scripts/scale_of.py birqa birqa.r birqa.at birqa.aat --split val
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import robench
from robench.engine.train import predict
from robench.core.stats import correlations


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--dataset", default="mini")
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    data = robench.load_dataset(a.dataset, split=a.split)
    out, sd0 = [], None
    for name in a.models:
        t = robench.load_model(name).eval()
        q, mos = predict(t, data, batch_size=64)
        with torch.no_grad():
            pred = t.calibration(torch.as_tensor(q, dtype=torch.float32)).double().numpy()
        sd = float(pred.std())
        sd0 = sd if sd0 is None else sd0
        prov = t.card.weights.provenance or {}
        t1 = prov.get("theorem1") or {}
        out.append(
            {
                "model": name,
                "sha256": (t.card.weights.sha256 or "")[:12],
                "n": len(mos),
                "sd": sd,
                "sd_ratio": sd / sd0,
                "srocc": correlations(q, mos)["srocc"],
                "r2": float(1 - np.mean((pred - mos) ** 2) / np.var(mos)),
                "non_vacuous_fraction": t1.get("non_vacuous_fraction"),
                "stop_reason": prov.get("stop_reason"),
                "steps_run": prov.get("steps_run"),
            }
        )
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{a.dataset}/{a.split}, MOS SD {float(np.std(mos)):.3f}")
    print("| model | sha256 | SD | SD / first | SROCC | R² | Theorem-1 non-vacuous | stop |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        nv = "—" if r["non_vacuous_fraction"] is None else f"{100 * r['non_vacuous_fraction']:.0f} %"
        print(
            f"| {r['model']} | {r['sha256']} | {r['sd']:.3f} | {r['sd_ratio']:.2f} | {r['srocc']:.3f} | {r['r2']:.3f} "
            f"| {nv} | {r['stop_reason'] or '—'} {r['steps_run'] or ''} |"
        )


if __name__ == "__main__":
    main()
