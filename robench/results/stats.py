"""Statistics on oriented quality (method-notes §3): correlations with MOS, 2AFC accuracy, the
MSU-benchmark robustness scores, and the paired (cluster) bootstrap of a difference.

Everything here takes *oriented* quality ``q`` (higher = better, ``−score`` for lower-better
targets); the store keeps raw scores and the reporter orients them once.
"""

from __future__ import annotations

from typing import Sequence

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


def twoafc_scores(q0, q1, judge) -> np.ndarray:
    """Per-triplet 2AFC score (BAPPS / LPIPS paper) with distances ``d = −q``:
    ``1[d0<d1]·(1−p) + 1[d1<d0]·p + ½·1[d0=d1]``, ``p`` the fraction of people preferring ``p1``."""
    d0, d1, p = -np.asarray(q0, dtype=float), -np.asarray(q1, dtype=float), np.asarray(judge, dtype=float)
    return (d0 < d1) * (1 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)


def twoafc_accuracy(q0, q1, judge) -> float:
    """2AFC accuracy: the mean per-triplet score."""
    s = twoafc_scores(q0, q1, judge)
    return float(s.mean()) if s.size else float("nan")


def minmax(q, clean) -> np.ndarray:
    """Min-max scale ``q`` with the range of the model's own clean scores (method-notes §3)."""
    clean = np.asarray(clean, dtype=float)
    lo, span = float(np.min(clean)), float(np.ptp(clean))
    return (np.asarray(q, dtype=float) - lo) / (span if span > 0 else 1.0)


def msu_scores(q_clean, q_adv) -> dict[str, float]:
    """MSU-benchmark style scores (Antsiferova et al.) on min-max scaled scores ``s``: mean
    absolute gain ``|s_adv − s|`` and mean robustness ``R = log10(max(1−s, s) / (|s − s_adv| + 1e-6))``
    (higher R = moved less relative to the room it had)."""
    s, sa = minmax(q_clean, q_clean), minmax(q_adv, q_clean)
    moved = np.abs(sa - s)
    r = np.log10(np.maximum(1 - s, s) / (moved + 1e-6))
    return {"abs_gain": float(moved.mean()), "R": float(r.mean())}


# --------------------------------------------------------------------------------------------
# paired bootstrap (paper §C.5)


def default_clusters(ref_ids: Sequence | None):
    """Cluster by reference image when references repeat (KADID, TID, PIPAL, mini: many
    distorted images share one reference, so items are not independent); None otherwise."""
    if ref_ids is None:
        return None
    ref_ids = np.asarray(ref_ids)
    return ref_ids if len(np.unique(ref_ids)) < len(ref_ids) else None


def bootstrap_weights(n: int, n_resamples: int, seed: int, clusters=None) -> np.ndarray:
    """Resamples as multiplicities (B×n): how often each item enters resample b. Items drawn with
    replacement, or whole clusters drawn with replacement (every member of a drawn cluster
    enters; resample sizes then vary). Same distribution as index resampling, but vectorisable."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, n, size=(n_resamples, n))
        return np.bincount((idx + n * np.arange(n_resamples)[:, None]).ravel(),
                           minlength=n_resamples * n).reshape(n_resamples, n)
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(inv.max()) + 1
    draws = rng.integers(0, k, size=(n_resamples, k))
    counts = np.bincount((draws + k * np.arange(n_resamples)[:, None]).ravel(),
                         minlength=n_resamples * k).reshape(n_resamples, k)
    return counts[:, inv]


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of every item in the sample where item i appears w[b, i] times (ties and
    copies share their mean rank, as rankdata does on the expanded sample)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # tie groups in sorted order
    group = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    gw = np.add.reduceat(w[:, order], starts, axis=1).astype(float)  # B×groups
    before = np.cumsum(gw, axis=1) - gw
    ranks_sorted = before[:, group] + (gw[:, group] + 1) / 2
    out = np.empty_like(ranks_sorted)
    out[:, order] = ranks_sorted
    return out


def srocc_weighted(x, y, w) -> np.ndarray:
    """SROCC of ``x`` vs ``y`` in each resample given as multiplicities ``w`` (B×n)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.atleast_2d(w)
    rx, ry = _weighted_ranks(x, w), _weighted_ranks(y, w)
    tot = w.sum(1, keepdims=True).astype(float)
    mx, my = (w * rx).sum(1, keepdims=True) / tot, (w * ry).sum(1, keepdims=True) / tot
    dx, dy = rx - mx, ry - my
    cov, vx, vy = (w * dx * dy).sum(1), (w * dx * dx).sum(1), (w * dy * dy).sum(1)
    den = np.sqrt(vx * vy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, cov / np.where(den > 0, den, 1.0), np.nan)


def mean_weighted(x, y, w) -> np.ndarray:
    """Mean of per-item scores (2AFC) in each resample."""
    w = np.atleast_2d(w).astype(float)
    return (w * np.asarray(x, dtype=float)).sum(1) / w.sum(1)


def paired_bootstrap(a, b, y=None, *, stat=srocc_weighted, n_resamples: int = 1000, seed: int = 0,
                     clusters=None, alpha: float = 0.05) -> dict:
    """Paired bootstrap of ``Δ = stat(a, y) − stat(b, y)``: the same resamples for both (items
    aligned), ``n_resamples`` times. Returns the observed Δ, the median Δ (the effect), the
    percentile CI and ``significant`` (the CI excludes 0). ``stat`` is SROCC against ``y`` (MOS)
    by default; ``mean_weighted`` for per-triplet 2AFC scores."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    y = np.zeros_like(a) if y is None else np.asarray(y, dtype=float)
    if not (a.shape == b.shape == y.shape) or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs aligned 1-D arrays, got {a.shape}, {b.shape}, {y.shape}")
    w = bootstrap_weights(len(a), n_resamples, seed, clusters)
    d = stat(a, y, w) - stat(b, y, w)
    d = d[np.isfinite(d)]
    ones = np.ones((1, len(a)), dtype=int)
    observed = float(stat(a, y, ones)[0] - stat(b, y, ones)[0])
    out = {"delta": observed, "n_resamples": n_resamples, "seed": seed, "cluster": clusters is not None}
    if d.size == 0:
        return {**out, "effect": float("nan"), "ci": [float("nan")] * 2, "significant": False}
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {**out, "effect": float(np.median(d)), "ci": [float(lo), float(hi)], "significant": bool(lo > 0 or hi < 0)}


def bootstrap_ci(x, y=None, *, stat=srocc_weighted, n_resamples: int = 1000, seed: int = 0,
                 clusters=None, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of one statistic (the bands of the metric-vs-ε plot)."""
    x = np.asarray(x, dtype=float)
    y = np.zeros_like(x) if y is None else np.asarray(y, dtype=float)
    v = stat(x, y, bootstrap_weights(len(x), n_resamples, seed, clusters))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
