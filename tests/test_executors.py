"""Executors: a grid computed by Ray workers lands in the store exactly as a serial run's."""

from __future__ import annotations

import pytest

from robench.core.errors import RobenchError
from robench.engine.store import Store

TINY_OPTS = {"size": 32, "crops_per_source": 1}


def _specs(store):
    from robench.core.config import RunSpec

    return [
        RunSpec(
            model=m,
            attacks=["fgsm", "square"],
            eps=[2, 8],
            n=8,
            store=store,
            dataset_options=dict(TINY_OPTS),
            attack_params={"square": {"queries": 8}},
        )
        for m in ("ssim", "psnr")
    ]


def _snapshot(path):
    with Store(path) as st:
        cells = st.cells()
        res = st.results()
    rows = res[["cell_key", "item", "eps", "item_id", "clean_score", "score", "linf", "queries"]]
    return set(cells["key"]), rows.sort_values(["cell_key", "eps", "item"]).reset_index(drop=True)


def test_ray_grid_is_identical_to_serial(tiny_mini, tmp_path):
    ray = pytest.importorskip("ray")
    from robench.engine.grid import run_grid

    serial = run_grid(_specs(tmp_path / "serial.sqlite"), progress=False)
    par = run_grid(_specs(tmp_path / "ray.sqlite"), progress=False, executor="ray", executor_options={"num_cpus": 2})
    assert par["executor"] == "ray" and not ray.is_initialized()  # ray.shutdown() ran
    assert all(c["status"] == "done" for r in par["runs"] for c in r["cells"])
    keys_s, rows_s = _snapshot(tmp_path / "serial.sqlite")
    keys_r, rows_r = _snapshot(tmp_path / "ray.sqlite")
    assert keys_s == keys_r and len(keys_s) == 4
    assert rows_s.equals(rows_r)  # bit-identical per-image scores
    again = run_grid(_specs(tmp_path / "ray.sqlite"), progress=False, executor="ray", executor_options={"num_cpus": 2})
    assert all(c["status"] == "cached" for r in again["runs"] for c in r["cells"])  # nothing recomputed
    assert _snapshot(tmp_path / "ray.sqlite")[1].equals(rows_r)
    assert serial["executor"] == "serial"


def test_worker_refuses_a_cell_it_would_compute_differently(tiny_mini, tmp_path):
    from robench.engine.executors import compute_cell
    from robench.engine.grid import plan

    p = plan(_specs(tmp_path / "a.sqlite")[0], progress=False)
    task = p.tasks[0]
    task.attack_params = {**task.attack_params, "eot": 3}  # not what the driver keyed
    with pytest.raises(RobenchError, match="differs from the driver"):
        compute_cell(task)
    assert compute_cell(p.tasks[1])["key"] == p.tasks[1].key


def test_unknown_executor_is_refused(tiny_mini, tmp_path):
    from robench.engine.grid import run_grid

    with pytest.raises(RobenchError, match="did you mean 'ray'"):
        run_grid(_specs(tmp_path / "a.sqlite"), progress=False, executor="rya")


def test_validate_dry_builds_the_paper_grid():
    from robench.engine.validate import dry_build, split_sizes

    sizes = split_sizes("kadid10k")
    assert sum(sizes.values()) == 10125 and sizes["test"] == 16 * 125
    from robench.core.registry import attack_suite

    SUITE = attack_suite()

    res = dry_build("paper", sample=True, size=(48, 48))
    assert (
        res["cells"] == 3 * 4 * len(SUITE) and res["items_per_cell"] == sizes["test"] and res["eps"] == [2, 4, 6, 8, 10]
    )
    assert "dataset='kadid10k'" in res["attacks"]["facpa"] and "steps=100" in res["attacks"]["pgd"]
    cost = {(r["target"], r["attack"]): r for r in res["estimate"]["per_cell"]}
    assert len(cost) == 3 * len(SUITE) and all(r["seconds"] > 0 for r in cost.values())
    assert cost[("birqa", "pgd")]["grad_evals"] == 200 and cost[("birqa", "cw")]["grad_evals"] == 500
    assert cost[("birqa", "zhang")]["grad_evals"] == 100
    assert cost[("birqa", "pgd")]["seconds"] > cost[("birqa", "fgsm")]["seconds"]
    assert dry_build("paper", sample=False)["estimate"] is None


def test_budgets_are_sorted_and_unique(tiny_mini, tmp_path):
    """`--eps 8,2,8` is the cell of `--eps 2,8` (a repeated ε would write each row twice)."""
    from robench.core.config import RunSpec
    from robench.engine.grid import plan

    a = plan(
        RunSpec(
            model="ssim",
            attacks=["fgsm"],
            eps=[8, 2, 8],
            n=4,
            store=tmp_path / "a.sqlite",
            dataset_options=dict(TINY_OPTS),
        ),
        progress=False,
    )
    b = plan(
        RunSpec(
            model="ssim",
            attacks=["fgsm"],
            eps=[2, 8],
            n=4,
            store=tmp_path / "a.sqlite",
            dataset_options=dict(TINY_OPTS),
        ),
        progress=False,
    )
    assert a.eps == [2.0, 8.0] and a.tasks[0].key == b.tasks[0].key
