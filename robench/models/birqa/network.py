"""BiRQA's network (paper §3, docs/method.md §6; no public code exists, so the layer sizes are
robench's, chosen for ≈ 5.5 M parameters and speed).

Pyramid: four levels at 1/2, 1/4, 1/8, 1/16 of the input (each level half the previous). Level 0
reads the full-resolution feature maps through stride-2 stems; deeper levels read the feature
maps average-pooled to their size. Per level:

* per-feature preprocessing convs (one stem per analytic feature) →
* **AdaptiveFusion**: concat → squeeze-and-excitation channel attention → 1×1 fuse → residual
  conv blocks;
* **CSRAM** (fine → coarse): message from the finer level, channel attention, spatial mask from
  channel pooling, three 1×1 projections → non-negative strength (softplus), bounded confidence
  (sigmoid) and a feature map; ``F ← F + strength ⊙ confidence ⊙ feature``;
* **SCGB** (coarse → fine): the upsampled coarser level gates and shifts the finer one,
  ``F ← F ⊙ σ(G(ctx)) + R(ctx)``;
* **Reliability-Aware Head**: per level 1×1 conv to a shared width, GeM pooling (learnable p),
  two tiny MLPs → contribution ``c_l`` and reliability logit ``r_l``; score ``Σ softmax(r)_l c_l``.

Switches ``csram``, ``scgb``, ``rah`` reproduce the paper's ablation (without RAH: concat of
globally pooled levels → MLP); ``width`` scales every channel count (tiny test models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.models import kernels
from robench.models.birqa.features import GROUPS

BASE_WIDTHS = (32, 64, 160, 320)
DEPTHS = (0, 1, 2, 2)  # no extra block at the 1/2-resolution level: it dominates the cost
HEAD_WIDTH = 64  # RAH shared width; GeM at 1/2 resolution costs O(width)
MOS_INIT = 3.0  # initial output bias: the middle of a 1–5 MOS scale


def _w(c: float) -> int:
    return max(4, int(round(c / 4)) * 4)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(c, max(4, c // reduction))
        self.fc2 = nn.Linear(max(4, c // reduction), c)

    def forward(self, x):
        a = torch.sigmoid(self.fc2(F.gelu(self.fc1(x.mean(dim=(2, 3))))))
        return x * a[:, :, None, None]


class Level(nn.Module):
    """Per-feature stems + AdaptiveFusion + residual blocks for one pyramid level."""

    def __init__(self, width: int, depth: int, stride: int):
        super().__init__()
        per = width // len(GROUPS)
        self.stems = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Conv2d(c, per, 3, stride=stride, padding=1), nn.GELU(), nn.Conv2d(per, per, 3, padding=1)
                )
                for name, c in GROUPS.items()
            }
        )
        self.se = SqueezeExcite(per * len(GROUPS))
        self.fuse = nn.Conv2d(per * len(GROUPS), width, 1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(depth)])

    def forward(self, feats: "dict[str, torch.Tensor] | torch.Tensor") -> torch.Tensor:
        if isinstance(feats, dict):
            x = torch.cat([self.stems[k](feats[k]) for k in GROUPS], dim=1)
        else:  # all groups stacked: the stems as one block-diagonal conv and one grouped conv
            x = self._stems_fused(feats)
        return self.blocks(F.gelu(self.fuse(self.se(x))))

    def _stems_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The per-feature stems in two calls instead of eight (the same sums: the first conv's
        weight is zero outside each stem's own input channels; the second is a grouped conv).
        Small convolutions are overhead-bound on CPU, and the concatenation disappears."""
        first = [self.stems[k][0] for k in GROUPS]
        per, k = first[0].out_channels, first[0].kernel_size
        w = x.new_zeros(per * len(first), x.shape[1], *k)
        c0 = 0
        for i, (conv, c) in enumerate(zip(first, GROUPS.values())):
            w[i * per : (i + 1) * per, c0 : c0 + c] = conv.weight
            c0 += c
        b = torch.cat([conv.bias for conv in first])
        y = F.gelu(F.conv2d(x, w, b, stride=first[0].stride, padding=first[0].padding))
        second = [self.stems[k][2] for k in GROUPS]
        return F.conv2d(
            y,
            torch.cat([c.weight for c in second]),
            torch.cat([c.bias for c in second]),
            padding=second[0].padding,
            groups=len(second),
        )


