"""Classical differentiable FR metrics: PSNR, SSIM, MS-SSIM.

Conventions (docs/method.md §5): SSIM on luminance ``Y = 0.299R + 0.587G + 0.114B`` with an 11×11
Gaussian window (σ = 1.5), ``C1 = (0.01·L)²``, ``C2 = (0.03·L)²``, L = 1, 'valid' filtering as
pyiqa does. ``ssim_rgb`` is the RGB variant (per channel, channels averaged, valid filtering:
the ``pytorch_msssim`` convention) that the AT- label rule uses. MS-SSIM (Wang et al. 2003)
uses the five published scale weights; it filters with reflect padding so that it also works on
the 128-px images of the quick profile (valid filtering would need ≥ 176 px).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from robench.core.registry import MODELS
from robench.models import kernels
from robench.core.target import Target, TargetCard

C1, C2 = 0.01**2, 0.03**2
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def luminance(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


@functools.lru_cache(maxsize=16)
def _window_values(size: int, sigma: float) -> tuple[float, ...]:
    return tuple(gaussian_window(size, sigma, dtype=torch.float64).tolist())


def gaussian_filter(x: torch.Tensor, size: int = 11, sigma: float = 1.5, padding: str = "valid") -> torch.Tensor:
    """Separable Gaussian filter of each channel; ``padding`` is 'valid' or 'reflect'."""
    if padding == "reflect":
        p = size // 2
        x = F.pad(x, (p, p, p, p), mode="reflect")
    # under --amp bf16 the window stays a convolution, which autocast runs in bf16 (the keyed
    # bf16 measurement means autocast's precision, not this kernel's float32 sums)
    if kernels.fast() and not kernels.autocasting(x):
        return kernels.separable_valid(x, _window_values(size, sigma))
    c = x.shape[1]
    g = gaussian_window(size, sigma, x.device, x.dtype)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)


def ssim_components(x: torch.Tensor, y: torch.Tensor, padding: str = "valid") -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance term and contrast-structure term maps of SSIM for single-channel inputs."""
    mu_x, mu_y = gaussian_filter(x, padding=padding), gaussian_filter(y, padding=padding)
    sxx = gaussian_filter(x * x, padding=padding) - mu_x**2
    syy = gaussian_filter(y * y, padding=padding) - mu_y**2
    sxy = gaussian_filter(x * y, padding=padding) - mu_x * mu_y
    lum = (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1)
    cs = (2 * sxy + C2) / (sxx + syy + C2)
    return lum, cs


def ssim_map(x: torch.Tensor, y: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    lum, cs = ssim_components(x, y, padding)
    return lum * cs


def ssim_rgb(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image on RGB, the ``pytorch_msssim`` convention the AT- authors' training code
    uses (docs/method.md §2): each channel separately with an 11×11 Gaussian window (σ = 1.5),
    data range 1, ``C1 = 0.01²``, ``C2 = 0.03²``, no padding ('valid' filtering); the mean over
    the valid map of each channel, then the mean over the channels. Returns ``N`` values."""
    lum, cs = ssim_components(x, y, padding="valid")  # the filter runs per channel (groups = C)
    return (lum * cs).flatten(2).mean(dim=2).mean(dim=1)


@MODELS.register("psnr", summary="PSNR in dB on RGB in [0,1] (higher is better)", lower_better=False)
class PSNR(Target):
    requires_weights = False

    def __init__(self, max_db: float = 100.0):
        super().__init__()
        self.max_db = max_db
        self.card = TargetCard(
            name="psnr",
            lower_better=False,
            score_range=(0.0, max_db),
            summary="peak signal-to-noise ratio on RGB",
            min_size=1,
            paper="—",
        )

    def score(self, dist, ref):
        mse = ((dist - ref) ** 2).flatten(1).mean(dim=1)
        # identical images: MSE 0 would give +inf; cap at max_db
        return 10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-self.max_db / 10)))


@MODELS.register("ssim", summary="SSIM on luminance, Gaussian 11/1.5 (higher is better)", lower_better=False)
class SSIM(Target):
    requires_weights = False

    def __init__(self):
        super().__init__()
        self.card = TargetCard(
            name="ssim",
            lower_better=False,
            score_range=(-1.0, 1.0),
            min_size=11,
            summary="structural similarity (Wang et al. 2004) on Y",
            paper="Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004",
        )

    def score(self, dist, ref):
        return ssim_map(luminance(dist), luminance(ref)).flatten(1).mean(dim=1)


@MODELS.register("ms-ssim", summary="multi-scale SSIM on luminance, 5 scales (higher is better)", lower_better=False)
class MSSSIM(Target):
    requires_weights = False

    def __init__(self, weights: tuple[float, ...] = MS_WEIGHTS):
        super().__init__()
        self.weights = weights
        self.card = TargetCard(
            name="ms-ssim",
            lower_better=False,
            score_range=(0.0, 1.0),
            min_size=16,
            summary="multi-scale SSIM (Wang et al. 2003) on Y",
            paper="Wang, Simoncelli, Bovik, Asilomar 2003",
        )

    def score(self, dist, ref):
        x, y = luminance(dist), luminance(ref)
        out = torch.ones(dist.shape[0], device=dist.device, dtype=dist.dtype)
        n = len(self.weights)
        for i, w in enumerate(self.weights):
            lum, cs = ssim_components(x, y, padding="reflect")
            term = (lum * cs if i == n - 1 else cs).flatten(1).mean(dim=1)
            # a negative mean cs raised to a fractional power is NaN, and 0**w has an infinite
            # gradient: floor at a small positive value
            out = out * term.clamp_min(1e-6) ** w
            if i < n - 1:
                if min(x.shape[-2:]) < 12:  # too small for another scale: stop with what we have
                    break
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        return out
