"""BiRQA's four analytic feature maps (docs/method.md §6), at full resolution, all differentiable
w.r.t. the distorted image.

1. SSIM map on luminance (Gaussian 11/1.5, C1, C2 as SSIM) — 1 channel.
2. Local information content, IW-SSIM style: with ``I = log(1 + σ²/C)`` of each image, the channels
   ``I_r + I_d`` (= ``log((1+σ_r²/C)(1+σ_d²/C))``, the notes' map) and ``I_d − I_r`` (which side
   gained or lost information) — 2 channels.
3. YCbCr colour difference, signed ``ycc(dist) − ycc(ref)`` (BT.601, [0,1]) — 3 channels.
4. Soft LBP: for each of the 8 neighbours, ``σ((n − c)/τ)`` replaces the hard comparison bit (a
   hard threshold has zero gradient almost everywhere and would fake robustness); the channels
   are ``bits(dist) − bits(ref)`` — 8 channels.

Everything that depends on the reference alone (its luminance statistics, YCbCr, LBP bits) is in
:meth:`AnalyticFeatures.reference_stats`, so an attack can compute it once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.models.classic import C1, C2, gaussian_filter, luminance

GROUPS = {"ssim": 1, "info": 2, "color": 3, "lbp": 8}  # channels per feature, in order
# Fixed standardisation of the 14 channels (≈ mean/std measured on 256 random mini training
# pairs, rounded): the raw scales differ ~70× (information ≈ 2.4, chroma differences ≈ 0.03),
# which slowed training from scratch badly. A fixed affine map keeps every gradient intact.
FEATURE_SHIFT = (0.8, 2.4, 0.0, 0.0, 0.0, 0.0) + (0.0,) * 8
FEATURE_SCALE = (0.25, 2.4, 0.64, 0.08, 0.03, 0.05) + (0.2,) * 8
LBP_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """BT.601 full-range YCbCr in [0,1] (chroma centred at 0.5)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 + (b - y) * 0.564
    cr = 0.5 + (r - y) * 0.713
    return torch.cat([y, cb, cr], dim=1)


def soft_lbp_bits(y: torch.Tensor, tau: float) -> torch.Tensor:
    p = F.pad(y, (1, 1, 1, 1), mode="replicate")
    h, w = y.shape[-2:]
    bits = [torch.sigmoid((p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] - y) / tau) for dy, dx in LBP_OFFSETS]
    return torch.cat(bits, dim=1)


class AnalyticFeatures(nn.Module):
    def __init__(self, lbp_tau: float = 0.02, info_c: float = C2):
        super().__init__()
        self.lbp_tau = lbp_tau
        self.info_c = info_c
        self.register_buffer("shift", torch.tensor(FEATURE_SHIFT).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(FEATURE_SCALE).view(1, -1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        return sum(GROUPS.values())

    def _stats(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = gaussian_filter(y, padding="reflect")
        var = gaussian_filter(y * y, padding="reflect") - mu * mu
        return mu, var.clamp_min(0.0)  # rounding can make a flat region's variance slightly negative

    def reference_stats(self, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        y = luminance(ref)
        mu, var = self._stats(y)
        return {
            "y": y,
            "mu": mu,
            "var": var,
            "info": torch.log1p(var / self.info_c),
            "ycc": rgb_to_ycbcr(ref),
            "lbp": soft_lbp_bits(y, self.lbp_tau),
        }

    def forward(self, dist: torch.Tensor, ref_stats: dict[str, torch.Tensor]) -> torch.Tensor:
        y = luminance(dist)
        mu, var = self._stats(y)
        r = ref_stats
        cov = gaussian_filter(y * r["y"], padding="reflect") - mu * r["mu"]
        ssim = ((2 * mu * r["mu"] + C1) * (2 * cov + C2)) / ((mu**2 + r["mu"] ** 2 + C1) * (var + r["var"] + C2))
        info_d = torch.log1p(var / self.info_c)
        info = torch.cat([info_d + r["info"], info_d - r["info"]], dim=1)
        color = rgb_to_ycbcr(dist) - r["ycc"]
        lbp = soft_lbp_bits(y, self.lbp_tau) - r["lbp"]
        return (torch.cat([ssim, info, color, lbp], dim=1) - self.shift) / self.scale
