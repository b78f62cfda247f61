"""Issue 22.2: robench works installed from its wheel, not only from a checkout. Everything the
package needs at run time (MOS table, photos and manifest, shipped configs, paper data) must be
inside the wheel: a missing package-data entry shows here, not on a user's machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # a fresh venv installs torch: minutes


def _sh(cmd, cwd, env=None, timeout=1200):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )
    return r.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    # build from a copy of the tracked files, stamped like `make dist` does
    src = tmp_path / "src"
    files = _sh(["git", "ls-files"], ROOT).split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    commit = _sh(["git", "rev-parse", "HEAD"], ROOT).strip()
    (src / "robench" / "BUILD_COMMIT").write_text(commit + "\n")
    _sh([sys.executable, "-m", "pip", "install", "-q", "build"], src)
    _sh([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(src)], src)
    wheels = list((tmp_path / "dist").glob("robench-*.whl"))
    assert wheels and list((tmp_path / "dist").glob("robench-*.tar.gz")), "wheel and sdist"
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for needed in (
        "robench/data/kadid10k_cell_mos.csv",
        "robench/data/photos/manifest.json",
        "robench/configs/paper.toml",
        "robench/BUILD_COMMIT",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    assert sum(n.startswith("robench/data/photos/") and n.endswith(".png") for n in names) >= 20

    # a fresh venv, not editable, used from a folder outside the checkout
    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    _sh([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheels[0])], tmp_path)
    _sh([str(py), "-m", "pip", "install", "-q", "--no-deps", "torchattacks==3.5.1"], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ROBENCH_HOME=str(tmp_path / "home"), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    rb = str(venv / "bin" / "robench")
    where = _sh([str(py), "-c", "import robench, sys; print(robench.__file__)"], work, env)
    assert str(venv) in where and str(ROOT) not in where, where
    assert commit in _sh([rb, "--version"], work, env)
    _sh([rb, "validate"], work, env)
    _sh([rb, "data", "build", "mini"], work, env)
    assert any((tmp_path / "home").rglob("*")), "the mini build wrote into ROBENCH_HOME"
