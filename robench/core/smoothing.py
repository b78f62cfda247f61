"""Median smoothing for regression (Chiang, Curry, Abdelkader, Kumar, Dickerson, Goldstein,
NeurIPS 2020, "Detection as Regression: Certified Object Detection by Median Smoothing").

The smoothed score of ``x`` is the median of ``q(x + ε)``, ``ε ~ N(0, σ² I)`` (the reference is not
perturbed). Let ``h_p(x)`` be the p-th percentile of that noisy score. For every ``‖δ‖₂ ≤ R``:

    h_{p₋}(x) ≤ h_{½}(x + δ) ≤ h_{p₊}(x),   p₋ = Φ(−R/σ),  p₊ = Φ(R/σ)

(their Theorem 1 with p = ½). With ``n`` Monte-Carlo draws, order statistics bound the two
percentiles: ``q₍k₎ ≤ h_p`` fails only when fewer than ``k`` draws fall at or below ``h_p``, an
event of probability at most ``P(Bin(n, p) ≤ k − 1)``; ``q₍k₎ ≥ h_p`` fails with probability at
most ``P(Bin(n, p) ≥ k)``. Each side gets α/2, so both bounds hold together with confidence
``1 − α``. When no order statistic satisfies a side (too few draws for that radius and α), the
item *abstains* at that radius: no interval is claimed.

Pure numpy/scipy: no targets, no plugins (the certify engine and the ``smooth`` defence use it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, norm

from robench.core.errors import RobenchError


@dataclass(frozen=True)
class OrderBounds:
    """1-based ranks of the order statistics that bound the percentiles at one radius (None:
    abstain on that side) and the percentiles themselves."""

    radius: float
    p_lower: float
    p_upper: float
    k_lower: int | None
    k_upper: int | None

    @property
    def abstain(self) -> bool:
        return self.k_lower is None or self.k_upper is None


def check_smoothing(sigma: float, samples: int, alpha: float) -> None:
    if not (sigma > 0 and np.isfinite(sigma)):
        raise RobenchError(f"--sigma must be a positive noise level (pixel units, e.g. 0.12), got {sigma!r}")
    if int(samples) < 1:
        raise RobenchError(f"--samples must be at least 1, got {samples!r}")
    if not (0 < alpha < 1):
        raise RobenchError(f"--alpha must be in (0, 1), e.g. 0.001, got {alpha!r}")


def order_bounds(n: int, sigma: float, radius: float, alpha: float) -> OrderBounds:
    """The ranks ``k₋, k₊`` (1-based) with ``P(Bin(n, p₋) ≤ k₋ − 1) ≤ α/2`` (largest such ``k₋``)
    and ``P(Bin(n, p₊) ≥ k₊) ≤ α/2`` (smallest such ``k₊``)."""
    check_smoothing(sigma, n, alpha)
    if radius < 0 or not np.isfinite(radius):
        raise RobenchError(f"--radius values must be ≥ 0 (L2, pixel units), got {radius!r}")
    p_lo, p_hi = float(norm.cdf(-radius / sigma)), float(norm.cdf(radius / sigma))
    k = np.arange(1, n + 1)
    lo_ok = np.nonzero(binom.cdf(k - 1, n, p_lo) <= alpha / 2)[0]
    hi_ok = np.nonzero(binom.sf(k - 1, n, p_hi) <= alpha / 2)[0]
    return OrderBounds(
        float(radius), p_lo, p_hi, int(k[lo_ok[-1]]) if lo_ok.size else None, int(k[hi_ok[0]]) if hi_ok.size else None
    )


def median_of(draws: np.ndarray) -> np.ndarray:
    """The smoothed score's estimate per row of ``draws`` (N × n): the lower median, an order
    statistic like the bounds (rank ⌈n/2⌉)."""
    s = np.sort(np.asarray(draws, dtype=float), axis=-1)
    return s[..., (s.shape[-1] + 1) // 2 - 1]


def certify_draws(draws: np.ndarray, sigma: float, radii: list[float], alpha: float) -> dict[str, np.ndarray]:
    """Bounds per row of ``draws`` (N × n noisy oriented scores) and radius: ``lower``/``upper``
    (N × R, NaN where abstained), ``abstain`` (N × R) and ``smoothed`` (N)."""
    s = np.sort(np.asarray(draws, dtype=float), axis=-1)
    N, n = s.shape
    lower = np.full((N, len(radii)), np.nan)
    upper = np.full((N, len(radii)), np.nan)
    abstain = np.ones((N, len(radii)), dtype=bool)
    for j, r in enumerate(radii):
        b = order_bounds(n, sigma, r, alpha)
        if not b.abstain:
            lower[:, j], upper[:, j] = s[:, b.k_lower - 1], s[:, b.k_upper - 1]
            abstain[:, j] = False
    return {"lower": lower, "upper": upper, "abstain": abstain, "smoothed": median_of(s)}
