"""Issue 18.7: on a real GPU. Every test here is marked ``gpu`` and skipped where
``torch.cuda.is_available()`` is False — that skip alone keeps them out of a CPU run (``pytest``
collects and skips them; ``pytest -m gpu`` selects only them). ``scripts/gpu_check.sh`` runs
them on a lent GPU machine.

What they check, against the same computation on the CPU:

* every registered target (read from the registry, as ``tests/test_device_safety.py`` does):
  forward, calibration and both gradient paths on CUDA;
* a PGD cell through ``robench.run(device="cuda")``: same cell key as the CPU cell, the GPU
  recorded, per-item numbers within the tolerances below;
* a Ray GPU cell (``gpus_per_cell=1``) where Ray can start;
* scores with the GPU's default math (TF32 convolutions), what a user's run gets.

Tolerances (stated; a placement bug or a different random draw gives differences of order 1):

* ``fp32`` (TF32 off in matmul and cuDNN: CPU and GPU both in IEEE float32, differing only in
  the order of reductions): scores ``rtol=1e-3, atol=1e-5``; a gradient within 1e-2 of the CPU
  gradient's norm (‖g_gpu − g_cpu‖ ≤ 1e-2 ‖g_cpu‖);
* default math (cuDNN convolutions in TF32, 10-bit mantissa): scores ``rtol=1e-2, atol=1e-3``;
* an attack's gain (attacked − clean score) per item within ``2e-5 + 0.1 × |the CPU's gain|``,
  and the cell's mean gain per ε within 5 % (+1e-5): PGD steps by the gradient's sign, so a
  component near 0 may step the other way on the other device and the iterates part a little
  (gains, not attacked scores, so that the clean scores' rounding does not swamp a small gain);
  clean scores as scores above, ℓ∞ within the budget, query counts equal.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from robench.core.registry import MODELS
from tests.test_device_safety import _pair, _target, _target_pass

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"),
]

TINY = {"size": 32, "crops_per_source": 1}
FP32 = {"rtol": 1e-3, "atol": 1e-5}
DEFAULT_MATH = {"rtol": 1e-2, "atol": 1e-3}


@pytest.fixture
def fp32():
    """IEEE float32 on the GPU (TF32 off), restored after the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision; the flags still work
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _close_grad(got, want, what, rel=1e-2):
    err = float((got - want).norm()) / max(float(want.norm()), 1e-12)
    assert err <= rel, f"{what}: ‖Δ‖/‖g_cpu‖ = {err:.2e} > {rel:g}"


def _on_cuda(t, what):
    assert t.device.type == "cuda", f"{what} is on {t.device}, not on CUDA"


@pytest.mark.parametrize("name", MODELS.names())
def test_target_forward_backward_on_cuda(name, fp32):
    t = _target(name)
    dist, ref = _pair(n=2, size=max(64, t.card.min_size))
    want = _target_pass(t, dist, ref)
    g = copy.deepcopy(t).to("cuda")
    assert g.device.type == "cuda", "Target.device must follow the module"
    got = _target_pass(g, dist.cuda(), ref.cuda())
    assert set(got) == set(want)
    for k, v in got.items():
        _on_cuda(v, f"{name}'s {k}")
        if k.startswith("grad"):
            _close_grad(v.cpu(), want[k], f"{name}'s {k}")
        else:
            torch.testing.assert_close(v.cpu(), want[k], **FP32)


@pytest.mark.parametrize("name", MODELS.names())
def test_scores_agree_with_the_gpus_default_math(name):
    """What a user's run computes: cuDNN's default (TF32) convolutions, a batch of 4."""
    t = _target(name)
    dist, ref = _pair(n=4, size=max(128, t.card.min_size), seed=5)
    with torch.no_grad():
        want = t(dist, ref)
        got = copy.deepcopy(t).to("cuda")(dist.cuda(), ref.cuda())
    _on_cuda(got, f"{name}'s score")
    torch.testing.assert_close(got.cpu(), want, **DEFAULT_MATH)


