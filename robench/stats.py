"""Correlation statistics on oriented quality vs MOS (method-notes §3)."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def correlations(pred, mos) -> dict[str, float]:
    """SROCC, PLCC (raw, no logistic fit) and KROCC, plus n."""
    pred, mos = np.asarray(pred, dtype=float), np.asarray(mos, dtype=float)
    if pred.shape != mos.shape or pred.ndim != 1:
        raise ValueError(f"pred and mos must be 1-D of equal length, got {pred.shape} and {mos.shape}")
    n = int(pred.size)
    if n < 3 or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return {"srocc": float("nan"), "plcc": float("nan"), "krocc": float("nan"), "n": n}
    return {"srocc": float(sps.spearmanr(pred, mos).statistic), "plcc": float(sps.pearsonr(pred, mos).statistic),
            "krocc": float(sps.kendalltau(pred, mos).statistic), "n": n}


def twoafc_accuracy(q0, q1, judge) -> float:
    """2AFC score (BAPPS / LPIPS paper) with distances ``d = −q``: per triplet
    ``1[d0<d1]·(1−p) + 1[d1<d0]·p + ½·1[d0=d1]``, ``p`` the fraction preferring ``p1``; the mean."""
    d0, d1, p = -np.asarray(q0, dtype=float), -np.asarray(q1, dtype=float), np.asarray(judge, dtype=float)
    s = (d0 < d1) * (1 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)
    return float(s.mean()) if s.size else float("nan")
