from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import robench
from robench.models import build
from robench.core import weights as W
from robench.core.training import clean_loss, plcc_loss
from robench.engine.train import train


def test_plcc_loss_and_clean_loss():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert plcc_loss(2 * y + 1, y).item() == pytest.approx(0.0, abs=1e-6)
    assert plcc_loss(-y, y).item() == pytest.approx(2.0, abs=1e-6)
    assert clean_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    assert clean_loss(y + 1, y).item() == pytest.approx(1.0, abs=1e-5)  # MSE 1, PLCC 1


def test_tiny_birqa_loss_decreases(tiny_mini):
    """A tiny BiRQA on a tiny mini: the training loss falls over a few Adam steps."""
    ds = robench.load_dataset("mini", split="train", size=32, crops_per_source=1, progress=False)
    batch = torch.utils.data.default_collate([ds[i] for i in range(0, len(ds), max(1, len(ds) // 32))][:32])
    torch.manual_seed(0)
    m = build("birqa", width=0.25).train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = clean_loss(m.predict_mos(batch["dist"], batch["ref"]), batch["mos"].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses  # at least 20 % lower


def test_train_run_registers_provenance_and_resumes(tiny_mini, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(tiny_mini.parent.parent))  # the session cache with the tiny mini
    out = tmp_path / "run"
    kw = dict(
        dataset="mini",
        profile="quick",
        out=out,
        seed=0,
        batch_size=16,
        max_steps_per_epoch=3,
        dataset_options={"size": 32, "crops_per_source": 1, "progress": False},
        model_options={"width": 0.25},
        register_as="birqa.tinytest",
        progress=False,
    )
    r1 = train("birqa", epochs=1, **kw)
    log = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in log["epochs"]] == [1]
    r2 = train("birqa", epochs=2, **kw)  # resumes from last.pt: epoch 1 is not redone
    log = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in log["epochs"]] == [1, 2]
    assert log["epochs"][0] == json.loads(json.dumps(log["epochs"][0]))
    assert (out / "log.csv").read_text().count("\n") == 3
    entry = W.lookup("birqa.tinytest")
    assert entry["source"] == "trained-here" and entry["sha256"] == r2.sha256
    p = entry["provenance"]
    assert p["dataset"] == "mini" and p["profile"] == "quick" and p["epochs"] == 2 and p["seed"] == 0
    t = robench.load_model("birqa.tinytest")
    assert t.card.weights.source == "trained-here" and t.config["width"] == 0.25
    assert "trained-here on mini, profile quick" in t.card.weights.describe()
    # a different configuration in the same folder is refused rather than mixed
    with pytest.raises(robench.RobenchError, match="different configuration"):
        train("birqa", epochs=2, **{**kw, "batch_size": 8})
    del r1


def test_eval_cli_json(tiny_mini):
    import os

    env = {**os.environ, "ROBENCH_HOME": str(tiny_mini.parent.parent)}
    cmd = [
        sys.executable,
        "-m",
        "robench.cli",
        "eval",
        "--model",
        "ssim",
        "--dataset",
        "mini",
        "--split",
        "test",
        "--dataset-option",
        "size=32",
        "--dataset-option",
        "crops_per_source=1",
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    ds = robench.load_dataset("mini", split="test", size=32, crops_per_source=1, progress=False)
    assert res["n"] == len(ds) and 0 < res["srocc"] <= 1 and {"srocc", "plcc", "krocc"} <= set(res)
    r = subprocess.run(
        cmd[:5] + ["birqa"] + cmd[6:],
        capture_output=True,
        text=True,
        env={**env, "ROBENCH_HOME": str(tiny_mini.parent.parent / "empty"), "ROBENCH_SHIPPED_WEIGHTS": "0"},
    )
    assert r.returncode == 2 and "robench train --model birqa" in r.stderr
