"""Anchored Adversarial Training: the band/anchor mini-batch sampler, the nearest-anchor hinge
and the Theorem-1 quantities (docs/method.md §2, paper §3.3-4).

Theorem 1: with anchor error ``δ = max_a |ŷ_a − y_a|``, coverage ``Δ`` (every non-anchor lies
within ``Δ`` of its nearest anchors below and above in MOS), ``η = max_i ℓ_i`` (the largest
normalised one-sided hinge) and the batch MOS range ``R``, every sample satisfies
``|ŷ_i − y_i| ≤ δ + Δ + η·R``. Every quantity is computed here from the *same* prediction vector,
so the logged bound must hold on every batch; a batch where it does not is a bug.

Holding is not evidence by itself: the theorem holds by algebra, and a bound at or above ``R``
allows errors as large as the labels' whole spread (a constant mid-range prediction already has
error ≤ R/2). :func:`anchored_terms` therefore also reports ``bound_rel = bound/R`` and
``vacuous = bound ≥ R``; only non-vacuous batches say something about the training.

**[choice] The hinge's normaliser** (with the paper's, AAT collapsed its score range 13×). The paper divides
each violation by the batch MOS range ``R``, a constant: every violation is a difference of two
predictions, so shrinking *all* predictions toward one value shrinks the hinge, and the only term
that resists (the MSE on the 8 anchors) lost at every step — a constant predictor wins the paper's
anchored loss. robench divides by the anchors' *prediction* range ``P = max_a ŷ_a − min_a ŷ_a``
instead, as ``ℓ_i = v_i / (v_i + P)`` (``hinge_norm="pred-range"``, ``P`` floored at 1 % of
``R``): ≈ ``v_i/P`` for small violations and below 1, so no violation outweighs the base terms; it is
unchanged by a global rescaling of the predictions, so shrinking earns nothing. A constant
predictor has hinge 0 but pays the base loss of a constant (MSE + λ·1) on the anchors and on the
recipe's replay items (:func:`robench.defenses.recipes.aat_objective`) — more than a model that ranks the
anchors (tests/test_aat_trust.py checks it on a real batch). Theorem 1 is untouched: its ``η``
is the largest violation over ``R`` (logged from the same prediction vector), and
``η·R`` is the largest raw violation whatever the loss divides by; only the loss's weighting of
violations changed, so the theorem bounds the trained model's error exactly as with the paper's
normaliser. ``hinge_norm="mos-range"`` is the paper's literal objective.

The sampler draws a moving MOS sub-range (``W = min(Δ·(K−1), ½ × dataset MOS range)``), with random
tie-breaks and fresh anchors on every draw (docs/method.md §2, batch construction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from robench.core.errors import RobenchError


@dataclass
class AnchorBatch:
    indices: np.ndarray  # dataset rows, length B
    is_anchor: np.ndarray  # bool, length B
    band: tuple[float, float]  # MOS of the band's first and last sample (the batch's MOS extent)
    anchor_ids: list = field(default_factory=list)  # dataset item ids of the anchors, MOS order


#: W = min(Δ·(K−1), BAND_FRACTION × dataset MOS range) **[choice]** (docs/method.md §2)
BAND_FRACTION = 0.5


class AnchorSampler:
    """Paper §4.1 / docs/method.md §2: draw a contiguous MOS band ``[lo, lo + W]`` with ``lo``
    uniform in ``[min MOS, max MOS − W]``; the samples closest to both band ends are anchors, the
    other anchors sit uniformly along the MOS axis inside the band, the rest of the batch is drawn
    uniformly from the band's non-anchors.

    ``W = min(Δ·(K−1), band_fraction × dataset MOS range)`` with ``band_fraction = 0.5``
    **[choice]**: the band is a real sub-range that moves (``W = min(Δ·(K−1), range)`` made it the
    whole range on the built-in set). Ties between equal MOS values (the built-in set has ~7
    items per cell mean) are broken at random on every :meth:`sample` (a fresh permutation before a
    stable sort), so the band ends and the anchors are different items from one draw to the next;
    with a seed per step (``recipes``) the draws are reproducible.

    Anchors chosen as the nearest sample to uniform targets can be a little more than ``Δ`` apart
    when MOS values are discrete: a repair pass then adds the farthest sample within ``Δ`` of the
    previous anchor as an extra anchor, so consecutive anchors are at most ``Δ`` apart whenever
    the data allows it.

    ``ids`` (optional, one per dataset row) are the stable item identifiers reported in
    :attr:`AnchorBatch.anchor_ids`; the row index when omitted."""

    def __init__(
        self,
        mos,
        batch: int = 32,
        anchors: int = 8,
        spacing: float = 0.5,
        seed: int = 0,
        band_fraction: float = BAND_FRACTION,
        ids=None,
    ):
        self.mos = np.asarray(mos, dtype=float)
        if anchors < 2 or batch <= anchors:
            raise RobenchError(f"AAT needs ≥ 2 anchors and a batch larger than the anchors (got {anchors}, {batch})")
        if not 0 < band_fraction <= 1:
            raise RobenchError(f"AAT band_fraction must be in (0, 1], got {band_fraction}")
        if len(self.mos) < batch:
            raise RobenchError(f"dataset has {len(self.mos)} samples, fewer than the AAT batch {batch}")
        self.batch, self.anchors, self.spacing = int(batch), int(anchors), float(spacing)
        self.band_fraction = float(band_fraction)
        self.ids = list(range(len(self.mos))) if ids is None else list(ids)
        if len(self.ids) != len(self.mos):
            raise RobenchError(f"AAT sampler got {len(self.ids)} item ids for {len(self.mos)} MOS values")
        self.span = float(self.mos.max() - self.mos.min())
        self.width = min(self.spacing * (self.anchors - 1), self.band_fraction * self.span)
        self.rng = np.random.default_rng(seed)

    def sample(self) -> AnchorBatch:
        perm = self.rng.permutation(len(self.mos))  # random tie-break: shuffle, then a stable sort
        order = perm[np.argsort(self.mos[perm], kind="stable")]
        ys = self.mos[order]
        lo = float(self.rng.uniform(ys[0], ys[-1] - self.width)) if ys[-1] - ys[0] > self.width else float(ys[0])
        hi = lo + self.width
        a, b = int(np.searchsorted(ys, lo, "left")), int(np.searchsorted(ys, hi, "right"))
        if b - a < self.batch:  # a sparse band: widen symmetrically until the batch fits
            need = self.batch - (b - a)
            a, b = max(0, a - need // 2 - 1), min(len(ys), b + need // 2 + 1)
            if b - a < self.batch:  # against an end of the MOS axis: extend on the other side
                a, b = (0, self.batch) if a == 0 else (len(ys) - self.batch, len(ys))
        band = np.arange(a, b)  # positions in this draw's sorted order
        by = ys[band]
        chosen = {int(band[0]), int(band[-1])}  # both band ends are always anchors
        for t in np.linspace(by[0], by[-1], self.anchors)[1:-1]:
            free = np.array([p for p in band if int(p) not in chosen])
            if not len(free):
                break
            # nearest to the target; among equal distances the first in this draw's (random) order
            chosen.add(int(free[int(np.argmin(np.abs(ys[free] - t)))]))
        anchors = sorted(chosen, key=lambda p: (ys[p], p))
        repaired = [anchors[0]]
        for p in anchors[1:]:  # repair: keep consecutive anchors ≤ Δ apart where the data allows
            while ys[p] - ys[repaired[-1]] > self.spacing + 1e-12:
                reach = band[(ys[band] > ys[repaired[-1]]) & (ys[band] <= ys[repaired[-1]] + self.spacing)]
                reach = [q for q in reach if int(q) not in set(repaired)]
                if not reach:
                    break  # a gap wider than Δ in the data itself; the logged Δ shows it
                repaired.append(int(max(reach, key=lambda q: (ys[q], q))))
            repaired.append(p)
        anchors = sorted(set(repaired), key=lambda p: (ys[p], p))
        pool = np.array([p for p in band if int(p) not in set(anchors)])
        n_fill = self.batch - len(anchors)
        if n_fill <= 0:
            raise RobenchError(f"anchor repair needed {len(anchors)} anchors, no room left in batch {self.batch}")
        fill = self.rng.choice(pool, size=n_fill, replace=False)
        pos = np.concatenate([np.array(anchors), fill])
        is_anchor = np.zeros(len(pos), dtype=bool)
        is_anchor[: len(anchors)] = True
        rows = order[pos]
        return AnchorBatch(
            indices=rows,
            is_anchor=is_anchor,
            band=(float(by[0]), float(by[-1])),
            anchor_ids=[self.ids[int(r)] for r in rows[: len(anchors)]],
        )


def nearest_anchors(y: torch.Tensor, is_anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every sample, the index of the nearest anchor below (``y_a ≤ y_i``) and above
    (``y_a ≥ y_i``) in MOS. Anchors bracket themselves."""
    ay = y[is_anchor]
    aidx = torch.nonzero(is_anchor).flatten()
    below = torch.where(ay.view(1, -1) <= y.view(-1, 1), ay.view(1, -1), torch.full_like(ay.view(1, -1), -float("inf")))
    above = torch.where(ay.view(1, -1) >= y.view(-1, 1), ay.view(1, -1), torch.full_like(ay.view(1, -1), float("inf")))
    if torch.isinf(below.max(dim=1).values).any() or torch.isinf(above.min(dim=1).values).any():
        raise RobenchError("a non-anchor lies outside the anchors' MOS range (both band ends must be anchors)")
    return aidx[below.argmax(dim=1)], aidx[above.argmin(dim=1)]


