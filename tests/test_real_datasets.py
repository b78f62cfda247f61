from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import layouts as L
import robench
from robench.core.errors import DataError, RobenchError


def _load(name, root, split="all", **kw):
    return robench.load_dataset(name, split=split, root=root, **kw)


def _check_pairs(ds, expect):
    assert ds.kind == "pairs"
    assert len(ds) == expect["n"]
    assert ds.table["ref_id"].nunique() == expect["refs"]
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["ref"].shape == item["dist"].shape and item["ref"].dtype == torch.float32
        assert 0 <= float(item["dist"].min()) and float(item["dist"].max()) <= 1


def _check_splits(name, root, expect_total):
    parts = {s: _load(name, root, split=s) for s in ("train", "val", "test")}
    refs = {s: set(p.table["ref_id"]) for s, p in parts.items()}
    assert all(refs.values()), "every split non-empty"
    assert not (refs["train"] & refs["val"] or refs["train"] & refs["test"] or refs["val"] & refs["test"])
    assert sum(len(p) for p in parts.values()) == expect_total
    # seeded: the same seed gives the same split, another seed may not
    again = _load(name, root, split="test")
    assert list(again.table["dist_path"]) == list(parts["test"].table["dist_path"])


def test_kadid(tmp_path):
    e = L.make_kadid(tmp_path)
    ds = _load("kadid10k", tmp_path)  # root is the parent of kadid10k/: the layout is found
    _check_pairs(ds, e)
    for row in ds.table.itertuples():
        assert row.mos == pytest.approx(e["labels"][Path(row.dist_path).name])  # higher is better: unchanged
    assert set(ds.table["level"]) == {1, 2}
    _check_splits("kadid10k", tmp_path, e["n"])


def test_tid2013_case_insensitive_reference(tmp_path):
    e = L.make_tid(tmp_path)
    ds = _load("tid2013", tmp_path / "tid2013")
    _check_pairs(ds, e)
    for row in ds.table.itertuples():
        assert row.mos == pytest.approx(e["labels"][Path(row.dist_path).name])
    assert any(Path(p).name == "i05.bmp" for p in ds.table["ref_path"])  # the lower-case reference resolved
    _check_splits("tid2013", tmp_path, e["n"])


def test_live_direction_and_reference_copies(tmp_path):
    e = L.make_live(tmp_path)
    ds = _load("live", tmp_path)
    _check_pairs(ds, e)
    for row in ds.table.itertuples():
        key = f"{Path(row.dist_path).parent.name}/{Path(row.dist_path).name}"
        assert row.mos_raw == pytest.approx(e["labels"][key])
        assert row.mos == pytest.approx(100.0 - e["labels"][key])  # DMOS flipped: higher is better
    assert "jpeg/img1.bmp" not in {f"{Path(p).parent.name}/{Path(p).name}" for p in ds.table["dist_path"]}
    item = ds[0]
    assert item["mos_raw"] == pytest.approx(100.0 - item["mos"])
    _check_splits("live", tmp_path, e["n"])


def test_csiq(tmp_path):
    e = L.make_csiq(tmp_path)
    ds = _load("csiq", tmp_path)
    _check_pairs(ds, e)
    for row in ds.table.itertuples():
        assert row.mos == pytest.approx(1.0 - e["labels"][Path(row.dist_path).name])
    assert set(ds.table["distortion"]) == {"awgn", "jpeg2000", "blur"}
    _check_splits("csiq", tmp_path, e["n"])


def test_pipal(tmp_path):
    e = L.make_pipal(tmp_path)
    ds = _load("pipal", tmp_path)
    _check_pairs(ds, e)
    for row in ds.table.itertuples():
        assert row.mos == pytest.approx(e["labels"][Path(row.dist_path).name])
    _check_splits("pipal", tmp_path, e["n"])


