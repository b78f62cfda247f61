from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/layouts.py

# pytest-xdist: N workers × torch's default (all cores) threads oversubscribe the CPU, and
# OpenMP's spinning then slows small ops by 10-100×. One share of the cores per worker.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def robench_home(tmp_path_factory) -> Path:
    """One cache for the session, never the user's ~/.cache/robench."""
    home = tmp_path_factory.mktemp("robench_home")
    os.environ["ROBENCH_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _isolated_home(robench_home, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(robench_home))


@pytest.fixture(scope="session")
def tiny_mini(robench_home):
    """A small mini build (32 px, one crop per source): same code path, seconds to build."""
    from robench.data.mini import build_mini

    return build_mini(size=32, crops_per_source=1, seed=0, progress=False)