#: what the hinge's violations are divided by (module docstring) **[choice]**
HINGE_NORMS = ("pred-range", "mos-range")
#: the prediction-range normaliser's floor, as a fraction of the batch MOS range (a collapsed
#: anchor set must not divide by ~0)
PRED_RANGE_FLOOR = 0.01


def anchored_terms(
    pred: torch.Tensor, y: torch.Tensor, is_anchor: torch.Tensor, top_k: int = 4, hinge_norm: str = "pred-range"
):
    """The per-sample hinge ``ℓ_i`` (non-anchors), the top-k surrogate of its max, and every
    Theorem-1 quantity of this batch (floats, from this one prediction vector). The hinge is
    divided by the anchors' prediction range (``pred-range``, robench) or the batch MOS range
    (``mos-range``, the paper); the logged ``max_hinge`` is always over ``R``, Theorem 1's ``η``."""
    if hinge_norm not in HINGE_NORMS:
        raise RobenchError(f"AAT hinge_norm must be one of {', '.join(HINGE_NORMS)}, got {hinge_norm!r}")
    lo, hi = nearest_anchors(y, is_anchor)
    R = (y.max() - y.min()).clamp_min(1e-8)
    v_minus = (pred[lo] - pred).clamp_min(0.0)  # i predicted below its lower anchor
    v_plus = (pred - pred[hi]).clamp_min(0.0)  # i predicted above its upper anchor
    v = torch.maximum(v_minus, v_plus)
    if hinge_norm == "mos-range":
        norm = R
        ell = v / norm
    else:
        # P without its gradient: a normaliser with one would pay the model to push the band-end
        # anchors apart (measured: the clean SD inflated 1.6×, R² < 0)
        pa = pred[is_anchor].detach()
        norm = (pa.max() - pa.min()).clamp_min(PRED_RANGE_FLOOR * float(R))
        ell = v / (v + norm)  # ≈ v/P for small violations, bounded by 1: no violation outweighs the base loss
    non = ~is_anchor
    ell_non = ell[non]
    k = min(int(top_k), int(ell_non.numel()))
    topk = ell_non.topk(k).values.mean() if k > 0 else pred.sum() * 0.0
    with torch.no_grad():
        p, yy = pred.detach(), y.detach()
        delta = float((p[is_anchor] - yy[is_anchor]).abs().max())
        cov = float(torch.maximum(yy - yy[lo], yy[hi] - yy)[non].max()) if non.any() else 0.0
        eta = float((v[non].detach() / R).max()) if non.any() else 0.0  # Theorem 1's η: over R
        Rf = float(R)
        bound = delta + cov + eta * Rf
        # a bound ≥ the batch MOS range constrains nothing a constant prediction would not meet:
        # such a batch is "vacuous" and is no evidence for Theorem 1
        stats = {
            "anchor_err": delta,
            "coverage": cov,
            "max_hinge": eta,
            "mos_range": Rf,
            "hinge_norm_value": float(norm.detach()),
            "bound": bound,
            "bound_rel": bound / Rf,
            "vacuous": bool(bound >= Rf),
            "emp_max_err": float((p - yy).abs().max()),
            "n_anchors": int(is_anchor.sum()),
        }
    return ell, topk, stats
