"""Issue 18.5: Ray GPU cells (``--gpus-per-cell``) on a machine without a GPU.

Ray's GPUs are a resource it counts: a node started with ``num_gpus=1`` offers one whether or
not it has one, and a task that requests it gets ``CUDA_VISIBLE_DEVICES`` set to its GPU's id,
which is then the worker's ``cuda:0``. ``RayExecutor`` sends a GPU cell with device ``cuda``,
and ``compute_cell`` moves the whole cell there (the target; the attack builds its state on the
target's device and the harness moves each batch of items there). Here a cluster of a GPU-less
head and one worker node with a (fake) GPU shows:

* placement: GPU cells run only on the node that has a GPU, and ask for CUDA there; this CPU
  build of torch has none, so each cell fails with an error naming CUDA, the GPU and the node —
  a GPU cell computed silently on the CPU would be a mislabelled result;
* device safety under ``--gpus-per-cell``: the same cell, through the same ``RayExecutor`` →
  ``_ray_compute`` → ``compute_cell`` path, computed in a Ray worker whose CUDA is the emulated
  accelerator of ``tests/test_device_safety.py`` (installed by Ray's ``worker_process_setup_hook``
  before the worker runs any task: a dispatch mode entered for the worker's life, ``torch.cuda``
  answering as on a one-GPU machine, and ``cuda`` resolved to the emulated device). A tensor of
  the cell left on the CPU fails there as it would on a GPU; the numbers are the serial CPU run's;
* a GPU request no node can meet is refused at once (Ray would leave it pending forever), and
  more than one GPU per cell is refused (a cell computes on one).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch

from robench.core.errors import RobenchError

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"size": 32, "crops_per_source": 1}
#: Ray's worker_process_setup_hook for the emulated-GPU job (a module path the workers import)
HOOK = "tests.test_ray_gpu._emulated_gpu_worker"


def test_more_than_one_gpu_per_cell_is_refused_before_ray_starts():
    from robench.engine.executors import RayExecutor

    for bad in (2, 1.5, -1):
        with pytest.raises(RobenchError, match=r"--gpus-per-cell must be in \[0, 1\]"):
            RayExecutor(num_cpus=1, gpus_per_cell=bad)
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------
# the emulated GPU inside a Ray worker

_MODE = None


def _emulated_gpu_worker() -> None:
    """Run in each worker of the emulated-GPU job before any task: this process's CUDA is the
    emulated accelerator (one device, cuda:0), for the life of the process (Ray runs a GPU task
    in a fresh worker: ``max_calls=1``). Everything else is the real code path."""
    global _MODE
    import robench.core.device as D
    from tests.test_device_safety import ACCEL, EmulatedAccelerator

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    real = D.resolve_device

    def resolve(spec="cpu", where="--device"):
        d = real(spec, where)  # the real checks, against the one emulated GPU
        return ACCEL if d.type == "cuda" else d

    D.resolve_device = resolve
    _MODE = EmulatedAccelerator()
    _MODE.__enter__()


# --------------------------------------------------------------------------------------------
# a GPU-less head and one worker node with a GPU


@pytest.fixture(scope="module")
def gpu_cluster(robench_home):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    gpu_node = c.add_node(num_cpus=1, num_gpus=1)
    c.wait_for_nodes()
    yield c, gpu_node
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture
def weights(tmp_path):
    """A small BiRQA with weights (a file: driver and worker load the same ones; a model with
    parameters, unlike SSIM, fails on the accelerator when given CPU images)."""
    from robench.core import weights as W
    from robench.models import build

    torch.manual_seed(0)
    t = build("birqa", width=0.25, csram=False)
    path = tmp_path / "birqa-small.safetensors"
    W.save_safetensors(t.state_dict(), path, {"config": t.config})
    return path


def _rows(store):
    from robench.engine.store import Store

    with Store(store) as st:
        res = st.results()
        cells = st.cells(status=None)
    rows = res[["cell_key", "item", "eps", "item_id", "clean_score", "score", "linf", "queries"]]
    return cells, rows.sort_values(["cell_key", "eps", "item"]).reset_index(drop=True)


@pytest.mark.slow
def test_cli_gpu_cells_run_on_the_gpu_node_and_refuse_a_worker_without_cuda(tiny_mini, gpu_cluster, tmp_path):
    """``robench run --executor ray --gpus-per-cell 1``: both cells are scheduled on the GPU node
    (the head has a free CPU but no GPU), ask for CUDA there, and fail naming it; nothing of
    them reaches the store's results."""
    from typer.testing import CliRunner

    from robench.cli.app import app

    c, gpu_node = gpu_cluster
    store = tmp_path / "gpu.sqlite"
    r = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            "ssim",
            "--attacks",
            "fgsm,pgd",
            "--direction",
            "up",
            "--eps",
            "2",
            "--n",
            "4",
            "--dataset-option",
            "size=32",
            "--dataset-option",
            "crops_per_source=1",
            "--attack-option",
            "pgd.steps=2",
            "--store",
            str(store),
            "--executor",
            "ray",
            "--address",
            c.address,
            "--gpus-per-cell",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 1, r.output  # failed cells, not a crash
    assert not ray.is_initialized()
    with sqlite3.connect(store) as con:
        failed = con.execute("select key, status, error from cells").fetchall()
        devices = [json.loads(d) for (d,) in con.execute("select device from cells")]
        n_rows = con.execute("select count(*) from results").fetchone()[0]
    assert len(failed) == 2 and n_rows == 0, (failed, n_rows)
    assert all(d["device"] == "cuda" for d in devices), devices  # where it was sent, not the driver's cpu
    for _, status, error in failed:
        assert status == "failed"
        assert "CUDA is not available in its worker" in error and "never falls back to the CPU" in error, error
        assert f"on Ray node {gpu_node.node_id[:12]}" in error, (error, gpu_node.node_id)  # placed on the GPU node
        assert "--gpus-per-cell gave it GPU 0" in error and "CUDA_VISIBLE_DEVICES='0'" in error, error


