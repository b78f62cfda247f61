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
from robench.core.errors import IntegrityError
from robench.data import distortions as D
from robench.data import mini as M


def test_tiny_build_counts_and_labels(tiny_mini):
    meta = json.loads((tiny_mini / "meta.json").read_text())
    assert meta["build_version"] == M.BUILD_VERSION == 2
    assert meta["n_sources"] == len(M.load_sources()) == 22
    assert meta["n_references"] == meta["n_sources"]  # one crop each
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
    again = D.apply(
        ref_u8,
        row["distortion_id"],
        int(row["level"]),
        seed=np.random.SeedSequence([0, int(row["ref_index"]), int(row["distortion_id"]), int(row["level"])]),
    )
    assert np.array_equal(again, (item["dist"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_splits_disjoint_by_photo_with_10_test_and_5_val(tiny_mini):
    parts = {
        s: robench.load_dataset("mini", split=s, size=32, crops_per_source=1, progress=False)
        for s in ("train", "val", "test")
    }
    sources = {s: set(d.table["source"]) for s, d in parts.items()}
    assert (
        not (sources["train"] & sources["val"])
        and not (sources["train"] & sources["test"])
        and not (sources["val"] & sources["test"])
    )
    n = len(M.load_sources())
    assert n >= 20
    assert len(sources["test"]) == M.N_TEST >= 10 and len(sources["val"]) == M.N_VAL >= 5
    assert len(sources["train"]) == n - 15 == 7
    assert sources["train"] | sources["val"] | sources["test"] == {s.name for s in M.load_sources()}
    assert sum(len(d) for d in parts.values()) == len(
        robench.load_dataset("mini", split="all", size=32, crops_per_source=1, progress=False)
    )
    info = parts["test"].info()
    assert info["splits_disjoint"] is True
    assert info["sources_per_split"] == {"test": {"n_sources": 10, "sources": sorted(sources["test"])}}
    meta = json.loads((tiny_mini / "meta.json").read_text())
    assert {s: set(v) for s, v in meta["sources_per_split"].items()} == sources
    assert all(src["split"] == meta["splits"][src["name"]] for src in meta["sources"])


def test_split_assignment_is_seeded_by_photo():
    names = [s.name for s in M.load_sources()]
    a = M.assign_photo_splits(names, seed=0)
    assert a == M.assign_photo_splits(list(reversed(names)), seed=0)  # order of the manifest does not matter
    b = M.assign_photo_splits(names, seed=1)
    assert a != b and sorted(a.values()) == sorted(b.values())
    assert sorted(a.values()).count("test") == 10 and sorted(a.values()).count("val") == 5
    with pytest.raises(robench.RobenchError, match="at least 16 source photos"):
        M.assign_photo_splits(names[:15])


def test_build_is_deterministic(tmp_path):
    digests = []
    for k in range(2):
        folder = M.build_mini(size=32, crops_per_source=1, seed=5, root=tmp_path / f"b{k}", progress=False, workers=1)
        digests.append(hashlib.sha256((folder / "dists.npy").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_2afc_triplets(tiny_mini):
    ds = robench.load_dataset("mini-2afc", split="all", size=32, crops_per_source=1, progress=False)
    assert ds.kind == "2afc" and len(ds) == 25 * len(M.load_sources())
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
    code = (
        "from robench.data.mini import build_mini; "
        f"build_mini(size=64, crops_per_source=2, root={str(tmp_path)!r}, progress=False, workers=1)"
    )
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
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "info", "mini", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ROBENCH_HOME": str(robench_home)},
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n_pairs"] >= 5000 and info["n_references"] >= 40 and info["n_sources"] >= 20
    assert info["build_version"] == 2 and info["cache_key"] == f"mini-v2-128px-{M.DEFAULT_CROPS}crops-seed0"
    per = info["sources_per_split"]
    assert set(per) == {"train", "val", "test"} and per["test"]["n_sources"] >= 10 and per["val"]["n_sources"] >= 5
    assert all(d["n_sources"] == len(d["sources"]) == info["splits"][s]["n_sources"] for s, d in per.items())
    assert sum(d["n_sources"] for d in per.values()) == info["n_sources"]
    assert info["n_distortions"] == 25 and info["n_levels"] == 5 and info["image_size"] == 128
    assert info["splits_disjoint"] is True and set(info["splits"]) == {"train", "val", "test"}
    assert sum(s["n_pairs"] for s in info["splits"].values()) == info["n_pairs"]
    assert "KADID-10k" in info["label_source"]


# ---------------------------------------------------------------------------------------------
# v2: the committed photos, their manifest and licences

PHOTOS = M.PHOTOS_DIR
ROOT = PHOTOS.parents[2]


def _manifest() -> dict:
    return json.loads((PHOTOS / "manifest.json").read_text())


def test_manifest_complete_and_matches_committed_files():
    from PIL import Image

    m = _manifest()
    photos = m["photos"]
    assert len(photos) == m["n_photos"] >= 20 and len({p["id"] for p in photos}) == len(photos)
    listed = {p["file"] for p in photos}
    on_disk = {f.name for f in PHOTOS.iterdir() if f.name != "manifest.json"}
    assert on_disk == listed  # no unlisted image ships
    total = 0
    for p in photos:
        assert p["licence"] in M.ALLOWED_LICENCES, p["id"]
        assert not any(bad in p["licence"].upper() for bad in ("GPL", "GFDL", "UNKNOWN", "NOASSERTION"))
        assert p["author"].strip() and p["credit"].strip() and p["description"].strip() and p["processing"].strip()
        o = p["origin"]
        assert o["kind"] in ("debian", "pypi") and o["package"] and o["version"] and o["path"]
        assert len(p["original"]["sha256"]) == 64 and p["original"]["bytes"] > 0 and p["original"]["width"] > 0
        data = (PHOTOS / p["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"], p["file"]
        total += len(data)
        with Image.open(PHOTOS / p["file"]) as im:
            assert im.mode == "RGB" and (im.width, im.height) == (p["width"], p["height"])
            assert min(im.size) <= 512 and max(im.size) <= 1.5 * min(im.size) + 1
    assert total == m["total_bytes"] <= 12 * 2**20
    # natural photos only: none of v1's microscopy/astronomy images, nothing without a stated licence
    assert not listed & {"retina.png", "ihc.png", "hubble_deep_field.png", "grace_hopper.png", "motorcycle.png"}


def test_notice_credits_every_photo():
    notice = (ROOT / "NOTICE").read_text()
    assert "remain CC-BY-SA" in notice
    for p in _manifest()["photos"]:
        block = notice.split(f"* {p['file']}:", 1)
        assert len(block) == 2, p["file"]
        entry = block[1].split("\n* ", 1)[0]
        assert p["author"] in entry and p["licence"] in entry and p["origin"]["path"] in entry
        assert ("remains CC-BY-SA" in entry) == ("SA" in p["licence"])


def test_generator_script_agrees_with_manifest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_mini_photos", ROOT / "scripts" / "make_mini_photos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = {r[0]: r for r in mod.PHOTOS}
    for p in _manifest()["photos"]:
        _, (kind, pkg, ver), rel, sha, lic, author, *_ = rows[p["id"]]
        assert (kind, pkg, ver, rel) == (
            p["origin"]["kind"],
            p["origin"]["package"],
            p["origin"]["version"],
            p["origin"]["path"],
        )
        assert (sha, lic, author) == (p["original"]["sha256"], p["licence"], p["author"])
    assert len(rows) == len(_manifest()["photos"])


def _copy_photos(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "photos"
    shutil.copytree(PHOTOS, copy)
    monkeypatch.setattr(M, "PHOTOS_DIR", copy)
    return copy


def test_tampered_photo_is_refused(tmp_path, monkeypatch):
    copy = _copy_photos(tmp_path, monkeypatch)
    victim = copy / _manifest()["photos"][3]["file"]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(robench.RobenchError, match=f"built-in photo .*{victim.name} does not match its sha256") as exc:
        M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1)
    assert isinstance(exc.value, IntegrityError)
    assert not M._is_complete(M.cache_dir(32, 0, 1, tmp_path / "ds")) and not list((tmp_path / "ds").glob(".build-*"))
    victim.unlink()
    with pytest.raises(robench.RobenchError, match=f"built-in photo .* not found at .*{victim.name}"):
        M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["photos"][0].update(licence="GPL-2.0-or-later"), "licence 'GPL-2.0-or-later'"),
        (lambda m: m["photos"][1].pop("author"), "lacks author"),
        (lambda m: m["photos"][2].update(file="../../evil.png"), "plain name"),
        (lambda m: m["photos"][2].update(id=m["photos"][3]["id"]), "duplicate"),
    ],
)
def test_bad_manifest_is_refused(tmp_path, monkeypatch, edit, message):
    copy = _copy_photos(tmp_path, monkeypatch)
    m = _manifest()
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(robench.RobenchError, match=message):
        M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1)


def test_version_2_in_cache_key_and_info(tiny_mini):
    assert M.cache_key(128, 0, 4) == "mini-v2-128px-4crops-seed0"
    assert M.cache_dir(32, 0, 1).name == tiny_mini.name == "mini-v2-32px-1crops-seed0"
    info = robench.load_dataset("mini", split="all", size=32, crops_per_source=1, progress=False).info()
    assert info["build_version"] == 2 and info["cache_key"].startswith("mini-v2-")
    meta = json.loads((tiny_mini / "meta.json").read_text())
    assert meta["photos_manifest_sha256"] == hashlib.sha256((PHOTOS / "manifest.json").read_bytes()).hexdigest()
    assert {s["name"]: s["sha256"] for s in meta["sources"]} == {p["id"]: p["sha256"] for p in _manifest()["photos"]}


def test_cache_built_from_other_photos_is_rebuilt(tmp_path, monkeypatch):
    copy = _copy_photos(tmp_path, monkeypatch)
    first = M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1)
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp  # a cache hit
    m = _manifest()
    m["photos"][0]["description"] += " (edited)"
    (copy / "manifest.json").write_text(json.dumps(m))
    again = M.build_mini(size=32, crops_per_source=1, root=tmp_path / "ds", progress=False, workers=1)
    meta = json.loads((again / "meta.json").read_text())
    assert (
        again == first
        and meta["photos_manifest_sha256"] == hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    )


def test_data_info_text_lists_sources_per_split(robench_home):
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "info", "mini", "--size", "32"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ROBENCH_HOME": str(robench_home), "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "sources train (7)" in r.stdout and "sources val (5)" in r.stdout and "sources test (10)" in r.stdout
    test_ids = M.sources_per_split(M.assign_photo_splits([s.name for s in M.load_sources()], seed=0))["test"]
    line = next(ln for ln in r.stdout.splitlines() if "sources test (10)" in ln)
    assert all(pid in line for pid in test_ids)
