"""Statistics on oriented quality (docs/method.md §3): correlations with MOS, 2AFC accuracy, the
MSU-benchmark robustness scores, and the paired (cluster) bootstrap of a difference.

Everything here takes *oriented* quality ``q`` (higher = better, ``−score`` for lower-better
targets); the store keeps raw scores and the reporter orients them once.
"""

from __future__ import annotations

from typing import Any

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
    return {
        "srocc": float(sps.spearmanr(pred, mos).statistic),
        "plcc": float(sps.pearsonr(pred, mos).statistic),
        "krocc": float(sps.kendalltau(pred, mos).statistic),
        "n": n,
    }


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
    """Min-max scale ``q`` with the range of the model's own clean scores (docs/method.md §3)."""
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


def bootstrap_weights(n: int, n_resamples: int, seed: int, clusters=None) -> np.ndarray:
    """Resamples as multiplicities (B×n): how often each item enters resample b. Items drawn with
    replacement, or whole clusters drawn with replacement (every member of a drawn cluster
    enters; resample sizes then vary). Same distribution as index resampling, but vectorisable."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, n, size=(n_resamples, n))
        return np.bincount((idx + n * np.arange(n_resamples)[:, None]).ravel(), minlength=n_resamples * n).reshape(
            n_resamples, n
        )
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(inv.max()) + 1
    draws = rng.integers(0, k, size=(n_resamples, k))
    counts = np.bincount((draws + k * np.arange(n_resamples)[:, None]).ravel(), minlength=n_resamples * k).reshape(
        n_resamples, k
    )
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


def paired_bootstrap(
    a, b, y=None, *, stat=srocc_weighted, n_resamples: int = 1000, seed: int = 0, clusters=None, alpha: float = 0.05
) -> dict:
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
    n_clusters = int(len(np.unique(np.asarray(clusters)))) if clusters is not None else int(len(a))
    out = {
        "delta": observed,
        "n_resamples": n_resamples,
        "seed": seed,
        "cluster": clusters is not None,
        "n_items": int(len(a)),
        "n_clusters": n_clusters,
    }
    return _summary(out, d, observed, alpha)


def _summary(out: dict, d: np.ndarray, observed: float, alpha: float) -> dict:
    """A bootstrap's result record: ``out`` plus the median resampled Δ (the effect), its
    percentile CI, whether the CI excludes 0 and the p-value (NaN when no resample was finite)."""
    if d.size == 0:
        return {**out, "effect": float("nan"), "ci": [float("nan")] * 2, "significant": False, "p": float("nan")}
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {
        **out,
        "effect": float(np.median(d)),
        "ci": [float(lo), float(hi)],
        "significant": bool(lo > 0 or hi < 0),
        "p": bootstrap_p(observed, d),
    }


def seed_counts(n_seeds: int, n_resamples: int, rng) -> np.ndarray:
    """B×S multiplicities of ``n_seeds`` seeds drawn with replacement per resample."""
    draws = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    return np.bincount(
        (draws + n_seeds * np.arange(n_resamples)[:, None]).ravel(), minlength=n_resamples * n_seeds
    ).reshape(n_resamples, n_seeds)


def seeded_paired_bootstrap(
    a, b, y=None, *, stat=srocc_weighted, n_resamples: int = 1000, seed: int = 0, clusters=None, alpha: float = 0.05
) -> dict:
    """:func:`paired_bootstrap` over training seeds: ``a`` (S_a × n) and ``b``
    (S_b × n) hold one prediction per training seed of each side, items aligned. A two-stage
    resample: the photos (or items) once, shared by every seed of both sides (the pairing with the
    base), then each side's seeds with replacement, independently; the statistic is
    ``mean over the drawn seeds of stat(a_s) − mean over the drawn seeds of stat(b_s)``. The observed
    Δ is the difference of the means over all seeds. The photo draws are those of
    :func:`paired_bootstrap` with the same ``seed`` (the seed draws come from a second stream), so
    with one seed on each side the result is exactly :func:`paired_bootstrap`'s."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[0] == 1 and b.shape[0] == 1:
        return paired_bootstrap(
            a[0], b[0], y, stat=stat, n_resamples=n_resamples, seed=seed, clusters=clusters, alpha=alpha
        )
    n = a.shape[1]
    y = np.zeros(n) if y is None else np.asarray(y, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != n or y.shape != (n,):
        raise ValueError(f"seeded paired bootstrap needs S×n arrays and n labels, got {a.shape}, {b.shape}, {y.shape}")
    w = bootstrap_weights(n, n_resamples, seed, clusters)  # the same photo draws as paired_bootstrap
    rng = np.random.default_rng([seed, 17])  # the seed draws: a separate stream
    ca, cb = seed_counts(a.shape[0], n_resamples, rng), seed_counts(b.shape[0], n_resamples, rng)
    ma = np.stack([stat(x, y, w) for x in a], axis=1)  # B × S_a: each seed's statistic per resample
    mb = np.stack([stat(x, y, w) for x in b], axis=1)
    # a NaN of a seed that was not drawn does not count; one that was drawn makes the resample NaN
    bad = ((ca > 0) & ~np.isfinite(ma)).any(1) | ((cb > 0) & ~np.isfinite(mb)).any(1)
    d = (
        np.where(ca > 0, ca * np.nan_to_num(ma), 0).sum(1) / a.shape[0]
        - np.where(cb > 0, cb * np.nan_to_num(mb), 0).sum(1) / b.shape[0]
    )
    d = d[~bad]
    ones = np.ones((1, n), dtype=int)
    per_a = [float(stat(x, y, ones)[0]) for x in a]
    per_b = [float(stat(x, y, ones)[0]) for x in b]
    observed = float(np.mean(per_a) - np.mean(per_b))
    n_clusters = int(len(np.unique(np.asarray(clusters)))) if clusters is not None else int(n)
    out = {
        "delta": observed,
        "n_resamples": n_resamples,
        "seed": seed,
        "cluster": clusters is not None,
        "n_items": int(n),
        "n_clusters": n_clusters,
        "n_seeds": [int(a.shape[0]), int(b.shape[0])],
        "per_seed": [per_a, per_b],
    }
    return _summary(out, d, observed, alpha)


def bootstrap_p(observed: float, d) -> float:
    """Two-sided p-value of Δ = 0 from the bootstrap standard error: ``2·Φ(−|Δ| / sd(Δ*))``.
    Not the tail count of the resamples: that p has a resolution of 2/(B + 1), and after a Holm
    correction over m comparisons nothing could be significant unless B ≫ 40·m (≈ 120
    comparisons per report). Agrees with the percentile CI when Δ* is near normal."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.isfinite(observed):
        return float("nan")
    se = float(d.std(ddof=1))
    if se == 0:
        return 0.0 if observed != 0 else 1.0
    return float(2 * sps.norm.sf(abs(observed) / se))


def _adjusted(p, adjust) -> np.ndarray:
    """Apply ``adjust(sorted finite p, m)`` (returns adjusted values in that order) to the finite
    p-values; NaN p-values are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = adjust(p[order], ok.size)
    return out


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence): sort
    ascending, ``p_(i)·(m − i + 1)``, running maximum, capped at 1."""
    return _adjusted(p, lambda ps, m: np.maximum.accumulate(np.minimum(1.0, ps * (m - np.arange(m)))))


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false-discovery rate): ``p_(i)·m/i``, running
    minimum from the largest, capped at 1."""
    return _adjusted(p, lambda ps, m: np.minimum(1.0, np.minimum.accumulate((ps * m / (np.arange(m) + 1))[::-1])[::-1]))