@pytest.mark.slow
def test_gpu_cell_in_a_ray_worker_is_device_safe(tiny_mini, gpu_cluster, weights, tmp_path, monkeypatch):
    """The cell computed by a Ray worker on its (emulated) GPU: placed on the GPU node, every
    tensor of target, attack and items on the device (a stray CPU tensor would fail the cell),
    the device recorded, and the per-item numbers those of the serial CPU run.

    Why this shows the emulator was active in the task, not only installed: the recorded device
    ``meta`` is the emulated device's type (``cuda`` resolved through the hook), and a target
    moved to ``meta`` without the emulator's dispatch mode holds tensors without values, so no
    score could have been computed, let alone the CPU run's. That the emulator catches what CUDA
    refuses is ``tests/test_device_safety.py::test_the_emulator_catches_what_cuda_refuses``."""
    from robench.core.config import RunSpec
    from robench.engine.executors import RayExecutor
    from robench.engine.grid import run_grid

    c, gpu_node = gpu_cluster

    def specs(store):
        return [
            RunSpec(
                model="birqa",
                weights=str(weights),
                attacks=["pgd"],
                eps=[2, 4],
                n=4,
                store=store,
                dataset_options=dict(TINY),
                attack_params={"pgd": {"steps": 2}},
            )
        ]

    run_grid(specs(tmp_path / "cpu.sqlite"), progress=False)
    ray.init(
        address=c.address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
            "worker_process_setup_hook": HOOK,
        },
    )
    ex = RayExecutor(address=c.address, gpus_per_cell=1)
    try:
        out = run_grid(specs(tmp_path / "gpu.sqlite"), progress=False, executor=ex)
        where = ray.get(ex._attempts.started.remote())
    finally:
        ex.close()
    cells = out["runs"][0]["cells"]
    assert [c["status"] for c in cells] == ["done"], cells
    assert {w["node"] for w in where.values()} == {gpu_node.node_id} and len(where) == 1
    gpu_cells, gpu_rows = _rows(tmp_path / "gpu.sqlite")
    cpu_cells, cpu_rows = _rows(tmp_path / "cpu.sqlite")
    # computed on the worker's device (the emulated GPU's type), on the GPU Ray gave it
    assert gpu_cells.iloc[0]["device"] == {"device": "meta", "ray_gpu_ids": ["0"]}, gpu_cells.iloc[0]["device"]
    assert cpu_cells.iloc[0]["device"] == {"device": "cpu"}
    assert list(gpu_cells["key"]) == list(cpu_cells["key"])  # the device is not part of the cell
    num = ["clean_score", "score", "linf"]
    assert gpu_rows.drop(columns=num).equals(cpu_rows.drop(columns=num))
    # float rounding only (under the emulator some composite ops take their decomposed path)
    torch.testing.assert_close(torch.tensor(gpu_rows[num].to_numpy()), torch.tensor(cpu_rows[num].to_numpy()))


@pytest.mark.slow
def test_a_gpu_request_no_node_can_meet_is_refused_at_once(robench_home):
    """Ray would keep the cell pending forever; the executor says so instead. A caller's own
    Ray connection is left open."""
    from robench.engine.executors import RayExecutor

    ray.init(
        address="local", num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        with pytest.raises(
            RobenchError,
            match=r"^--gpus-per-cell 1: no node of the Ray cluster \(local\) has 1 GPU "
            r"\(the most on one node: 0\); start the worker nodes on GPU machines",
        ):
            RayExecutor(gpus_per_cell=1)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
