"""Reliability of runs, training and the store (README "Reliability"): kill -9 during training and
recipes, two runs on one store at once, a full disk, a grid larger than the memory budget, and
the evaluation sanity flags (randomised defence without EOT, an attack that does nothing)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch

from robench.engine.store import Store, StoreFullError
from test_run import GRID, TINY, _snapshot, robench

DS = {"size": 32, "crops_per_source": 1}


def _home_with_tiny_mini(tiny_mini, path: Path) -> Path:
    """A fresh ROBENCH_HOME (its own weights cache) that shares the session's built tiny mini."""
    path.mkdir(parents=True, exist_ok=True)
    src = Path(tiny_mini)
    while src.name != "datasets":
        src = src.parent
    (path / "datasets").symlink_to(src, target_is_directory=True)
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# kill -9 during training


TRAIN = [
    "train",
    "--model",
    "birqa",
    "--epochs",
    "3",
    "--max-steps-per-epoch",
    "2",
    "--batch-size",
    "8",
    "--model-option",
    "width=0.25",
    "--dataset-option",
    "size=32",
    "--dataset-option",
    "crops_per_source=1",
    "--json",
]


def _epochs(out: Path) -> list[dict]:
    rows = json.loads((out / "log.json").read_text())["epochs"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # wall time differs, nothing else may


@pytest.mark.slow  # ~1 min: three CLI trainings
def test_kill_9_during_training_then_rerun_gives_identical_weights_and_log(tiny_mini, tmp_path):
    home = _home_with_tiny_mini(tiny_mini, tmp_path / "home")
    env = {"ROBENCH_HOME": str(home)}
    clean = tmp_path / "clean"
    robench(*TRAIN, "--out", str(clean), env=env)

    out = tmp_path / "killed"
    # 1. killed at the exact gap between last.pt (epoch 1) and log.json
    r = robench(*TRAIN, "--out", str(out), env={**env, "ROBENCH_FAULT": "kill-after-checkpoint:train:1"}, check=False)
    assert r.returncode == -signal.SIGKILL
    assert not (out / "log.json").exists() and (out / "last.pt").exists()
    # 2. killed from outside at a moment during epoch 2 or 3
    p = subprocess.Popen(
        [sys.executable, "-m", "robench.cli", *TRAIN, "--out", str(out)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (out / "log.json").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL  # killed during epoch 3, not finished
    # 3. the rerun resumes and ends identical to the uninterrupted run (and reaps the dead temp files)
    robench(*TRAIN, "--out", str(out), env=env)
    assert not list(out.glob("*.tmp"))
    assert _epochs(out) == _epochs(clean) and [r["epoch"] for r in _epochs(out)] == [1, 2, 3]
    from robench.core.weights import load_state_dict

    a, b = load_state_dict(clean / "best.safetensors"), load_state_dict(out / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~1 min each: a clean and two AAT trainings
@pytest.mark.parametrize("model", ["birqa", "lpips.alex"])  # LPIPS has dropout: the global RNG must be seeded
def test_kill_9_during_a_recipe_then_rerun_gives_identical_steps(tiny_mini, tmp_path, model):
    home = _home_with_tiny_mini(tiny_mini, tmp_path / "home")
    env = {"ROBENCH_HOME": str(home)}
    clean_args = [
        "train",
        "--model",
        model,
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--dataset-option",
        "size=32",
        "--dataset-option",
        "crops_per_source=1",
        "--json",
    ]
    if model == "birqa":
        clean_args += ["--model-option", "width=0.25"]
    robench(*clean_args, env=env)  # the clean tiny model the recipe starts from
    args = [
        "train",
        "--model",
        model,
        "--defense",
        "aat",
        "--steps",
        "20",
        "--dataset-option",
        "size=32",
        "--dataset-option",
        "crops_per_source=1",
        "--json",
    ]
    clean = tmp_path / "clean"
    robench(*args, "--out", str(clean), env=env)
    out = tmp_path / "killed"
    r = robench(*args, "--out", str(out), env={**env, "ROBENCH_FAULT": "kill-after-checkpoint:aat:10"}, check=False)
    assert r.returncode == -signal.SIGKILL and not (out / "steps.json").exists()
    robench(*args, "--out", str(out), env=env)

    def steps(o):
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in json.loads((o / "steps.json").read_text())["steps"]
        ]

    assert steps(out) == steps(clean) and [r["step"] for r in steps(out)] == list(range(20))
    from robench.core.weights import load_state_dict

    a, b = load_state_dict(clean / "final.safetensors"), load_state_dict(out / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from robench.core import training as T

    path = tmp_path / "last.pt"
    T.atomic_torch_save({"epoch": 1}, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        T.atomic_torch_save({"epoch": 2}, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no temp file left behind


# --------------------------------------------------------------------------------------------
# the store


def test_two_runs_on_one_store_at_once(tiny_mini, tmp_path):
    store = tmp_path / "shared.sqlite"
    cmd = [sys.executable, "-m", "robench.cli", "run", *GRID, "--store", str(store), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    for rep in reports:
        assert {c["status"] for c in rep["cells"]} <= {"done", "cached"}
    with sqlite3.connect(str(store)) as db:
        n_cells = db.execute("SELECT count(*), count(DISTINCT key) FROM cells").fetchone()
        per_cell = db.execute("SELECT count(*) FROM results GROUP BY cell_key").fetchall()
        dup = db.execute(
            "SELECT count(*) FROM (SELECT cell_key, item, eps FROM results GROUP BY 1, 2, 3 HAVING count(*) > 1)"
        ).fetchone()[0]
    assert n_cells == (4, 4) and [c for (c,) in per_cell] == [8 * 2] * 4 and dup == 0
    serial = tmp_path / "serial.sqlite"
    robench("run", *GRID, "--store", str(serial), "--json")
    (ka, ra), (kb, rb) = _snapshot(store), _snapshot(serial)
    assert ka == kb
    pd.testing.assert_frame_equal(ra, rb)


def test_store_stays_consistent_when_the_disk_fills(tiny_mini, tmp_path, monkeypatch):
    """SQLite's max_page_count makes the store's file 'full' exactly as a full disk does
    (SQLITE_FULL): the run stops with a clear error, the store keeps only whole cells, and the
    rerun after 'freeing space' resumes to the uninterrupted result."""
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    spec = dict(
        model="ssim",
        attacks=["fgsm", "pgd", "square"],
        eps=[2, 8],
        n=8,
        dataset_options=DS,
        attack_params={"pgd": {"steps": 3}, "square": {"queries": 8}},
    )
    want = tmp_path / "want.sqlite"
    run(RunSpec(store=want, **spec), progress=False)

    got = tmp_path / "full.sqlite"
    real = Store.commit_cell
    calls = []

    def commit_then_fill(self, key, cell, rows, **kw):
        calls.append(key)
        if len(calls) == 2:  # the disk fills up just as the second cell is written
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count={pages}")
        return real(self, key, cell, rows, **kw)

    monkeypatch.setattr(Store, "commit_cell", commit_then_fill)
    with pytest.raises(StoreFullError, match="disk full.*rerun the same command"):
        run(RunSpec(store=got, **spec), progress=False)
    with Store(got) as st:
        cells, res = st.cells(status=None), st.results()
    assert list(cells["attack"]) == ["fgsm"] and list(cells["status"]) == ["done"]
    assert len(res) == 8 * 2 and set(res["cell_key"]) == set(cells["key"])  # whole cells only
    monkeypatch.setattr(Store, "commit_cell", real)  # space freed
    rep = run(RunSpec(store=got, **spec), progress=False)
    assert [c["status"] for c in rep["cells"]] == ["cached", "done", "done"]
    (ka, ra), (kb, rb) = _snapshot(got), _snapshot(want)
    assert ka == kb
    pd.testing.assert_frame_equal(ra, rb)


def test_disk_full_is_a_clear_cli_error(tiny_mini, tmp_path):
    """From the command line: exit 2 and the store named, not a traceback (the store file is
    write of a cell raises SQLite's SQLITE_FULL error through a tiny sitecustomize in the child)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sqlite3, robench.engine.store as S\n"
        "def _full(self, *a, **k):\n"
        "    raise sqlite3.OperationalError('database or disk is full')\n"
        "S.Store._insert_cell = _full\n"
    )
    store = tmp_path / "s.sqlite"
    # TINY's --attack-option settings name attacks this run does not have: refused since they'd do nothing
    r = robench(
        "run",
        "--model",
        "ssim",
        "--attacks",
        "fgsm,pgd,square,parsimonious",
        *TINY,
        "--store",
        str(store),
        check=False,
        env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "disk full" in r.stderr and str(store) in r.stderr.replace("\n", "") and "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# a grid larger than memory


def _alive_counter(monkeypatch):
    """Count the decoded image tensors alive at any moment (weakref finalisers)."""
    import robench.data.mini as M

    state = {"alive": 0, "peak": 0}
    real = M.Mini.__getitem__, M.Mini2AFC.__getitem__

    def track(t):
        state["alive"] += 1
        state["peak"] = max(state["peak"], state["alive"])
        weakref.finalize(t, lambda: state.__setitem__("alive", state["alive"] - 1))
        return t

    def wrap(get):
        def getitem(self, i):
            s = get(self, i)
            return {k: track(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}

        return getitem

    monkeypatch.setattr(M.Mini, "__getitem__", wrap(real[0]))
    monkeypatch.setattr(M.Mini2AFC, "__getitem__", wrap(real[1]))
    return state


@pytest.mark.parametrize("dataset", ["mini", "mini-2afc"])
def test_a_grid_larger_than_the_memory_budget_streams_with_identical_results(tiny_mini, tmp_path, monkeypatch, dataset):
    from robench.core.config import RunSpec
    from robench.engine.items import load_items
    from robench.engine.grid import run

    import dataclasses

    from robench.core.profiles import get_profile

    # batches of 4 so that "a batch" is visibly less than the 24 items
    quick4 = dataclasses.replace(get_profile("quick"), attack_batch=4)
    spec = dict(
        model="ssim",
        attacks=["fgsm", "square"],
        eps=[2, 8],
        n=24,
        dataset=dataset,
        dataset_options=DS,
        attack_params={"square": {"queries": 8}},
        profile=quick4,
    )
    want = tmp_path / "in-memory.sqlite"
    run(RunSpec(store=want, **spec), progress=False)
    assert not load_items(dataset, "test", 24, 0, DS).streamed  # the default budget holds 24 tiny pairs

    # a budget smaller than one batch: the run must stream and hold no more than a batch
    monkeypatch.setenv("ROBENCH_MEMORY_BUDGET", "20K")
    items = load_items(dataset, "test", 24, 0, DS)
    assert items.streamed and not isinstance(items.dist, torch.Tensor)
    assert items.dist.shape == (24, 3, 32, 32)
    state = _alive_counter(monkeypatch)
    got = tmp_path / "streamed.sqlite"
    run(RunSpec(store=got, **spec), progress=False)
    per_item = 2 if dataset == "mini" else 3  # tensors one dataset item decodes (ref, dist | ref, p0, p1)
    assert 0 < state["peak"] <= 2 * 4 * per_item  # at most two batches of 4 alive, never the whole grid (24)
    # same cells, same per-image numbers as the in-memory run
    (ka, ra), (kb, rb) = _snapshot(got), _snapshot(want)
    assert ka == kb
    pd.testing.assert_frame_equal(ra, rb)


def test_memory_budget_must_be_a_size(monkeypatch):
    from robench.core.errors import RobenchError
    from robench.engine.items import memory_budget

    monkeypatch.setenv("ROBENCH_MEMORY_BUDGET", "512M")
    assert memory_budget() == 512 * 2**20
    monkeypatch.setenv("ROBENCH_MEMORY_BUDGET", "4GB")
    assert memory_budget() == 4 * 2**30
    monkeypatch.setenv("ROBENCH_MEMORY_BUDGET", "")
    assert memory_budget() == 2 * 2**30
    for bad in ("lots", "-5", "inf", "0"):
        monkeypatch.setenv("ROBENCH_MEMORY_BUDGET", bad)
        with pytest.raises(RobenchError, match="ROBENCH_MEMORY_BUDGET"):
            memory_budget()


# --------------------------------------------------------------------------------------------
# evaluation reliability: the sanity flags


def test_randomised_defence_without_eot_is_flagged(tiny_mini, tmp_path):
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    base = dict(model="ssim", attacks=["fgsm"], eps=[4], n=8, dataset_options=DS)
    rep = run(
        RunSpec(defense="flip", store=tmp_path / "a.sqlite", attack_params={"fgsm": {"eot": 1}}, **base), progress=False
    )
    assert rep["cells"][0]["flags"]["randomised"] and rep["cells"][0]["flags"]["eot_required"]
    rep = run(
        RunSpec(defense="flip", store=tmp_path / "b.sqlite", attack_params={"fgsm": {"eot": 4}}, **base), progress=False
    )
    assert rep["cells"][0]["flags"]["randomised"] and not rep["cells"][0]["flags"].get("eot_required")
    rep = run(RunSpec(store=tmp_path / "c.sqlite", **base), progress=False)
    assert not rep["cells"][0]["flags"]["randomised"] and not rep["cells"][0]["flags"].get("eot_required")


def test_an_attack_that_does_nothing_is_flagged(tiny_mini, tmp_path, monkeypatch):
    from robench.attacks.base import Attack
    from robench.core.registry import ATTACKS
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    class Idle(Attack):  # a broken attack: returns its input
        name = "idle"

        def perturb(self, f, x, eps, q0):
            return x.clone()

    monkeypatch.setitem(ATTACKS._entries, "idle", type(ATTACKS.entry("fgsm"))(name="idle", obj=Idle))
    rep = run(
        RunSpec(model="ssim", attacks=["idle", "fgsm"], eps=[4], n=8, dataset_options=DS, store=tmp_path / "s.sqlite"),
        progress=False,
    )
    flags = {c["attack"]: c["flags"] for c in rep["cells"]}
    assert flags["idle"]["moves_target"] is False and flags["fgsm"]["moves_target"] is True


# --------------------------------------------------------------------------------------------
# robench validate: the installation self-check


def test_validate_self_check_passes_on_this_installation(tiny_mini):
    r = robench("validate", "--json")
    res = json.loads(r.stdout)
    assert res["ok"] and [c["check"] for c in res["checks"]] == [
        "versions",
        "registries",
        "tiny target differentiates",
        "tiny attacks stay in budget",
        "store round-trips",
        "cache",
    ]
    assert all(c["ok"] for c in res["checks"]) and res["seconds"] < 120


def test_validate_self_check_names_what_is_broken(tmp_path, monkeypatch):
    from robench.core import weights as W
    from robench.core.registry import MODELS
    from robench.engine.validate import self_check

    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "home"))
    src = tmp_path / "w.safetensors"
    W.save_safetensors({"w": torch.ones(3)}, src)
    entry = W.register("birqa.selfcheck", src, source="imported")
    (W.weights_dir() / entry["file"]).write_bytes(b"tampered")  # a cached file changed behind robench's back
    Entry = type(MODELS.entry("ssim"))
    monkeypatch.setitem(
        MODELS._entries, "broken", Entry(name="broken", target="robench_no_such_module:Model", origin="lazy")
    )
    res = self_check()
    by = {c["check"]: c for c in res["checks"]}
    assert not res["ok"]
    assert not by["registries"]["ok"] and "model 'broken'" in by["registries"]["detail"]
    assert not by["cache"]["ok"] and "birqa.selfcheck: sha256 mismatch" in by["cache"]["detail"]
    assert by["tiny target differentiates"]["ok"] and by["store round-trips"]["ok"]  # the rest still ran


def test_validate_exits_1_and_names_a_tampered_weights_file(tmp_path):
    home = tmp_path / "home"
    code = (
        "import torch; from robench.core import weights as W; "
        "p = W.weights_dir().parent / 'w.safetensors'; W.save_safetensors({'w': torch.ones(3)}, p); "
        "e = W.register('birqa.selfcheck', p, source='imported'); (W.weights_dir() / e['file']).write_bytes(b'x')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ROBENCH_HOME": str(home)})
    r = robench("validate", env={"ROBENCH_HOME": str(home)}, check=False)
    assert r.returncode == 1 and "birqa.selfcheck: sha256 mismatch" in r.stdout.replace("\n", " ") + r.stderr
    r = robench("validate", "--no-sample", check=False)
    assert r.returncode == 2 and "--profile paper" in r.stderr


def test_mixed_image_sizes_fail_before_any_compute_in_both_modes(tmp_path, monkeypatch):
    from robench.data.base import IQADataset
    from robench.core.errors import RobenchError
    from robench.core.registry import DATASETS
    from robench.engine.items import load_items

    class Mixed(IQADataset):
        name = "mixed"

        def __init__(self, split="test"):
            self.split = split
            self.table = pd.DataFrame(
                {
                    "ref_id": ["a", "b"],
                    "source": ["a", "b"],
                    "distortion": ["x", "x"],
                    "level": [1, 1],
                    "mos": [1.0, 2.0],
                    "index": [0, 1],
                }
            )

        def __getitem__(self, i):
            s = 16 if i == 0 else 24
            return {
                "ref": torch.zeros(3, s, s),
                "dist": torch.zeros(3, s, s),
                "mos": float(i),
                "ref_id": "ab"[i],
                "distortion": "x",
                "level": 1,
            }

    monkeypatch.setitem(DATASETS._entries, "mixed", type(DATASETS.entry("mini"))(name="mixed", obj=Mixed))
    for budget in (None, 10):
        with pytest.raises(RobenchError, match="differ in size.*16×16.*24×24"):
            load_items("mixed", "test", None, 0, {}, budget=budget)


def test_a_numpy_input_to_an_attack_is_a_clear_error():
    import numpy as np

    import robench
    from robench.core.errors import RobenchError

    t = robench.load_model("ssim")
    x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(RobenchError, match="must be a torch.Tensor"):
        robench.load_attack("fgsm")(t, x, x, eps=[4 / 255])


def test_2afc_with_a_randomised_defence_is_reproducible(tiny_mini, tmp_path):
    """The unattacked image of a triplet is scored over seeded EOT draws: two runs agree exactly."""
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    for name in ("a", "b"):
        run(
            RunSpec(
                model="ssim",
                defense="flip",
                attacks=["fgsm"],
                dataset="mini-2afc",
                eps=[8],
                n=8,
                dataset_options=DS,
                attack_params={"fgsm": {"eot": 2}},
                store=tmp_path / f"{name}.sqlite",
            ),
            progress=False,
        )
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        ra, rb = a.results(), b.results()
    assert ra["other_score"].notna().all()
    pd.testing.assert_frame_equal(ra, rb)