class CSRAM(nn.Module):
    """Cross-Scale Residual Attention Module: lift fine-level evidence to the next coarser level."""

    def __init__(self, c_fine: int, c_coarse: int):
        super().__init__()
        self.message = nn.Conv2d(c_fine, c_coarse, 1)
        self.channel = SqueezeExcite(c_coarse)
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)
        self.strength = nn.Conv2d(c_coarse, 1, 1)
        self.confidence = nn.Conv2d(c_coarse, 1, 1)
        self.feature = nn.Conv2d(c_coarse, c_coarse, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        m = self.message(F.adaptive_avg_pool2d(fine, coarse.shape[-2:]))
        m = self.channel(m)
        pooled = torch.cat([m.mean(dim=1, keepdim=True), m.amax(dim=1, keepdim=True)], dim=1)
        m = m * torch.sigmoid(self.spatial(pooled))
        s = F.softplus(self.strength(m))
        c = torch.sigmoid(self.confidence(m))
        return coarse + s * c * self.feature(m)


class SCGB(nn.Module):
    """Spatial Cross-Gating Block: coarse context gates the finer level."""

    def __init__(self, c_coarse: int, c_fine: int):
        super().__init__()
        self.gate = nn.Conv2d(c_coarse, c_fine, 1)
        self.shift = nn.Conv2d(c_coarse, c_fine, 1)
        nn.init.constant_(self.gate.bias, 2.0)  # start close to the identity: σ(2) ≈ 0.88
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        size = fine.shape[-2:]
        if not kernels.fast():
            ctx = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
            return fine * torch.sigmoid(self.gate(ctx)) + self.shift(ctx)
        # the same map: a 1×1 conv commutes with bilinear upsampling (its weights sum to 1, so the
        # bias passes through), and at the coarse level it costs 1/4 (one conv for gate and shift)
        w = torch.cat([self.gate.weight, self.shift.weight])
        b = torch.cat([self.gate.bias, self.shift.bias])
        gs = kernels.upsample_bilinear(F.conv2d(coarse, w, b), size)
        g, s = gs.chunk(2, dim=1)
        return torch.addcmul(s, fine, torch.sigmoid(g))


class GeM(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        # x^p as exp(p·log x): the same value, but autograd's pow-with-tensor-exponent backward
        # was a quarter of a training step on CPU
        return torch.exp(p * torch.log(x.clamp_min(self.eps))).mean(dim=(2, 3)).pow(1.0 / p)

    def of_softplus(self, z: torch.Tensor) -> torch.Tensor:
        """GeM of ``softplus(z)``; one fused function when ``p`` is fixed (attacks, evaluation)."""
        if kernels.fast() and not self.p.requires_grad:
            return kernels.softplus_gem(z, float(self.p.clamp(1.0, 8.0)), self.eps)
        return self(F.softplus(z))


class ReliabilityHead(nn.Module):
    def __init__(self, widths: tuple[int, ...], d: int):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(w, d, 1) for w in widths])
        self.gem = nn.ModuleList([GeM() for _ in widths])
        self.contrib = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, d // 4), nn.GELU(), nn.Linear(d // 4, 1)) for _ in widths]
        )
        self.reliab = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, d // 4), nn.GELU(), nn.Linear(d // 4, 1)) for _ in widths]
        )
        for m in self.contrib:
            nn.init.constant_(m[-1].bias, MOS_INIT)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, r = [], []
        for i, f in enumerate(levels):
            # softplus keeps GeM's input positive without a hard clamp on the gradient path
            v = self.gem[i].of_softplus(kernels.conv1x1(f, self.proj[i].weight, self.proj[i].bias))
            c.append(self.contrib[i](v))
            r.append(self.reliab[i](v))
        c, r = torch.cat(c, dim=1), torch.cat(r, dim=1)
        w = torch.softmax(r, dim=1)
        return (w * c).sum(dim=1), c, w


class ConcatHead(nn.Module):
    """The ablation baseline without RAH: concat of globally pooled levels → MLP."""

    def __init__(self, widths: tuple[int, ...], d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(sum(widths), d), nn.GELU(), nn.Linear(d, 1))
        nn.init.constant_(self.mlp[-1].bias, MOS_INIT)

    def forward(self, levels):
        return self.mlp(torch.cat([f.mean(dim=(2, 3)) for f in levels], dim=1)).flatten(), None, None


class BiRQANet(nn.Module):
    def __init__(self, width: float = 1.0, csram: bool = True, scgb: bool = True, rah: bool = True):
        super().__init__()
        self.widths = tuple(_w(c * width) for c in BASE_WIDTHS)
        self.use_csram, self.use_scgb, self.use_rah = csram, scgb, rah
        self.levels = nn.ModuleList(
            [Level(w, d, stride=2 if i == 0 else 1) for i, (w, d) in enumerate(zip(self.widths, DEPTHS))]
        )
        self.csram = nn.ModuleList([CSRAM(self.widths[i], self.widths[i + 1]) for i in range(3)]) if csram else None
        self.scgb = nn.ModuleList([SCGB(self.widths[i + 1], self.widths[i]) for i in range(3)]) if scgb else None
        d = _w(HEAD_WIDTH * width)
        self.head = ReliabilityHead(self.widths, d) if rah else ConcatHead(self.widths, d)

    def forward(self, features: torch.Tensor, return_parts: bool = False):
        fused = kernels.fast()
        groups = None if fused else dict(zip(GROUPS, torch.split(features, list(GROUPS.values()), dim=1)))
        levels = []
        pooled, k_pooled = features, 1
        for i, level in enumerate(self.levels):
            if i == 0:
                inp = features if fused else groups  # full resolution; the stems stride by 2
            else:
                k = 2 ** (i + 1)
                if not fused:
                    inp = {n: F.avg_pool2d(g, k, ceil_mode=True) for n, g in groups.items()}
                else:
                    # each level's mean from the previous level's when the windows tile exactly
                    # (the mean of equal-sized block means is the block mean)
                    step = k // k_pooled
                    exact = all(d % k == 0 for d in features.shape[-2:])
                    src, by = (pooled, step) if exact else (features, k)
                    pooled, k_pooled = F.avg_pool2d(src, by, ceil_mode=True), k
                    inp = pooled
            levels.append(level(inp))
        if self.csram is not None:  # bottom-up: fine → coarse
            for i in range(3):
                levels[i + 1] = self.csram[i](levels[i], levels[i + 1])
        if self.scgb is not None:  # top-down: coarse → fine
            for i in reversed(range(3)):
                levels[i] = self.scgb[i](levels[i + 1], levels[i])
        score, contrib, weights = self.head(levels)
        if return_parts:
            return score, {"contribution": contrib, "reliability": weights}
        return score
