"""The built-in offline dataset ``mini`` and its 2AFC variant ``mini-2afc``.

References are crops of natural colour photographs that ship inside packages robench already
installs (scikit-image, scikit-learn, matplotlib), so the set builds on a machine with no
internet. Every reference gets all 25 KADID-10k distortions at their 5 levels
(:mod:`robench.data.distortions`) and each pair is labelled with the KADID-10k mean MOS of its
(type, level) cell. On KADID-10k itself that content-blind label reaches SROCC 0.942 against
the per-image MOS (``shared/paper/datasets.md``), so it is a human-derived, if coarse, target.

Why 128×128 by default (the ``quick`` profile size): a 2-core CPU must build the set in
minutes and train/attack models on it in minutes; 128 px keeps the four-level BiRQA pyramid
meaningful (128→16 px) while a PGD step costs ~1/12 of a 512×384 KADID image.

The build is cached under ``$ROBENCH_HOME/datasets/`` keyed by its options and written
atomically: it is assembled in a temporary folder and renamed into place only when complete,
so a killed build leaves nothing that loads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from robench.data import distortions as D
from robench.data.base import IQADataset, assign_splits, select_split, thurstone_preference, to_tensor
from robench.core.fetch import clean_stale_temp, fsync_dir, fsync_file, sha256_file
from robench.core.errors import DataError, RobenchError
from robench.core.home import robench_home
from robench.core.progress import progress_bar
from robench.core.registry import DATASETS

BUILD_VERSION = 1  # bump when the build changes its output for the same options
DEFAULT_SIZE = 128
DEFAULT_CROPS = 4


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    relpath: str  # inside the package folder

    def path(self) -> Path:
        import importlib

        if self.package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / self.relpath
        mod = importlib.import_module(self.package)
        return Path(mod.__file__).parent / self.relpath


# Natural colour photographs shipped inside installed wheels (no download). motorcycle_right
# is left out: it is the same scene as motorcycle_left and would leak content across splits.
SOURCES: tuple[Source, ...] = (
    Source("astronaut", "skimage", "data/astronaut.png"),
    Source("chelsea", "skimage", "data/chelsea.png"),
    Source("coffee", "skimage", "data/coffee.png"),
    Source("rocket", "skimage", "data/rocket.jpg"),
    Source("motorcycle", "skimage", "data/motorcycle_left.png"),
    Source("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    Source("retina", "skimage", "data/retina.jpg"),
    Source("ihc", "skimage", "data/ihc.png"),
    Source("china", "sklearn", "datasets/images/china.jpg"),
    Source("flower", "sklearn", "datasets/images/flower.jpg"),
    Source("grace_hopper", "matplotlib", "sample_data/grace_hopper.jpg"),
)


def _load_source(src: Source) -> np.ndarray:
    p = src.path()
    if not p.is_file():
        raise DataError(f"built-in source image {src.name!r} not found at {p} (is {src.package} installed?)")
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def crop_references(img: np.ndarray, size: int, n: int) -> list[tuple[int, int, np.ndarray]]:
    """Rescale so the short side is ``2·size`` (a crop then shows about a quarter of the scene,
    like a KADID reference shows a whole scene at 512×384), then take the ``n`` non-overlapping
    grid crops with the most luminance detail (flat black borders of retina/hubble are skipped)."""
    h, w, _ = img.shape
    scale = 2 * size / min(h, w)
    if abs(scale - 1.0) > 1e-6:
        nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.LANCZOS))
    h, w, _ = img.shape
    lum = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    cands = []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            cands.append((float(lum[y : y + size, x : x + size].std()), y, x))
    if len(cands) < n:
        raise DataError(f"source too small for {n} crops of {size}px")
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(y, x, img[y : y + size, x : x + size].copy()) for _, y, x in cands[:n]]


def _distort_reference(args: tuple[np.ndarray, int, int]) -> np.ndarray:
    ref, ref_index, seed = args
    out = np.empty((len(D.DISTORTIONS) * 5, *ref.shape), dtype=np.uint8)
    k = 0
    for tid in sorted(D.DISTORTIONS):
        for level in range(1, 6):
            out[k] = D.apply(ref, tid, level, seed=np.random.SeedSequence([seed, ref_index, tid, level]))
            k += 1
    return out


def cache_key(size: int, seed: int, crops_per_source: int) -> str:
    return f"mini-v{BUILD_VERSION}-{size}px-{crops_per_source}crops-seed{seed}"


def cache_dir(size: int = DEFAULT_SIZE, seed: int = 0, crops_per_source: int = DEFAULT_CROPS,
              root: str | Path | None = None) -> Path:
    base = Path(root) if root is not None else robench_home() / "datasets"
    return base / cache_key(size, seed, crops_per_source)


def _is_complete(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    for fname, nbytes in m.get("files", {}).items():
        p = folder / fname
        if not p.is_file() or p.stat().st_size != nbytes:
            return False
    return bool(m.get("complete"))


def build_mini(size: int = DEFAULT_SIZE, seed: int = 0, crops_per_source: int = DEFAULT_CROPS,
               root: str | Path | None = None, workers: int | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Build (or find) the cached ``mini`` set and return its folder."""
    if size < 32:
        raise RobenchError(f"mini image size must be >= 32 px, got {size}")
    if crops_per_source < 1:
        raise RobenchError(f"crops_per_source must be >= 1, got {crops_per_source}")
    final = cache_dir(size, seed, crops_per_source, root)
    if _is_complete(final) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(final.parent)
    tmp = final.parent / f".build-{final.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        refs, rows, sources = [], [], []
        for src in SOURCES:
            img = _load_source(src)
            sources.append({"name": src.name, "package": src.package, "file": src.relpath,
                            "sha256": sha256_file(src.path()), "height": img.shape[0], "width": img.shape[1]})
            for j, (y, x, crop) in enumerate(crop_references(img, size, crops_per_source)):
                refs.append(crop)
                rows.append({"ref_id": f"{src.name}_{j}", "source": src.name, "crop_y": y, "crop_x": x})
        ref_arr = np.stack(refs)
        split_of = assign_splits([s.name for s in SOURCES], seed=seed)
        n_cells = len(D.DISTORTIONS) * 5
        dists = np.lib.format.open_memmap(tmp / "dists.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(refs) * n_cells, size, size, 3))
        jobs = [(ref_arr[i], i, seed) for i in range(len(refs))]
        workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
        with progress_bar(progress) as bar:
            task = bar.add_task(f"building mini ({len(jobs) * n_cells} pairs)", total=len(jobs)) if bar else None
            if workers > 1:
                with ProcessPoolExecutor(max_workers=workers) as ex:
                    for i, block in enumerate(ex.map(_distort_reference, jobs)):
                        dists[i * n_cells : (i + 1) * n_cells] = block
                        if bar:
                            bar.advance(task)
            else:
                for i, job in enumerate(jobs):
                    dists[i * n_cells : (i + 1) * n_cells] = _distort_reference(job)
                    if bar:
                        bar.advance(task)
        dists.flush()
        del dists
        np.save(tmp / "refs.npy", ref_arr)
        pairs = []
        for r, row in enumerate(rows):
            for tid in sorted(D.DISTORTIONS):
                d = D.DISTORTIONS[tid]
                for level in range(1, 6):
                    pairs.append({"index": len(pairs), "ref_index": r, "ref_id": row["ref_id"], "source": row["source"],
                                  "distortion": d.name, "distortion_id": tid, "level": level,
                                  "mos": d.mos_mean[level - 1], "mos_std": d.mos_std[level - 1],
                                  "split": split_of[row["source"]]})
        pd.DataFrame(pairs).to_csv(tmp / "pairs.csv", index=False)
        pd.DataFrame(rows).assign(split=[split_of[r["source"]] for r in rows]).to_csv(tmp / "references.csv", index=False)
        files = {f: (tmp / f).stat().st_size for f in ("refs.npy", "dists.npy", "pairs.csv", "references.csv")}
        meta = {
            "name": "mini", "build_version": BUILD_VERSION, "size": size, "seed": seed,
            "crops_per_source": crops_per_source, "n_pairs": len(pairs), "n_references": len(refs),
            "n_sources": len(SOURCES), "sources": sources, "splits": split_of,
            "label_source": D.PROVENANCE, "build_seconds": round(time.perf_counter() - t0, 2),
            "robench_version": _version(), "files": files, "complete": True,
        }
        # meta.json is written last: its presence (with matching file sizes) marks completeness.
        # Everything is on disk before the rename, so even a power cut cannot expose a half file.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for f in (*files, "meta.json"):
            fsync_file(tmp / f)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)  # incomplete leftover or --force
        try:
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError:
            if not _is_complete(final):  # another process won the race with a complete build? keep it
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _clean_stale(folder: Path) -> None:
    """Remove build folders of processes that no longer exist (a killed build)."""
    clean_stale_temp(folder, ".build-")


