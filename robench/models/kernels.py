"""Fast paths for the targets' hot operations, each equal to its textbook form up to the order of
float sums, and a switch back to the textbook form so benchmarks and tests run both side by side.

Why (profile of a BiRQA attack step on CPU, README "Speed"): PyTorch's depthwise convolution,
used for the separable Gaussian window of SSIM-style statistics, costs ~30× a plain shifted sum
on CPU and its backward ~12× its forward; the fast path computes the same correlation as 11
shifted multiply-adds with a hand-written adjoint (the same sums on the zero-padded gradient).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

_state = threading.local()


def fast() -> bool:
    """True unless inside :func:`reference_kernels` (on this thread)."""
    return not getattr(_state, "reference", False)


@contextlib.contextmanager
def reference_kernels(on: bool = True):
    """Run the textbook implementations inside the block (benchmarks, equality tests)."""
    was = getattr(_state, "reference", False)
    _state.reference = on
    try:
        yield
    finally:
        _state.reference = was


def autocasting(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (False for device types autocast does not know)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:
        return False


def _corr(x: torch.Tensor, w: tuple[float, ...], dim: int) -> torch.Tensor:
    """'valid' correlation of ``x`` with the 1-D window ``w`` along ``dim`` (−1 or −2)."""
    k = len(w)
    n = x.shape[dim] - k + 1
    out = x.narrow(dim, 0, n) * w[0]
    for i in range(1, k):
        out.add_(x.narrow(dim, i, n), alpha=w[i])
    return out


class _Separable(torch.autograd.Function):
    """``w ⊗ w`` 'valid' correlation over the last two dims; the adjoint of a valid correlation is
    the correlation with the flipped window over the gradient zero-padded by ``k − 1``."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w
        return _corr(_corr(x, w, -1), w, -2)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.w[::-1]
        k = len(w)
        grad = torch.nn.functional.pad(grad, (k - 1, k - 1, k - 1, k - 1))
        return _corr(_corr(grad, w, -2), w, -1), None


def separable_valid(x: torch.Tensor, window: tuple[float, ...]) -> torch.Tensor:
    """``x`` (N×C×H×W) correlated with ``window`` along W then H, 'valid' (no padding)."""
    return _Separable.apply(x, tuple(float(v) for v in window))


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Bilinear (``align_corners=False``) interpolation from ``n_in`` to ``n_out`` samples as a
    ``n_out × n_in`` matrix: source coordinate ``(o + ½)·n_in/n_out − ½``, clamped at 0 as
    PyTorch does, each row two weights summing to 1."""
    o = torch.arange(n_out, dtype=torch.float64)
    src = ((o + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[o.long(), i0] += 1.0 - w1
    m[o.long(), i1] += w1
    return m.to(device=device, dtype=dtype)


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; on the fast path as two
    small matrix products (PyTorch's CPU upsampling copies its input and output between memory
    layouts, and its backward is slower still)."""
    h, w = int(size[0]), int(size[1])
    if not fast() or x.dtype not in (torch.float32, torch.float64):
        return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    mh = _upsample_matrix(x.shape[-2], h, x.device, x.dtype)
    mwt = _upsample_matrix(x.shape[-1], w, x.device, x.dtype).T
    return torch.matmul(mh, torch.matmul(x, mwt))


class _SoftplusGeM(torch.autograd.Function):
    """``mean(max(softplus(z), eps)^p)^(1/p)`` over H×W for a fixed exponent ``p``, in place where
    the textbook chain allocates a tensor per step (each a page-faulting allocation at the
    attack's batch sizes); backward ``∂v/∂z = v^(1−p)·t^(p−1)·σ(z)/(H·W)`` where ``t > eps``."""

    @staticmethod
    def forward(ctx, z, p, eps):
        t = torch.nn.functional.softplus(z)
        t.clamp_min_(eps)
        u = t.pow(p)
        v = u.mean(dim=(2, 3)).pow_(1.0 / p)
        ctx.save_for_backward(z, t, u, v)
        ctx.p, ctx.eps = p, eps
        return v

    @staticmethod
    def backward(ctx, grad):
        z, t, u, v = ctx.saved_tensors
        p, eps = ctx.p, ctx.eps
        hw = z.shape[-1] * z.shape[-2]
        scale = (grad * v.pow(1.0 - p) / hw)[:, :, None, None]
        g = u / t  # t^(p−1) from the saved t^p: a division, not a second power (t ≥ eps > 0)
        g.mul_(torch.sigmoid(z))
        g.masked_fill_(t <= eps, 0.0)
        return g.mul_(scale), None, None


def softplus_gem(z: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """GeM pooling (fixed exponent ``p``) of ``softplus(z)``: BiRQA's head, N×C×H×W → N×C."""
    return _SoftplusGeM.apply(z, p, eps)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1×1 convolution as one batched matrix product (``F.conv2d`` on CPU converts a wide
    feature map between memory layouts on the way in and out; the product reads it in place)."""
    if not fast():
        return torch.nn.functional.conv2d(x, weight, bias)
    n, c, h, w = x.shape
    o = weight.shape[0]
    y = torch.bmm(weight.reshape(1, o, c).expand(n, o, c), x.reshape(n, c, h * w))
    if bias is not None:
        y = y + bias.view(1, o, 1)
    return y.view(n, o, h, w)
