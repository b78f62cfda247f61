from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from robench.models.classic import MSSSIM, PSNR, SSIM, luminance


def _img(seed, size=64):
    from skimage import data

    img = data.astronaut()[100 : 100 + size, 200 : 200 + size].astype(np.float64) / 255
    rng = np.random.default_rng(seed)
    noisy = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    return t(noisy), t(img)


def test_psnr_known_value():
    ref = torch.full((1, 3, 8, 8), 0.5)
    dist = ref + 0.1  # MSE 0.01 -> 20 dB
    assert PSNR()(dist, ref).item() == pytest.approx(20.0, abs=1e-4)
    assert PSNR()(ref, ref).item() == pytest.approx(100.0)  # capped, not inf


def test_ssim_matches_skimage_on_luminance():
    """Cross-check against scikit-image's Gaussian-weighted SSIM (σ 1.5, population covariance)."""
    dist, ref = _img(1)
    ours = SSIM()(dist, ref).item()
    y = lambda t: luminance(t)[0, 0].double().numpy()  # noqa: E731
    # skimage averages the map after cropping (win-1)/2 border pixels; ours is 'valid' filtering:
    # the same pixels.
    theirs = structural_similarity(
        y(dist), y(ref), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, win_size=11
    )
    assert ours == pytest.approx(theirs, abs=2e-3)
    assert SSIM()(ref, ref).item() == pytest.approx(1.0, abs=1e-5)


def test_ms_ssim_properties():
    dist, ref = _img(2, size=128)
    m = MSSSIM()
    assert m(ref, ref).item() == pytest.approx(1.0, abs=1e-4)
    worse = torch.clamp(dist + 0.1 * torch.randn_like(dist), 0, 1)
    assert m(worse, ref).item() < m(dist, ref).item() < 1.0
