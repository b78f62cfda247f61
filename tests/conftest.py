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


@pytest.fixture(scope="module")
def defence_home(tmp_path_factory):
    """A cache of the module's own for defences that need trained weights (kept out of the
    session cache other tests share)."""
    return tmp_path_factory.mktemp("defence_home")


@pytest.fixture(scope="module")
def tiny_denoiser(defence_home):
    """DiffPure is built from a denoiser its ``prepare`` trains (a DDPM): train a tiny one here
    (about a second) instead of calling ``prepare``."""
    from robench.defenses.diffpure import train_diffpure

    old = os.environ.get("ROBENCH_HOME")
    os.environ["ROBENCH_HOME"] = str(defence_home)
    try:
        return train_diffpure(
            dataset_options={"size": 32, "crops_per_source": 1, "progress": False},
            steps=5,
            batch=4,
            crop=32,
            width=8,
            progress=False,
        )
    finally:
        if old is None:
            os.environ.pop("ROBENCH_HOME", None)
        else:
            os.environ["ROBENCH_HOME"] = old


#: defences whose construction needs something trained first, and the fixture that makes it
DEFENCE_PREREQUISITES = {"diffpure": "tiny_denoiser"}


def prepare_defence(name: str, request) -> None:
    """Make what defence `name` needs before it is built (a tiny trained denoiser for DiffPure)."""
    if name in DEFENCE_PREREQUISITES:
        request.getfixturevalue(DEFENCE_PREREQUISITES[name])


def attack_test_params(name: str) -> dict:
    """Attack ``name``'s ``test_options``, plus the default dataset (with its own test options)
    for an attack that trains on data, as the engine fills ``training_data_params``."""
    from robench.core.registry import ATTACKS, DATASETS, default_dataset

    cls = ATTACKS.get(name)
    params = dict(cls.test_options)
    ds = default_dataset()
    run_data = {"dataset": ds, "dataset_options": dict(DATASETS.get(ds).test_options)}
    for k in cls.training_data_params:
        params.setdefault(k, run_data[k])
    return params


class Interrupt(Exception):
    """A simulated crash (tests of resuming)."""


def crash_at(task, step: int) -> None:
    """Make a Trainer task's ``make_batch`` raise `Interrupt` at `step` (after any checkpoint
    written before it): what a killed process leaves behind."""
    real = task.make_batch

    def die(s, gen):
        if s == step:
            raise Interrupt
        return real(s, gen)

    task.make_batch = die
