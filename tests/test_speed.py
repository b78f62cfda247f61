"""Speed options (issue 18.4), on the CPU (bf16 autocast runs there): ``--amp bf16`` and
``--compile`` agree with float32 eager within the stated tolerances where they should, a run
refuses a target where they do not, bf16 is recorded and keyed apart, compile is recorded and
not keyed."""

from __future__ import annotations

import pytest
import torch

from robench.core.config import RunConfig, RunSpec
from robench.core.errors import RobenchError
from robench.core.target import check_amp, set_speed, speed_of
from robench.engine.speed import AMP_GAIN_TOL, AMP_SCORE_TOL, agreement
from robench.engine.store import Store

TINY_OPTS = {"size": 32, "crops_per_source": 1}
EPS = [2 / 255, 8 / 255]


def _items():
    from robench.engine.items import load_items

    return load_items("mini", "test", 8, 0, dict(TINY_OPTS))


def _target(name: str):
    from robench.models import build

    torch.manual_seed(0)  # random initialisation: the same weights in every run
    return build(name).eval()


@pytest.mark.parametrize("name", ["psnr", "lpips.alex"])
def test_bf16_agrees_with_float32_within_tolerance(tiny_mini, name):
    items = _items()
    t = _target(name)
    rec = agreement(t, items.dist, items.ref, EPS, amp="bf16")
    print(name, {k: rec[k] for k in ("spread", "score_max_abs_diff", "score_tol", "gain_max_abs_diff", "gain_tol")})
    assert rec["ok"] and rec["score_max_abs_diff"] <= rec["score_tol"] and rec["gain_max_abs_diff"] <= rec["gain_tol"]
    assert rec["score_tol"] == pytest.approx(AMP_SCORE_TOL * rec["spread"])
    assert rec["gain_tol"] == pytest.approx(AMP_GAIN_TOL * rec["spread"])
    assert speed_of(t) == {"amp": "bf16", "compile": False}  # left with the option set
    with torch.no_grad():
        s = t(items.dist, items.ref)
    assert s.dtype == torch.float32  # scores leave autocast in float32


def test_bf16_really_autocasts_and_a_disagreeing_target_is_refused(tiny_mini, tmp_path):
    from typer.testing import CliRunner

    from robench.cli import app

    items = _items()
    t = _target("ssim")
    rec = agreement(t, items.dist, items.ref, EPS, amp="bf16")
    assert not rec["ok"] and rec["score_max_abs_diff"] > rec["score_tol"]  # SSIM's variances cancel in bf16
    r = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            "ssim",
            "--attacks",
            "fgsm",
            "--n",
            "8",
            "--eps",
            "8",
            "--dataset-option",
            "size=32",
            "--dataset-option",
            "crops_per_source=1",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--amp",
            "bf16",
        ],
    )
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: --amp bf16 disagrees with float32 eager on ssim") and "tolerance" in lines[0]
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store is opened


def test_bf16_is_recorded_and_keyed_apart(tiny_mini, tmp_path):
    from robench.engine.grid import run_grid

    def spec(amp):
        return RunSpec(
            model="lpips.alex",
            weights="none",
            attacks=["fgsm"],
            eps=[8],
            n=8,
            store=tmp_path / "a.sqlite",
            dataset_options=dict(TINY_OPTS),
            amp=amp,
        )

    torch.manual_seed(0)
    fp32 = run_grid([spec(None)], progress=False)["runs"][0]
    torch.manual_seed(0)
    bf16 = run_grid([spec("bf16")], progress=False)["runs"][0]
    assert fp32["speed"] is None and bf16["speed"]["amp"] == "bf16" and bf16["speed"]["agreement"]["ok"]
    k32, k16 = fp32["cells"][0]["key"], bf16["cells"][0]["key"]
    assert k32 != k16 and bf16["cells"][0]["status"] == "done"  # not served from the float32 cell
    with Store(tmp_path / "a.sqlite") as st:
        cells = st.cells().set_index("key")
        r32, r16 = st.results(k32), st.results(k16)
    assert "amp" not in cells.loc[k32, "config"] and cells.loc[k16, "config"]["amp"] == "bf16"
    dev = cells.loc[k16, "device"]
    assert dev["device"] == "cpu" and dev["speed"]["amp"] == "bf16" and dev["speed"]["compile"] is False
    assert dev["speed"]["agreement"]["score_max_abs_diff"] <= dev["speed"]["agreement"]["score_tol"]
    assert "speed" not in cells.loc[k32, "device"]
    assert not r32["score"].equals(r16["score"])  # other numbers: a different measurement
    assert (r32["score"] - r16["score"]).abs().max() < 0.1 * r32["clean_score"].std() + 1e-3