#: the fewest independent photos from which a photo-clustered interval is reported
#: (docs/method.md §3): with fewer, the bootstrap's distribution of clusters is too coarse to mean much
MIN_PHOTOS = 10
BOOTSTRAP_MODES = ("auto", "photo", "item")


def bootstrap_units(mode: str, sources, what: str = "the cells") -> tuple[Any, str]:
    """The resampling units of a bootstrap: ``photo`` resamples source photos with all their
    items (the independent unit: crops and distortions of one photo are not independent) and
    refuses fewer than :data:`MIN_PHOTOS`; ``item`` resamples items; ``auto`` is photo when there
    are enough photos, else item — labelled so. Returns (clusters or None, label)."""
    from robench.core.errors import RobenchError

    if mode not in BOOTSTRAP_MODES:
        raise RobenchError(f"--bootstrap must be one of {', '.join(BOOTSTRAP_MODES)}, got {mode!r}")
    if mode == "photo" and sources is None:
        raise RobenchError(
            f"--bootstrap photo needs the items' source photos; {what} have none recorded (a store "
            "written before they were): rerun the cells, or use --bootstrap item"
        )
    if mode == "item" or sources is None:
        return None, "item bootstrap" + (" (no source photos recorded)" if sources is None and mode != "item" else "")
    sources = np.asarray(sources)
    k = int(len(np.unique(sources)))
    if k >= MIN_PHOTOS:
        return sources, f"photo bootstrap ({k} photos)"
    if mode == "photo":
        raise RobenchError(
            f"--bootstrap photo needs ≥ {MIN_PHOTOS} independent source photos; {what} have {k}: "
            f"use --bootstrap item (or auto), or evaluate on more photos"
        )
    return None, f"item bootstrap: only {k} source photos (< {MIN_PHOTOS}), items of one photo are not independent"


def bootstrap_ci(
    x, y=None, *, stat=srocc_weighted, n_resamples: int = 1000, seed: int = 0, clusters=None, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile CI of one statistic (the bands of the metric-vs-ε plot)."""
    x = np.asarray(x, dtype=float)
    y = np.zeros_like(x) if y is None else np.asarray(y, dtype=float)
    v = stat(x, y, bootstrap_weights(len(x), n_resamples, seed, clusters))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bound_summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """What a Theorem-1 log supports: on how many batches the bound held, and on how many it was
    *non-vacuous* (``bound < R``, the batch MOS range). A bound ≥ R allows errors as large as the
    labels' whole spread, so only non-vacuous batches count as evidence. Logs written before
    ``vacuous`` was logged are judged from ``bound`` and ``mos_range``."""
    bound = np.array([float(r["bound"]) for r in steps])
    err = np.array([float(r["emp_max_err"]) for r in steps])
    rng = np.array([float(r.get("mos_range", np.nan)) for r in steps])
    vac = np.array(
        [
            bool(r["vacuous"]) if "vacuous" in r else bool(not np.isfinite(rng[i]) or bound[i] >= rng[i])
            for i, r in enumerate(steps)
        ]
    )
    n = len(steps)
    held = err <= bound + 1e-6
    return {
        "n_batches": n,
        "held": int(held.sum()),
        "non_vacuous": int((~vac).sum()),
        "non_vacuous_fraction": float((~vac).mean()) if n else float("nan"),
        "held_non_vacuous": int((held & ~vac).sum()),
        "median_bound_rel": float(np.nanmedian(bound / rng)) if np.isfinite(rng).any() else float("nan"),
    }
