"""Anchored Adversarial Training: the band/anchor mini-batch sampler, the nearest-anchor hinge
and the Theorem-1 quantities (method-notes §2, paper §3.3-4).

Theorem 1: with anchor error ``δ = max_a |ŷ_a − y_a|``, coverage ``Δ`` (every non-anchor lies
within ``Δ`` of its nearest anchors below and above in MOS), ``η = max_i ℓ_i`` (the largest
normalised one-sided hinge) and the batch MOS range ``R``, every sample satisfies
``|ŷ_i − y_i| ≤ δ + Δ + η·R``. Every quantity is computed here from the *same* prediction vector,
so the logged bound must hold on every batch; a batch where it does not is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robench.errors import RobenchError


@dataclass
class AnchorBatch:
    indices: np.ndarray  # dataset rows, length B
    is_anchor: np.ndarray  # bool, length B
    band: tuple[float, float]


class AnchorSampler:
    """Paper §4.1: draw a contiguous MOS band ``[lo, lo + W]``; the samples closest to both band
    ends are anchors, the other anchors sit uniformly along the MOS axis inside the band, the rest
    of the batch is drawn uniformly from the band. ``W = min(Δ·(K−1), MOS range)``.

    Anchors chosen as the nearest sample to uniform targets can be a little more than ``Δ`` apart
    when MOS values are discrete (the built-in set has 125 distinct cell means): a repair pass
    then adds the farthest sample within ``Δ`` of the previous anchor as an extra anchor, so
    consecutive anchors are at most ``Δ`` apart whenever the data allows it."""

    def __init__(self, mos, batch: int = 32, anchors: int = 8, spacing: float = 0.5, seed: int = 0):
        self.mos = np.asarray(mos, dtype=float)
        if anchors < 2 or batch <= anchors:
            raise RobenchError(f"AAT needs ≥ 2 anchors and a batch larger than the anchors (got {anchors}, {batch})")
        self.batch, self.anchors, self.spacing = int(batch), int(anchors), float(spacing)
        self.order = np.argsort(self.mos, kind="stable")
        self.sorted = self.mos[self.order]
        span = float(self.sorted[-1] - self.sorted[0])
        self.width = min(self.spacing * (self.anchors - 1), span)
        self.rng = np.random.default_rng(seed)

    def sample(self) -> AnchorBatch:
        ys, order = self.sorted, self.order
        lo = float(self.rng.uniform(ys[0], ys[-1] - self.width)) if ys[-1] - ys[0] > self.width else float(ys[0])
        hi = lo + self.width
        a, b = np.searchsorted(ys, lo, "left"), np.searchsorted(ys, hi, "right")
        if b - a < self.batch:  # a sparse band: widen symmetrically until the batch fits
            need = self.batch - (b - a)
            a, b = max(0, a - need // 2 - 1), min(len(ys), b + need // 2 + 1)
            a, b = (0, self.batch) if b - a < self.batch and len(ys) >= self.batch else (a, b)
            if b - a < self.batch:
                raise RobenchError(f"dataset has {len(ys)} samples, fewer than the AAT batch {self.batch}")
        band = np.arange(a, b)  # positions in the sorted order
        by = ys[band]
        chosen = {int(band[0]), int(band[-1])}  # both band ends are always anchors
        for t in np.linspace(by[0], by[-1], self.anchors)[1:-1]:
            free = [p for p in band if int(p) not in chosen]
            if not free:
                break
            fy = ys[free]
            chosen.add(int(free[int(np.argmin(np.abs(fy - t)))]))
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
        return AnchorBatch(indices=order[pos], is_anchor=is_anchor, band=(float(by[0]), float(by[-1])))


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


def anchored_terms(pred: torch.Tensor, y: torch.Tensor, is_anchor: torch.Tensor, top_k: int = 4):
    """The per-sample hinge ``ℓ_i`` (non-anchors), the top-k surrogate of its max, and every
    Theorem-1 quantity of this batch (floats, from this one prediction vector)."""
    lo, hi = nearest_anchors(y, is_anchor)
    R = (y.max() - y.min()).clamp_min(1e-8)
    v_minus = (pred[lo] - pred).clamp_min(0.0)  # i predicted below its lower anchor
    v_plus = (pred - pred[hi]).clamp_min(0.0)  # i predicted above its upper anchor
    ell = torch.maximum(v_minus, v_plus) / R
    non = ~is_anchor
    ell_non = ell[non]
    k = min(int(top_k), int(ell_non.numel()))
    topk = ell_non.topk(k).values.mean() if k > 0 else pred.sum() * 0.0
    with torch.no_grad():
        p, yy = pred.detach(), y.detach()
        delta = float((p[is_anchor] - yy[is_anchor]).abs().max())
        cov = float(torch.maximum(yy - yy[lo], yy[hi] - yy)[non].max()) if non.any() else 0.0
        eta = float(ell_non.detach().max()) if non.any() else 0.0
        Rf = float(R)
        stats = {"anchor_err": delta, "coverage": cov, "max_hinge": eta, "mos_range": Rf,
                 "bound": delta + cov + eta * Rf, "emp_max_err": float((p - yy).abs().max()),
                 "n_anchors": int(is_anchor.sum())}
    return ell, topk, stats