def _version() -> str:
    from robench.core.version import __version__

    return __version__


class _MiniBase(IQADataset):
    label_name = "KADID-10k cell mean MOS"
    label_direction = "higher is better"
    test_options: dict = {"size": 32, "crops_per_source": 1}

    @classmethod
    def profile_options(cls, profile) -> dict:
        return {"size": int(profile.image_size)}  # quick 128 px, paper 512 px

    def _open(self, size: int, seed: int, crops_per_source: int, root: str | Path | None, progress: bool) -> None:
        self.folder = build_mini(size=size, seed=seed, crops_per_source=crops_per_source, root=root, progress=progress)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.refs = np.load(self.folder / "refs.npy", mmap_mode="r")
        self.dists = np.load(self.folder / "dists.npy", mmap_mode="r")
        self.pairs = pd.read_csv(self.folder / "pairs.csv")
        self.options = {"size": size, "seed": seed, "crops_per_source": crops_per_source}

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update({"image_size": self.meta["size"], "seed": self.meta["seed"], "label_source": self.meta["label_source"],
                    "cache": str(self.folder), "build_seconds": self.meta["build_seconds"],
                    "sources": [s["name"] for s in self.meta["sources"]]})
        return out


@DATASETS.register("mini", summary="built-in offline set: 11 packaged photos × crops × 25 KADID distortions × 5 levels, "
                                   "labelled with KADID-10k cell MOS")
