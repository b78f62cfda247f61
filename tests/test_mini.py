from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import robench
from robench.data import distortions as D
from robench.data import mini as M


def test_tiny_build_counts_and_labels(tiny_mini):
    meta = json.loads((tiny_mini / "meta.json").read_text())
    assert meta["n_sources"] == len(M.SOURCES) >= 10
    assert meta["n_references"] == len(M.SOURCES)  # one crop each
    assert meta["n_pairs"] == meta["n_references"] * 125
    pairs = pd.read_csv(tiny_mini / "pairs.csv")
    # every pair is labelled with its KADID cell's mean MOS
    for row in pairs.sample(50, random_state=0).itertuples():
        assert row.mos == D.DISTORTIONS[row.distortion_id].mos_mean[row.level - 1]
    assert set(pairs["level"]) == {1, 2, 3, 4, 5} and pairs["distortion_id"].nunique() == 25


def test_items_contract(tiny_mini):
    ds = robench.load_dataset("mini", split="train", size=32, crops_per_source=1, progress=False)
    item = ds[7]
    assert set(item) >= {"ref", "dist", "mos", "ref_id", "source", "distortion", "level"}
    for k in ("ref", "dist"):
        t = item[k]
        assert t.dtype == torch.float32 and t.shape == (3, 32, 32) and 0 <= t.min() and t.max() <= 1
    row = ds.table.iloc[7]
    assert item["mos"] == pytest.approx(D.get_distortion(row["distortion"]).mos_mean[int(row["level"]) - 1])
    # the stored distorted image is exactly the distortion applied to the stored reference
    ref_u8 = (item["ref"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    again = D.apply(ref_u8, row["distortion_id"], int(row["level"]),
                    seed=np.random.SeedSequence([0, int(row["ref_index"]), int(row["distortion_id"]), int(row["level"])]))
    assert np.array_equal(again, (item["dist"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_splits_disjoint_by_source_and_6_2_2(tiny_mini):
    parts = {s: robench.load_dataset("mini", split=s, size=32, crops_per_source=1, progress=False) for s in ("train", "val", "test")}
    sources = {s: set(d.table["source"]) for s, d in parts.items()}
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"]) and not (sources["val"] & sources["test"])
    n = len(M.SOURCES)
    assert len(sources["train"]) == round(0.6 * n) and len(sources["val"]) == round(0.2 * n)
    assert sum(len(d) for d in parts.values()) == len(robench.load_dataset("mini", split="all", size=32, crops_per_source=1, progress=False))
    info = parts["test"].info()
    assert info["splits_disjoint"] is True


def test_split_assignment_depends_on_seed():
    a = M.assign_splits([s.name for s in M.SOURCES], seed=0)
    b = M.assign_splits([s.name for s in M.SOURCES], seed=1)
    assert a != b and sorted(a.values()) == sorted(b.values())


def test_build_is_deterministic(tmp_path):
    digests = []
    for k in range(2):
        folder = M.build_mini(size=32, crops_per_source=1, seed=5, root=tmp_path / f"b{k}", progress=False, workers=1)
        digests.append(hashlib.sha256((folder / "dists.npy").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_2afc_triplets(tiny_mini):
    ds = robench.load_dataset("mini-2afc", split="all", size=32, crops_per_source=1, progress=False)
    assert ds.kind == "2afc" and len(ds) == 25 * len(M.SOURCES)
    item = ds[3]
    assert set(item) >= {"ref", "p0", "p1", "judge"}
    pairs = ds.pairs.set_index("index")
    for row in ds.table.head(40).itertuples():
        a, b = pairs.loc[row.p0_index], pairs.loc[row.p1_index]
        assert row.p0_index != row.p1_index and a["ref_index"] == b["ref_index"] == row.ref_index
        from math import erf, sqrt

        z = (b["mos"] - a["mos"]) / sqrt(a["mos_std"] ** 2 + b["mos_std"] ** 2)
        assert row.judge == pytest.approx(0.5 * (1 + erf(z / sqrt(2))))
    # splits follow the source split of mini
    tr = robench.load_dataset("mini-2afc", split="train", size=32, crops_per_source=1, progress=False)
    te = robench.load_dataset("mini-2afc", split="test", size=32, crops_per_source=1, progress=False)
    assert not set(tr.table["source"]) & set(te.table["source"])


def test_incomplete_build_is_never_loaded(tmp_path, monkeypatch):
    """An exception mid-build leaves no folder that loads, and the next build succeeds."""
    calls = {"n": 0}
    real = M._distort_reference

    def boom(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(M, "_distort_reference", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        M.build_mini(size=32, crops_per_source=1, root=tmp_path, progress=False, workers=1)
    assert not M._is_complete(M.cache_dir(32, 0, 1, tmp_path))
    assert not list(tmp_path.glob(".build-*"))  # temp folder removed
    monkeypatch.setattr(M, "_distort_reference", real)
    assert M._is_complete(M.build_mini(size=32, crops_per_source=1, root=tmp_path, progress=False, workers=1))


def test_truncated_cache_file_is_rebuilt(tmp_path):
    folder = M.build_mini(size=32, crops_per_source=1, root=tmp_path, progress=False, workers=1)
    with open(folder / "dists.npy", "r+b") as f:
        f.truncate(1000)
    assert not M._is_complete(folder)
    again = M.build_mini(size=32, crops_per_source=1, root=tmp_path, progress=False, workers=1)
    assert M._is_complete(again)


def test_kill_9_during_build_leaves_nothing_loadable(tmp_path):
    code = ("from robench.data.mini import build_mini; "
            f"build_mini(size=64, crops_per_source=2, root={str(tmp_path)!r}, progress=False, workers=1)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".build-*/dists.npy")):
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the build
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = M.cache_dir(64, 0, 2, tmp_path)
    assert not M._is_complete(final)
    assert not final.exists()
    # the next build cleans the dead process's temp folder and completes
    folder = M.build_mini(size=64, crops_per_source=2, root=tmp_path, progress=False, workers=1)
    assert M._is_complete(folder) and not list(tmp_path.glob(".build-*"))


def test_bad_options():
    with pytest.raises(robench.RobenchError, match="size"):
        M.build_mini(size=8, progress=False)
    with pytest.raises(robench.RobenchError, match="unknown split"):
        robench.load_dataset("mini", split="training", size=32, crops_per_source=1, progress=False)


def test_default_mini_via_cli(robench_home):
    """The done-means check: default mini (128 px) through the CLI, with its JSON counts."""
    r = subprocess.run([sys.executable, "-m", "robench.cli", "data", "info", "mini", "--json"],
                       capture_output=True, text=True, env={**os.environ, "ROBENCH_HOME": str(robench_home)})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n_pairs"] >= 5000 and info["n_references"] >= 40 and info["n_sources"] >= 10
    assert info["n_distortions"] == 25 and info["n_levels"] == 5 and info["image_size"] == 128
    assert info["splits_disjoint"] is True and set(info["splits"]) == {"train", "val", "test"}
    assert sum(s["n_pairs"] for s in info["splits"].values()) == info["n_pairs"]
    assert "KADID-10k" in info["label_source"]
