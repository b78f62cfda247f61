from __future__ import annotations

import json
import subprocess
import sys

import pytest

import robench
from robench.core.errors import RobenchError


def test_bench_speed_cli_small():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "robench.cli",
            "bench",
            "speed",
            "--models",
            "birqa,psnr,topiq.fr",
            "--size",
            "64x48",
            "--rounds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    rows = {row["model"]: row for row in res["results"]}
    assert set(rows) == {"birqa", "psnr", "topiq.fr"} and res["size"] == "64x48"
    assert rows["topiq.fr"]["ratio_to_topiq.fr"] == pytest.approx(1.0)
    assert rows["birqa"]["images_per_s"] > 0 and rows["psnr"]["parameters"] == 0
    assert 4.4e6 < rows["birqa"]["parameters"] < 6.6e6 and rows["topiq.fr"]["parameters"] > 35e6
    bad = subprocess.run(
        [sys.executable, "-m", "robench.cli", "bench", "speed", "--models", "birqa", "--size", "big"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--size" in bad.stderr


def test_ls_models_json_has_lower_better():
    r = subprocess.run([sys.executable, "-m", "robench.cli", "ls", "models", "--json"], capture_output=True, text=True)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["lpips.vgg"]["lower_better"] is True and rows["topiq.fr"]["lower_better"] is False
    assert all("summary" in row for row in rows.values())


def test_pyiqa_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import fails
    with pytest.raises(RobenchError, match="pip install --no-deps pyiqa==0.1.16"):
        robench.load_model("pyiqa:lpips")