def test_pieapp_official_splits(tmp_path):
    e = L.make_pieapp(tmp_path)
    pairs = _load("pieapp", tmp_path, split="test")
    assert len(pairs) == len(e["pairs"])
    for row in pairs.table.itertuples():
        assert row.mos_raw == pytest.approx(e["pairs"][Path(row.dist_path).name])
        assert row.mos == pytest.approx(-row.mos_raw)  # error flipped
    with pytest.raises(RobenchError, match="unknown split"):
        _load("pieapp", tmp_path, split="train")  # the official train split has no per-image scores
    for split, n in e["triplets"].items():
        tri = _load("pieapp-2afc", tmp_path, split=split)
        assert len(tri) == n and tri.kind == "2afc"
        assert sorted(tri.table["judge"].round(6)) == sorted([0.75, 0.1] * (n // 2))  # 1 − P(prefer A)
        item = tri[0]
        assert set(item) >= {"ref", "p0", "p1", "judge"}
    assert not set(_load("pieapp-2afc", tmp_path, split="train").table["ref_id"]) & set(pairs.table["ref_id"])


def test_bapps(tmp_path):
    e = L.make_bapps(tmp_path)
    for split in ("train", "val"):
        ds = _load("bapps-2afc", tmp_path, split=split)
        assert len(ds) == e["counts"][split]
    val = _load("bapps-2afc", tmp_path, split="test")  # alias of the official val split
    assert len(val) == e["counts"]["val"] and set(val.table["split"]) == {"val"}
    for i in range(len(val)):
        item = val[i]
        assert item["judge"] == pytest.approx(e["judges"][val.table.iloc[i]["ref_id"]])
        assert item["ref"].shape == (3, 8, 8)
    only = _load("bapps-2afc", tmp_path, split="val", categories=["color"])
    assert set(only.table["distortion"]) == {"color"} and len(only) == 3


# ---------------------------------------------------------------------------------------------
# bad input: clear errors naming the file


def test_missing_root_and_wrong_root(tmp_path):
    with pytest.raises(RobenchError, match="needs root"):
        robench.load_dataset("kadid10k", split="test")
    with pytest.raises(DataError, match="does not exist"):
        _load("kadid10k", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="official layout"):
        _load("kadid10k", tmp_path / "empty")


def test_label_row_naming_missing_file(tmp_path):
    e = L.make_kadid(tmp_path)
    victim = e["base"] / "images" / "I02_01_02.png"
    victim.unlink()
    with pytest.raises(DataError, match="I02_01_02.png"):
        _load("kadid10k", tmp_path)


def test_tid_missing_file(tmp_path):
    e = L.make_tid(tmp_path)
    (e["base"] / "distorted_images" / "i03_02_1.bmp").unlink()
    with pytest.raises(DataError, match=r"mos_with_names.txt:\d+ names 'i03_02_1.bmp'"):
        _load("tid2013", tmp_path)


def test_corrupt_image_named_on_read(tmp_path):
    e = L.make_kadid(tmp_path)
    bad = e["base"] / "images" / "I01_02_01.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    ds = _load("kadid10k", tmp_path)
    idx = [i for i, p in enumerate(ds.table["dist_path"]) if p.endswith("I01_02_01.png")][0]
    with pytest.raises(DataError, match="I01_02_01.png"):
        ds[idx]
    with pytest.raises(DataError, match="I01_02_01.png"):
        ds.verify()


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_wrong_channel_count(tmp_path, mode):
    e = L.make_kadid(tmp_path)
    L.img(e["base"] / "images" / "I03.png", 3, mode=mode)
    ds = _load("kadid10k", tmp_path)
    idx = ds.table.index[ds.table["ref_path"].str.endswith("I03.png")][0]
    with pytest.raises(DataError, match=rf"I03.png: expected a 3-channel.*{mode}"):
        ds[idx]


def test_size_mismatch_named(tmp_path):
    e = L.make_kadid(tmp_path)
    L.img(e["base"] / "images" / "I04_01_01.png", 9, size=(10, 10))
    ds = _load("kadid10k", tmp_path)
    idx = ds.table.index[ds.table["dist_path"].str.endswith("I04_01_01.png")][0]
    with pytest.raises(DataError, match="size mismatch.*I04_01_01.png"):
        ds[idx]


def test_nan_label_rejected(tmp_path):
    e = L.make_kadid(tmp_path)
    df = pd.read_csv(e["base"] / "dmos.csv")
    df.loc[3, "dmos"] = np.nan
    df.to_csv(e["base"] / "dmos.csv", index=False)
    with pytest.raises(DataError, match=r"dmos.csv.*not a finite number"):
        _load("kadid10k", tmp_path)


def test_bad_header_rejected(tmp_path):
    e = L.make_kadid(tmp_path)
    (e["base"] / "dmos.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="expected header"):
        _load("kadid10k", tmp_path)


def test_live_count_mismatch(tmp_path):
    e = L.make_live(tmp_path)
    L.img(e["base"] / "wn" / "img3.bmp", 77)  # one image more than dmos.mat describes
    with pytest.raises(DataError, match="dmos.mat has"):
        _load("live", tmp_path)


def test_bapps_judge_must_be_fraction(tmp_path):
    e = L.make_bapps(tmp_path)
    np.save(e["base"] / "val" / "color" / "judge" / "000001.npy", np.array([3.0]))
    ds = _load("bapps-2afc", tmp_path, split="val", categories=["color"])
    with pytest.raises(DataError, match="000001.npy"):
        ds[1]


def test_cli_bad_input_exit_2(tmp_path):
    e = L.make_kadid(tmp_path)
    (e["base"] / "images" / "I05.png").unlink()
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "info", "kadid10k", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "I05.png" in r.stderr and r.stdout == ""


def test_cli_info_and_verify_real(tmp_path):
    L.make_csiq(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "info", "csiq", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n_pairs"] == 30 and info["n_references"] == 5 and info["splits_disjoint"]
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "verify", "csiq", "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["verified"] == 30
