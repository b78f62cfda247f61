"""pyiqa's full-reference metrics as targets: offline status, the target contract, parity with
robench's own SSIM and PSNR, the zero-gradient (masking) case, and the refusal of absent weights.

pyiqa is an optional extra installed by the README set-up (``--no-deps``); without it these
tests skip with the reason."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import robench
from robench.core.errors import RobenchError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pyiqa") is None,
    reason="pyiqa is not installed (pip install --no-deps pyiqa==0.1.16, as the README set-up does)",
)

#: the classic metrics that need no weights and no torchvision: they must run offline here
OFFLINE = ("ssim", "ssimc", "psnr", "psnry", "fsim", "vif", "gmsd", "vsi", "cw_ssim", "mad")


def _pair(n=2, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, side, side, generator=g)
    return (ref + 0.08 * torch.randn(n, 3, side, side, generator=g)).clamp(0, 1), ref


def test_catalogue_lists_every_fr_metric_with_its_status():
    from robench.models import pyiqa_catalogue

    rows = {r["name"]: r for r in pyiqa_catalogue()}
    assert len(rows) >= 10
    assert all(r["status"] in ("ok", "weights", "import") for r in rows.values())
    assert {f"pyiqa:{m}" for m in OFFLINE} <= {n for n, r in rows.items() if r["status"] == "ok"}
    assert rows["pyiqa:gmsd"]["lower_better"] and not rows["pyiqa:ssim"]["lower_better"]
    # what does not run says why, in one line
    for r in rows.values():
        if r["status"] != "ok":
            assert r["detail"] and "\n" not in r["detail"]


def test_ls_targets_json_lists_pyiqa_metrics():
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "robench.cli", "ls", "targets", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    py = [r for r in rows if r["name"].startswith("pyiqa:")]
    assert len(py) >= 10 and {"status", "lower_better"} <= set(py[0])
    assert any(r["name"] == "birqa" for r in rows)  # robench's own targets too


@pytest.mark.parametrize("metric", ["ssim", "psnr", "gmsd", "fsim", "vsi"])
def test_target_contract(metric):
    """Finite float32 scores of shape (N,), batch-consistent, deterministic, and a non-zero
    finite gradient to the distorted image."""
    t = robench.load_model(f"pyiqa:{metric}")
    dist, ref = _pair(3)
    s = t(dist, ref)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert torch.equal(s, t(dist, ref))
    assert torch.allclose(t(dist[1:2], ref[1:2]), s[1:2], rtol=1e-5, atol=1e-6)
    x = dist.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t(x, ref).sum(), x)
    assert torch.isfinite(g).all() and (g.flatten(1).abs().amax(1) > 0).all()
    assert t.card.name == f"pyiqa:{metric}" and t.card.lower_better == (metric == "gmsd")


def test_parity_with_robench_ssim_and_psnr():
    """pyiqa's SSIM (luminance, valid filtering) and PSNR against robench's: the same definition,
    pyiqa computing in float64 — agreement within 2e-4 (SSIM) and 1e-4 dB (PSNR)."""
    dist, ref = _pair(4, 128)
    for ours, theirs, tol in (("ssim", "pyiqa:ssim", 2e-4), ("psnr", "pyiqa:psnr", 1e-4)):
        a, b = robench.load_model(ours)(dist, ref), robench.load_model(theirs)(dist, ref)
        assert (a - b).abs().max().item() < tol, (ours, a, b)


def test_zero_gradient_metric_is_flagged(tmp_path):
    """pyiqa's MAD returns no usable gradient on these images: the cell carries the gradient
    flag instead of reading the attack's failure as robustness."""
    t = robench.load_model("pyiqa:mad")
    dist, ref = _pair(2, 64)
    x = dist.clone().requires_grad_(True)
    s = t(x, ref)
    grad = torch.autograd.grad(s.sum(), x, allow_unused=True)[0]
    masked = grad is None or not torch.isfinite(grad).all() or not (grad.abs().amax() > 0)
    assert masked
    res = robench.load_attack("fgsm")(t, dist, ref, eps=[4 / 255], return_images=False)
    assert res.probes["zero_grad"] + res.probes["nan_grad"] > 0
    from robench.core.flags import active

    assert "mask" in active({"zero_grad": res.probes["zero_grad"], "nan_grad": res.probes["nan_grad"]})


def test_unknown_metric_and_absent_weights_are_refused_at_once(tmp_path, monkeypatch):
    from robench.models import pyiqa_adapter as A

    with pytest.raises(RobenchError, match="did you mean 'pyiqa:ssim'"):
        robench.load_model("pyiqa:ssimm")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = "https://example.invalid/weights/LPIPS_v0.1_alex-df73285e.pth"
    with pytest.raises(A.WeightsNotCached, match=str(tmp_path / "hub" / "pyiqa")):
        A.cached_file(url)
    # a file of the right name in pyiqa's cache is what pyiqa would load: its path comes back
    cached = tmp_path / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, cached)
    assert A.cached_file(url) == str(cached)
    assert set(torch.load(A.cached_file(url), weights_only=True)) == {"lin0.model.1.weight"}


def test_size_below_a_metrics_minimum_is_a_clear_error():
    t = robench.load_model("pyiqa:ms_ssim")
    dist, ref = _pair(1, 128)
    with pytest.raises(RobenchError, match="176"):
        t(dist, ref)
