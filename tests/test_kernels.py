"""The fast kernels equal their textbook forms (scores and gradients within 1e-5 relative), on
the sizes the profiles use and on odd sizes where a fast path must fall back."""

import pytest
import torch
import torch.nn.functional as F

from robench.attacks.base import ModeGuard
from robench.models import kernels, load_model
from robench.models.classic import gaussian_filter


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 1, 23, 17)])
@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_gaussian_filter_matches_depthwise_conv(shape, padding):
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    gy = torch.randn_like(gaussian_filter(x, padding=padding))
    out = {}
    for ref in (True, False):
        with kernels.reference_kernels(ref):
            y = gaussian_filter(x, padding=padding)
            (g,) = torch.autograd.grad(y, x, gy)
        out[ref] = (y, g)
    assert _rel(out[False][0], out[True][0]) < 1e-12
    assert _rel(out[False][1], out[True][1]) < 1e-12


def test_separable_adjoint_by_gradcheck():
    x = torch.rand(1, 2, 14, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kernels.separable_valid(t, (0.2, 0.5, 0.3)), (x,))


@pytest.mark.parametrize("src,size", [((4, 4), (8, 8)), ((5, 7), (10, 13)), ((3, 3), (7, 5))])
def test_upsample_matches_interpolate(src, size):
    x = torch.randn(2, 3, *src, dtype=torch.float64)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    assert _rel(kernels.upsample_bilinear(x, size), ref) < 1e-12


def test_gem_gradient():
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kernels.softplus_gem(t, 3.2, 1e-6), (z,))
    t = F.softplus(z).clamp_min(1e-6)
    assert _rel(kernels.softplus_gem(z, 3.2, 1e-6), t.pow(3.2).mean(dim=(2, 3)).pow(1 / 3.2)) < 1e-12


def test_conv1x1_matches_conv():
    x, w, b = torch.randn(2, 5, 6, 7), torch.randn(4, 5, 1, 1), torch.randn(4)
    assert _rel(kernels.conv1x1(x, w, b), F.conv2d(x, w, b)) < 1e-5


@pytest.mark.parametrize("name", ["birqa", "ssim", "ms-ssim"])
@pytest.mark.parametrize("size", [(64, 64), (48, 40)])  # 40 is not a multiple of 16: the pools fall back
def test_target_step_equal_on_both_paths(name, size):
    """BiRQA: scores and ∂q/∂x of both paths within 1e-5 relative. SSIM-type scores subtract
    nearly equal window sums, so their float32 gradients carry ~1e-5 rounding on either path:
    there each path is held to the float64 result, the fast one no further than the textbook."""
    torch.manual_seed(0)
    target = load_model(name, weights="none")
    h, w = size
    ref = torch.rand(3, 3, h, w)
    dist = (ref + 0.05 * torch.randn_like(ref)).clamp(0, 1)
    out = {}
    with ModeGuard(target):
        for mode in ("reference", "fast", "float64"):
            t = target.double() if mode == "float64" else target.float()
            r, d = (ref.double(), dist.double()) if mode == "float64" else (ref, dist)
            with kernels.reference_kernels(mode == "reference"):
                x = d.clone().requires_grad_(True)
                q = t.bind(r, cache=True)(x)
                (g,) = torch.autograd.grad(q.sum(), x)
            out[mode] = (q.detach().double(), g.double())
        target.float()
    if name == "birqa":
        assert _rel(out["fast"][0], out["reference"][0]) < 1e-5
        assert _rel(out["fast"][1], out["reference"][1]) < 1e-5
    for i in (0, 1):
        err_ref, err_fast = _rel(out["reference"][i], out["float64"][i]), _rel(out["fast"][i], out["float64"][i])
        assert err_fast <= 1.5 * err_ref + 1e-7, (i, err_fast, err_ref)


def test_birqa_weight_gradients_equal_on_both_paths():
    """Training goes through the fused stems and SCGB too: the parameters' gradients agree."""
    torch.manual_seed(0)
    target = load_model("birqa", weights="none", width=0.25)
    ref = torch.rand(2, 3, 32, 32)
    dist = (ref + 0.05 * torch.randn_like(ref)).clamp(0, 1)
    grads = {}
    for mode in (True, False):
        target.zero_grad()
        with kernels.reference_kernels(mode):
            target(dist, ref).sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in target.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 10
    scale = max(float(g.abs().max()) for g in grads[True].values())
    for n in grads[True]:
        assert float((grads[False][n] - grads[True][n]).abs().max()) <= 1e-4 * scale, n