def test_amp_and_compile_settings_are_checked_and_round_trip(tmp_path):
    from typer.testing import CliRunner

    from robench.cli import app

    assert check_amp(None) is None and check_amp("none") is None and check_amp("FP32") is None
    assert check_amp("bf16") == "bf16" and check_amp("bfloat16") == "bf16"
    with pytest.raises(RobenchError, match=r"--amp must be one of none, bf16 \(none = float32\), got 'fp16'"):
        check_amp("fp16")
    r = CliRunner().invoke(app, ["run", "--model", "psnr", "--amp", "fp16"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "none, bf16" in lines[0], r.output
    r = CliRunner().invoke(app, ["run", "--help"])
    assert r.exit_code == 0 and "--amp" in r.output and "--compile" in r.output and "bf16" in r.output
    with pytest.raises(RobenchError, match="compile must be true or false"):
        RunConfig.from_dict({"targets": "psnr", "compile": "yes"})
    cfg = RunConfig.from_dict({"targets": "psnr", "attacks": "fgsm", "amp": "bf16", "compile": True}).resolve()
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    again = RunConfig.from_toml(path)
    assert again.amp == "bf16" and again.compile is True
    assert [(s.amp, s.compile) for s in again.specs()] == [("bf16", True)]
    assert RunConfig.from_dict({"targets": "psnr"}).resolve().specs()[0].amp is None


def test_set_speed_is_idempotent_and_follows_each_setting():
    t = _target("psnr")
    assert speed_of(t) == {"amp": None, "compile": False}
    set_speed(t, "bf16")
    set_speed(t, "bf16")
    assert speed_of(t) == {"amp": "bf16", "compile": False}
    set_speed(t, None)
    assert speed_of(t) == {"amp": None, "compile": False} and t.amp is None


@pytest.mark.slow  # torch.compile on the CPU: about a minute per target on 2 cores
def test_compile_agrees_with_eager_and_is_recorded_not_keyed(tiny_mini, tmp_path):
    from robench.engine.grid import run_grid

    items = _items()
    rec = agreement(_target("psnr"), items.dist, items.ref, EPS, compile=True)
    print({k: rec[k] for k in ("spread", "score_max_abs_diff", "score_tol", "gain_max_abs_diff", "gain_tol")})
    assert rec["ok"]

    def spec(compile):
        return RunSpec(
            model="psnr",
            attacks=["fgsm"],
            eps=[8],
            n=8,
            store=tmp_path / "a.sqlite",
            dataset_options=dict(TINY_OPTS),
            compile=compile,
            force=compile,
        )

    eager = run_grid([spec(False)], progress=False)["runs"][0]
    comp = run_grid([spec(True)], progress=False)["runs"][0]
    assert eager["cells"][0]["key"] == comp["cells"][0]["key"]  # recorded, not keyed
    assert comp["speed"]["compile"] is True and comp["speed"]["agreement"]["ok"]
    with Store(tmp_path / "a.sqlite") as st:
        dev = st.cells().iloc[0]["device"]
    assert dev["speed"]["compile"] is True and dev["speed"]["amp"] is None