class Mini(_MiniBase):
    """Built-in offline FR-IQA set (pairs)."""

    name = "mini"
    default = True  # the offline default: no download, no dataset root

    def __init__(self, split: str = "train", size: int = DEFAULT_SIZE, seed: int = 0,
                 crops_per_source: int = DEFAULT_CROPS, root: str | Path | None = None, progress: bool = True):
        self._open(size, seed, crops_per_source, root, progress)
        self.split = split
        self.table = select_split(self.pairs, split, self.splits)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        return {
            "ref": to_tensor(self.refs[int(row["ref_index"])]), "dist": to_tensor(self.dists[int(row["index"])]),
            "mos": float(row["mos"]), "mos_raw": float(row["mos"]), "ref_id": row["ref_id"], "source": row["source"],
            "distortion": row["distortion"], "level": int(row["level"]),
        }


@DATASETS.register("mini-2afc", summary="2AFC triplets from two distortions of one mini reference; judge from the "
                                        "Thurstone model on the cells' KADID MOS mean/std")
class Mini2AFC(_MiniBase):
    """Built-in offline 2AFC set: (ref, p0, p1, judge) with judge = fraction preferring p1."""

    name = "mini-2afc"
    kind = "2afc"
    training_set = "mini"  # its targets train on the pairs of the same photos
    label_name = "fraction preferring p1 (Thurstone case V on KADID cell MOS)"
    label_direction = "—"

    def __init__(self, split: str = "train", size: int = DEFAULT_SIZE, seed: int = 0,
                 crops_per_source: int = DEFAULT_CROPS, triplets_per_reference: int = 25,
                 root: str | Path | None = None, progress: bool = True):
        self._open(size, seed, crops_per_source, root, progress)
        self.split = split
        self.table = select_split(self._triplets(triplets_per_reference, seed), split, self.splits)

    def _triplets(self, per_ref: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        rows = []
        for ref_index, g in self.pairs.groupby("ref_index", sort=True):
            g = g.reset_index(drop=True)
            for _ in range(per_ref):
                a, b = rng.choice(len(g), size=2, replace=False)  # two different cells
                p0, p1 = g.iloc[a], g.iloc[b]
                judge = float(thurstone_preference(p0["mos"], p0["mos_std"], p1["mos"], p1["mos_std"]))
                rows.append({"ref_index": int(ref_index), "p0_index": int(p0["index"]), "p1_index": int(p1["index"]),
                             "judge": judge, "ref_id": p0["ref_id"], "source": p0["source"],
                             "distortion": f"{p0['distortion']}:{p0['level']}|{p1['distortion']}:{p1['level']}",
                             "split": p0["split"]})
        return pd.DataFrame(rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        return {
            "ref": to_tensor(self.refs[int(row["ref_index"])]), "p0": to_tensor(self.dists[int(row["p0_index"])]),
            "p1": to_tensor(self.dists[int(row["p1_index"])]), "judge": float(row["judge"]),
            "ref_id": row["ref_id"], "source": row["source"], "distortion": row["distortion"],
        }
