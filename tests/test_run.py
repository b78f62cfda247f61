"""The run and the store: atomic cells, resume after kill -9, the CLI grid end to end."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from robench.core.errors import RobenchError
from robench.engine.store import Store

TINY = [
    "--dataset",
    "mini",
    "--dataset-option",
    "size=32",
    "--dataset-option",
    "crops_per_source=1",
    "--n",
    "8",
    "--eps",
    "2,8",
    "--attack-option",
    "pgd.steps=3",
    "--attack-option",
    "square.queries=8",
    "--attack-option",
    "parsimonious.queries=8",
    "--attack-option",
    "parsimonious.batch_blocks=4",
]
GRID = ["--model", "ssim", "--attacks", "fgsm,pgd,square,parsimonious", "--direction", "up"] + TINY  # one protocol


def robench(*args, env=None, check=True):
    cmd = [sys.executable, "-m", "robench.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}\n{r.stderr[-3000:]}")
    return r


def _cell(key="k", attack="fgsm"):
    cfg = {
        "target": {"name": "ssim", "weights_sha256": "x"},
        "defense": {"name": "none"},
        "attack": {"name": attack},
        "dataset": {"name": "mini", "split": "test", "kind": "pairs"},
        "profile": "quick",
        "seed": 0,
        "eps": [2.0],
    }
    return {"config": cfg}


def _rows(n=3):
    return [
        {"item": i, "eps": 2.0, "clean_score": 0.5, "score": 0.6, "linf": 2 / 255, "l2": 0.1, "queries": 1}
        for i in range(n)
    ]


def test_store_cell_is_one_transaction_and_exactly_once(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:

        def die():
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            st.commit_cell("k", _cell(), _rows(), before_commit=die)
        assert st.status("k") is None and len(st.results()) == 0  # nothing half-written
        assert st.commit_cell("k", _cell(), _rows()) is True
        assert st.commit_cell("k", _cell(), _rows()) is False  # a second writer loses: exactly once
        assert st.commit_cell("k", _cell(), _rows(2), replace=True) is True  # --force replaces, atomically
        assert len(st.results("k")) == 2
        st.commit_cell("k", _cell(), _rows(), replace=True)
        assert len(st.results("k")) == 3 and len(st.cells()) == 1
        assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RobenchError, match="not a robench store"):
        Store(bad)


def test_stratified_subset_covers_distortion_types():
    from robench.engine.items import stratified_subset

    table = pd.DataFrame(
        {"distortion": np.repeat([f"d{i}" for i in range(25)], 40), "level": np.tile(np.repeat([1, 2, 3, 4, 5], 8), 25)}
    )
    rows = stratified_subset(table, 32, seed=0)
    assert len(rows) == 32 and len(set(rows)) == 32
    assert table.iloc[rows]["distortion"].nunique() == 25
    assert rows == stratified_subset(table, 32, seed=0) and rows != stratified_subset(table, 32, seed=1)
    assert stratified_subset(table, None, 0) == list(range(len(table)))


def test_twoafc_accuracy_formula():
    from robench.core.stats import twoafc_accuracy

    # q0 > q1 → d0 < d1 → credit 1 − p; a tie earns ½
    assert twoafc_accuracy([1.0], [0.0], [0.2]) == pytest.approx(0.8)
    assert twoafc_accuracy([0.0], [1.0], [0.2]) == pytest.approx(0.2)
    assert twoafc_accuracy([0.5], [0.5], [0.9]) == pytest.approx(0.5)


def test_cli_grid_end_to_end_then_resumes(tiny_mini, tmp_path):
    store = tmp_path / "r.sqlite"
    r = robench("run", *GRID, "--store", str(store), "--json")
    rep = json.loads(r.stdout)
    assert [c["status"] for c in rep["cells"]] == ["done"] * 4
    for c in rep["cells"]:
        s = c["summary"]
        assert s["eps"] == [2.0, 8.0] and len(s["attacked_srocc"]) == 2 and np.isfinite(s["clean_srocc"])
        assert c["flags"]["moves_target"] and c["flags"]["zero_grad"] == 0
    pgd = next(c for c in rep["cells"] if c["attack"] == "pgd")
    assert "iterative_ge_single_step" in pgd["flags"] and "black_box_beats_white_box" in pgd["flags"]
    assert rep["harness_overhead"] is not None
    with Store(store) as st:
        cells, res = st.cells(), st.results()
        assert len(cells) == 4 and len(res) == 4 * 8 * 2
        cfg = cells.iloc[0]["config"]
        for k in ("target", "defense", "attack", "eps", "dataset", "seed", "profile"):
            assert k in cfg
        assert cfg["dataset"]["split"] == "test" and cfg["dataset"]["items_sha256"]
        assert (res["linf"] <= res["eps"] / 255 + 1e-6).all()
        assert cells.iloc[0]["versions"]["torch"] == torch.__version__
    again = json.loads(robench("run", *GRID, "--store", str(store), "--json").stdout)
    assert [c["status"] for c in again["cells"]] == ["cached"] * 4
    # the human summary goes to stdout as a table
    table = robench("run", *GRID, "--store", str(store)).stdout
    assert "attacked" in table and "pgd" in table


def test_cli_bad_names_exit_2(tiny_mini, tmp_path):
    r = robench(
        "run", "--model", "ssim", "--attacks", "pgdd", *TINY, "--store", str(tmp_path / "x.sqlite"), check=False
    )
    assert r.returncode == 2 and "did you mean 'pgd'" in r.stderr
    r = robench(
        "run",
        "--model",
        "ssim",
        "--attacks",
        "fgsm",
        "--eps",
        "2,abc",
        "--store",
        str(tmp_path / "x.sqlite"),
        check=False,
    )
    assert r.returncode == 2 and "--eps" in r.stderr
    r = robench("run", "--model", "sssim", "--attacks", "fgsm", "--store", str(tmp_path / "x.sqlite"), check=False)
    assert r.returncode == 2 and "did you mean" in r.stderr


def _snapshot(store):
    with Store(store) as st:
        cells = st.cells()
        res = st.results()
    keys = sorted(cells["key"])
    res = res.sort_values(["cell_key", "eps", "item"]).reset_index(drop=True)
    return keys, res[["cell_key", "item", "eps", "clean_score", "score", "linf", "l2", "queries"]]


def test_kill_9_at_any_moment_then_resume_is_identical(tiny_mini, tmp_path):
    clean = tmp_path / "clean.sqlite"
    robench("run", *GRID, "--store", str(clean), "--json")
    want_keys, want = _snapshot(clean)

    crashed = tmp_path / "crashed.sqlite"
    # 1. SIGKILL inside the pgd cell's transaction, after its rows were written
    r = robench("run", *GRID, "--store", str(crashed), env={"ROBENCH_FAULT": "kill-before-commit:pgd"}, check=False)
    assert r.returncode == -signal.SIGKILL
    with Store(crashed) as st:
        assert list(st.cells()["attack"]) == ["fgsm"]  # the killed cell left nothing
        assert set(st.results()["cell_key"]) == set(st.cells()["key"])
    # 2. SIGKILL from outside as soon as one more cell is done
    p = subprocess.Popen(
        [sys.executable, "-m", "robench.cli", "run", *GRID, "--store", str(crashed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        try:
            n = (
                sqlite3.connect(str(crashed), timeout=5)
                .execute("SELECT count(*) FROM cells WHERE status='done'")
                .fetchone()[0]
            )
        except sqlite3.OperationalError:
            n = 0
        if n >= 2:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # 3. rerun the same command: it resumes and ends identical to the uninterrupted run
    rep = json.loads(robench("run", *GRID, "--store", str(crashed), "--json").stdout)
    assert "cached" in [c["status"] for c in rep["cells"]]
    got_keys, got = _snapshot(crashed)
    assert got_keys == want_keys
    pd.testing.assert_frame_equal(got, want)
    with sqlite3.connect(str(crashed)) as db:  # nothing duplicated
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == len(want)


def test_2afc_attacks_the_less_preferred_image(tiny_mini, tmp_path):
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    spec = RunSpec(
        model="ssim",
        attacks=["fgsm"],
        dataset="mini-2afc",
        eps=[8],
        n=12,
        dataset_options={"size": 32, "crops_per_source": 1},
        store=tmp_path / "a.sqlite",
    )
    rep = run(spec, progress=False)
    s = rep["cells"][0]["summary"]
    assert 0 <= s["attacked_2afc"][0] <= 1 and "clean_2afc" in s
    with Store(tmp_path / "a.sqlite") as st:
        res = st.results()
    assert ((res["judge"] < 0.5) == (res["attacked_side"] == 1)).all()
    assert res["other_score"].notna().all() and (res["score"] >= res["clean_score"] - 1e-9).all()


def test_budget_violation_aborts_the_cell(tiny_mini, tmp_path, monkeypatch):
    from robench.attacks.base import Attack
    from robench.core.registry import ATTACKS
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    class Cheat(Attack):
        name = "cheat"

        def perturb(self, f, x, eps, q0):
            return (x + 3 * eps).clamp(0, 1)

    monkeypatch.setitem(ATTACKS._entries, "cheat", type(ATTACKS.entry("fgsm"))(name="cheat", obj=Cheat))
    spec = RunSpec(
        model="ssim",
        attacks=["cheat"],
        eps=[4],
        n=4,
        dataset_options={"size": 32, "crops_per_source": 1},
        store=tmp_path / "c.sqlite",
    )
    rep = run(spec, progress=False)
    assert rep["cells"][0]["status"] == "failed" and "L∞" in rep["cells"][0]["error"]
    with Store(tmp_path / "c.sqlite") as st:
        assert st.cells().empty and st.results().empty
        assert list(st.cells(status="failed")["attack"]) == ["cheat"]


def test_bench_attack_caching_is_exact(tiny_mini):
    r = robench(
        "bench", "attack", "--model", "lpips.alex", "--size", "64x64", "--batch", "2", "--rounds", "1", "--json"
    )
    res = json.loads(r.stdout)
    assert res["max_abs_score_diff"] <= 1e-6 and res["max_abs_grad_diff"] <= 1e-6 * max(1.0, res["grad_scale"])
    assert res["naive_step_s"] > 0 and res["cached_step_s"] > 0 and res["ratio"] > 0


def test_2afc_other_image_scored_over_eot_draws(tiny_mini, tmp_path, monkeypatch):
    from robench.core.config import RunSpec
    from robench.engine.grid import run
    from robench.core.target import Target

    draws = []
    real = Target.expected_score

    def spy(self, dist, ref, n=1):
        draws.append(n)
        return real(self, dist, ref, n)

    monkeypatch.setattr(Target, "expected_score", spy)
    spec = RunSpec(
        model="ssim",
        defense="flip",
        attacks=["fgsm"],
        dataset="mini-2afc",
        eps=[8],
        n=4,
        dataset_options={"size": 32, "crops_per_source": 1},
        store=tmp_path / "e.sqlite",
        attack_params={"fgsm": {"eot": 3}},
    )
    run(spec, progress=False)
    # one batch, one ε: the clean, the attacked and the other image, each a mean over 3 draws
    assert draws == [3, 3, 3]