def test_a_device_this_machine_lacks_is_refused():
    from robench.core.device import resolve_device
    from robench.core.errors import RobenchError

    n = torch.cuda.device_count()
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda") == torch.device(
        "cuda", torch.cuda.current_device()
    )
    with pytest.raises(RobenchError, match=rf"this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


# --------------------------------------------------------------------------------------------
# cells


@pytest.fixture
def birqa_weights(tmp_path):
    """BiRQA (default architecture) with seeded random weights in a file: every run loads the same."""
    from robench.core import weights as W
    from robench.models import build

    torch.manual_seed(0)
    t = build("birqa")
    path = tmp_path / "birqa-seeded.safetensors"
    W.save_safetensors(t.state_dict(), path, {"config": t.config})
    return path


def _settings(store, weights, model="birqa"):
    return dict(
        model=model,
        weights=str(weights) if model == "birqa" else None,
        attacks="pgd",
        n=8,
        eps="2,8",
        store=str(store),
        dataset_options=dict(TINY),
        attack_params={"pgd": {"steps": 10}},
    )


def _stored(store):
    from robench.engine.store import Store

    with Store(store) as st:
        cells, res = st.cells(status=None), st.results()
    return cells, res.sort_values(["cell_key", "eps", "item"]).reset_index(drop=True)


def _same_cell(got_store, want_store, clean_tol):
    """Per-item agreement of two stores of one PGD cell (tolerances in the module docstring)."""
    import numpy as np

    gc, g = _stored(got_store)
    wc, w = _stored(want_store)
    assert list(gc["key"]) == list(wc["key"]) and len(gc) == 1, "the device must not change the cell"
    assert list(g["item_id"]) == list(w["item_id"]) and list(g["eps"]) == list(w["eps"])
    assert (g["queries"].to_numpy() == w["queries"].to_numpy()).all()
    np.testing.assert_allclose(g["clean_score"], w["clean_score"], **clean_tol)
    gain = (w["score"] - w["clean_score"]).to_numpy()
    diff = abs((g["score"] - g["clean_score"]).to_numpy() - gain)
    assert (diff <= 2e-5 + 0.1 * abs(gain)).all(), (
        f"attack gains differ by up to {diff.max():.3g} (gains up to {abs(gain).max():.3g})"
    )
    assert (g["linf"] <= g["eps"] / 255 + 1e-6).all(), "an attacked image is outside its budget"
    mg, mw = gc.iloc[0]["summary"]["mean_gain"], wc.iloc[0]["summary"]["mean_gain"]
    for a, b in zip(mg, mw):
        assert abs(a - b) <= 0.05 * abs(b) + 1e-5, (mg, mw)
    return gc.iloc[0]["device"]


@pytest.mark.parametrize("model", ["birqa", "ssim"])
def test_pgd_cell_on_cuda_matches_the_cpu_cell(model, tiny_mini, birqa_weights, tmp_path, fp32):
    import robench

    cpu, gpu = tmp_path / "cpu.sqlite", tmp_path / "gpu.sqlite"
    a = robench.run(progress=False, device="cpu", **_settings(cpu, birqa_weights, model))
    b = robench.run(progress=False, device="cuda", **_settings(gpu, birqa_weights, model))
    assert [c["status"] for r in (a, b) for c in r["runs"][0]["cells"]] == ["done", "done"]
    dev = _same_cell(gpu, cpu, FP32)
    assert dev["device"].startswith("cuda") and dev["gpu"] == torch.cuda.get_device_name(0) and dev["cuda"]


def test_ray_gpu_cell(tiny_mini, birqa_weights, tmp_path):
    """``--executor ray --gpus-per-cell 1``: the cell on the GPU Ray gives its worker, recorded;
    its numbers are the in-process GPU cell's (both with the GPU's default math)."""
    ray = pytest.importorskip("ray")
    import robench
    from robench.core.config import RunSpec
    from robench.core.errors import RobenchError
    from robench.engine.executors import RayExecutor
    from robench.engine.grid import run_grid

    here = tmp_path / "here.sqlite"
    robench.run(progress=False, device="cuda", **_settings(here, birqa_weights))
    try:
        ex = RayExecutor(num_cpus=2, gpus_per_cell=1)
    except RobenchError as exc:
        pytest.skip(f"Ray cannot start here: {exc}")
    try:
        spec = RunSpec(
            model="birqa",
            weights=str(birqa_weights),
            attacks=["pgd"],
            eps=[2, 8],
            n=8,
            store=tmp_path / "ray.sqlite",
            dataset_options=dict(TINY),
            attack_params={"pgd": {"steps": 10}},
        )
        out = run_grid([spec], progress=False, executor=ex)
    finally:
        ex.close()
    assert not ray.is_initialized()
    assert [c["status"] for c in out["runs"][0]["cells"]] == ["done"], out["runs"][0]["cells"]
    dev = _same_cell(tmp_path / "ray.sqlite", here, DEFAULT_MATH)
    assert dev["device"] == "cuda:0" and dev["gpu"] == torch.cuda.get_device_name(0) and dev["ray_gpu_ids"], dev
