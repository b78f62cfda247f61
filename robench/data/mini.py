"""The built-in offline dataset ``mini`` and its 2AFC variant ``mini-2afc``.

References are crops of 22 natural colour photographs committed, downscaled, inside the package
(``robench/data/photos/``; public domain, CC0, CC-BY and CC-BY-SA, credited in ``NOTICE``), so the
set builds on a machine with no internet. ``photos/manifest.json`` lists each photo's origin
(Debian package or PyPI wheel + version + path), the sha256 of the original and of the committed
copy, licence, author and processing; ``scripts/make_mini_photos.py`` regenerates them from the
originals. Every build checks each committed file against its sha256 in the manifest and refuses
a modified one (:class:`~robench.core.errors.IntegrityError`, naming the file).

Build version 2 (``mini-v2-…`` cache folders): v1 used 11 images found in installed wheels,
microscopy and astronomy included, with 2 photos in its test split. v2 splits by photo, seeded:
``N_TEST`` = 10 test and ``N_VAL`` = 5 val photos (the rest, 7, train), the least from which a
photo-clustered bootstrap reports an interval; the crops of one photo are not independent, the
photo is the unit, which is also why the default is 2 crops per photo (v1: 4): 22 × 2 = 44
references and 5500 pairs cost what v1's 11 × 4 did (≈ 25 CPU-seconds at 128 px); 4 crops doubles
the build and the cache (11000 pairs, 520 MB) without adding an independent unit. A cache records
the sha256 of the manifest it was built from and is rebuilt when the manifest changes.
Every reference gets all 25 KADID-10k distortions at their 5 levels
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
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from robench.core.errors import DataError, IntegrityError, RobenchError
from robench.core.fetch import clean_stale_temp, fsync_dir, fsync_file, sha256_file
from robench.core.home import robench_home
from robench.core.progress import progress_bar
from robench.core.registry import DATASETS
from robench.data import distortions as D
from robench.data.base import (
    IQADataset,
    read_rgb,
    select_split,
    thurstone_preference,
    to_tensor,
)

BUILD_VERSION = 2  # bump when the build changes its output for the same options (v2: the committed photos)
DEFAULT_SIZE = 128
DEFAULT_CROPS = 2
N_TEST = 10  # test photos: a photo-clustered bootstrap needs >= 10 independent units
N_VAL = 5  # val photos (model selection); every other photo trains

#: the folder of the committed photos and their manifest.json (module-level so tests can point it elsewhere)
PHOTOS_DIR = Path(__file__).with_name("photos")
#: licences a committed photo may carry (SPDX ids; LicenseRef-PublicDomain for public domain)
ALLOWED_LICENCES = frozenset(
    {
        "LicenseRef-PublicDomain",
        "CC0-1.0",
        "CC-BY-2.0",
        "CC-BY-3.0",
        "CC-BY-4.0",
        "CC-BY-SA-2.0",
        "CC-BY-SA-3.0",
        "CC-BY-SA-4.0",
    }
)
_PHOTO_FIELDS = ("id", "file", "sha256", "origin", "original", "licence", "author", "description", "processing")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Source:
    """One committed source photo (an entry of ``photos/manifest.json``)."""

    name: str  # the photo id: the ``source`` column of every pair, the split unit
    file: str  # inside the photos folder
    sha256: str  # of the committed file
    licence: str
    author: str
    origin: str  # "<package> <version>:<path inside it>"
    original_sha256: str
    description: str

    def path(self, photos_dir: str | Path | None = None) -> Path:
        return Path(photos_dir if photos_dir is not None else PHOTOS_DIR) / self.file


def manifest_path(photos_dir: str | Path | None = None) -> Path:
    return Path(photos_dir if photos_dir is not None else PHOTOS_DIR) / "manifest.json"


def load_sources(photos_dir: str | Path | None = None) -> tuple[Source, ...]:
    """The committed photos, read from the manifest (checked complete; pixels are not read here)."""
    mpath = manifest_path(photos_dir)
    if not mpath.is_file():
        raise DataError(
            f"the built-in photos' manifest is missing: {mpath} (reinstall robench; the photos ship "
            f"in robench/data/photos/)"
        )
    try:
        entries = json.loads(mpath.read_text())["photos"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"unreadable manifest {mpath}: {exc}") from None
    out, seen = [], set()
    for k, e in enumerate(entries):
        missing = [f for f in _PHOTO_FIELDS if not e.get(f)] if isinstance(e, dict) else list(_PHOTO_FIELDS)
        if missing:
            raise DataError(f"{mpath}: photo #{k} lacks {', '.join(missing)}")
        pid, fname = str(e["id"]), str(e["file"])
        if not _ID.match(pid) or pid in seen:
            raise DataError(f"{mpath}: photo id {pid!r} is {'a duplicate' if pid in seen else 'not a short slug'}")
        if Path(fname).name != fname or fname.startswith("."):
            raise DataError(f"{mpath}: photo {pid!r} file {fname!r} must be a plain name inside {mpath.parent}")
        if e["licence"] not in ALLOWED_LICENCES:
            raise DataError(
                f"{mpath}: photo {pid!r} has licence {e['licence']!r}; allowed: {', '.join(sorted(ALLOWED_LICENCES))}"
            )
        o = e["origin"]
        try:
            origin = f"{o['package']} {o['version']}:{o['path']}"
            original_sha = str(e["original"]["sha256"])
        except (KeyError, TypeError):
            raise DataError(f"{mpath}: photo {pid!r} needs origin.package/version/path and original.sha256") from None
        seen.add(pid)
        out.append(
            Source(
                pid,
                fname,
                str(e["sha256"]),
                str(e["licence"]),
                str(e["author"]),
                origin,
                original_sha,
                str(e["description"]),
            )
        )
    return tuple(out)


def _manifest_digest(photos_dir: str | Path | None = None) -> str:
    p = manifest_path(photos_dir)
    return sha256_file(p) if p.is_file() else ""


def _load_source(src: Source, photos_dir: str | Path | None = None) -> np.ndarray:
    p = src.path(photos_dir)
    if not p.is_file():
        raise DataError(
            f"built-in photo {src.name!r} not found at {p} (reinstall robench; the photos ship in robench/data/photos/)"
        )
    got = sha256_file(p)
    if got != src.sha256:
        raise IntegrityError(
            f"built-in photo {p} does not match its sha256 in {manifest_path(photos_dir)} "
            f"(expected {src.sha256}, got {got}): the file was modified; reinstall robench or "
            f"regenerate the photos with scripts/make_mini_photos.py"
        )
    return read_rgb(p)


def assign_photo_splits(
    names: list[str] | tuple[str, ...], seed: int = 0, n_val: int = N_VAL, n_test: int = N_TEST
) -> dict[str, str]:
    """Map each source photo to ``train``/``val``/``test``: a seeded permutation of the sorted ids
    (``numpy.random.default_rng(seed)``), the first ``len − n_val − n_test`` train, the next
    ``n_val`` val, the last ``n_test`` test. Fixed counts, not ratios (``base.assign_splits``'s
    6:2:2 would give 22 photos only 4 test photos): the photo is the independent unit."""
    uniq = sorted(set(names))
    if len(uniq) < n_val + n_test + 1:
        raise DataError(
            f"mini needs at least {n_val + n_test + 1} source photos for {n_test} test and {n_val} val "
            f"photos, has {len(uniq)}"
        )
    n_train = len(uniq) - n_val - n_test
    order = np.random.default_rng(seed).permutation(len(uniq))
    return {
        uniq[i]: "train" if r < n_train else ("val" if r < n_train + n_val else "test") for r, i in enumerate(order)
    }


def sources_per_split(split_of: dict[str, str]) -> dict[str, list[str]]:
    return {s: sorted(k for k, v in split_of.items() if v == s) for s in ("train", "val", "test")}


def crop_references(img: np.ndarray, size: int, n: int) -> list[tuple[int, int, np.ndarray]]:
    """Rescale so the short side is ``2·size`` (a crop then shows about a quarter of the scene,
    like a KADID reference shows a whole scene at 512×384), then take the ``n`` non-overlapping
    grid crops with the most luminance detail (flat sky or background is skipped)."""
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


def cache_dir(
    size: int = DEFAULT_SIZE, seed: int = 0, crops_per_source: int = DEFAULT_CROPS, root: str | Path | None = None
) -> Path:
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


def build_mini(
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    crops_per_source: int = DEFAULT_CROPS,
    root: str | Path | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build (or find) the cached ``mini`` set and return its folder."""
    if size < 32:
        raise RobenchError(f"mini image size must be >= 32 px, got {size}")
    if crops_per_source < 1:
        raise RobenchError(f"crops_per_source must be >= 1, got {crops_per_source}")
    final = cache_dir(size, seed, crops_per_source, root)
    sources_ = load_sources()
    digest = _manifest_digest()
    if _is_complete(final) and not force and _built_from(final) == digest:
        return final  # a cache built from other photos (a regenerated manifest) is rebuilt
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(final.parent)
    tmp = final.parent / f".build-{final.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        refs, rows, sources = [], [], []
        split_of = assign_photo_splits([s.name for s in sources_], seed=seed)
        for src in sources_:
            img = _load_source(src)  # checks the committed file's sha256
            sources.append(
                {
                    "name": src.name,
                    "file": f"photos/{src.file}",
                    "sha256": src.sha256,
                    "licence": src.licence,
                    "author": src.author,
                    "origin": src.origin,
                    "original_sha256": src.original_sha256,
                    "height": img.shape[0],
                    "width": img.shape[1],
                    "split": split_of[src.name],
                }
            )
            for j, (y, x, crop) in enumerate(crop_references(img, size, crops_per_source)):
                refs.append(crop)
                rows.append({"ref_id": f"{src.name}_{j}", "source": src.name, "crop_y": y, "crop_x": x})
        ref_arr = np.stack(refs)
        n_cells = len(D.DISTORTIONS) * 5
        dists = np.lib.format.open_memmap(
            tmp / "dists.npy", mode="w+", dtype=np.uint8, shape=(len(refs) * n_cells, size, size, 3)
        )
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
                    pairs.append(
                        {
                            "index": len(pairs),
                            "ref_index": r,
                            "ref_id": row["ref_id"],
                            "source": row["source"],
                            "distortion": d.name,
                            "distortion_id": tid,
                            "level": level,
                            "mos": d.mos_mean[level - 1],
                            "mos_std": d.mos_std[level - 1],
                            "split": split_of[row["source"]],
                        }
                    )
        pd.DataFrame(pairs).to_csv(tmp / "pairs.csv", index=False)
        pd.DataFrame(rows).assign(split=[split_of[r["source"]] for r in rows]).to_csv(
            tmp / "references.csv", index=False
        )
        files = {f: (tmp / f).stat().st_size for f in ("refs.npy", "dists.npy", "pairs.csv", "references.csv")}
        meta = {
            "name": "mini",
            "build_version": BUILD_VERSION,
            "size": size,
            "seed": seed,
            "crops_per_source": crops_per_source,
            "n_pairs": len(pairs),
            "n_references": len(refs),
            "n_sources": len(sources_),
            "sources": sources,
            "splits": split_of,
            "sources_per_split": sources_per_split(split_of),
            "photos_manifest_sha256": digest,
            "split_rule": f"seeded by photo: {N_TEST} test, {N_VAL} val, the rest train (assign_photo_splits)",
            "label_source": D.PROVENANCE,
            "build_seconds": round(time.perf_counter() - t0, 2),
            "robench_version": _version(),
            "files": files,
            "complete": True,
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


def _built_from(folder: Path) -> str | None:
    """The sha256 of the photo manifest a complete cache was built from."""
    try:
        return json.loads((folder / "meta.json").read_text()).get("photos_manifest_sha256")
    except (OSError, ValueError):
        return None


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

    def content_version(self) -> str:
        return f"{self.folder.name}:{(self.meta.get('photos_manifest_sha256') or '')[:16]}"

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(
            {
                "image_size": self.meta["size"],
                "seed": self.meta["seed"],
                "label_source": self.meta["label_source"],
                "cache": str(self.folder),
                "build_version": self.meta["build_version"],
                "cache_key": self.folder.name,
                "build_seconds": self.meta["build_seconds"],
                "sources": [s["name"] for s in self.meta["sources"]],
                "sources_per_split": self._sources_per_split(),
                "photos_manifest_sha256": self.meta.get("photos_manifest_sha256"),
            }
        )
        return out

    def _sources_per_split(self) -> dict[str, dict[str, Any]]:
        """The photo ids (and their count) of each split present in this view's rows."""
        t = self.table
        out = {}
        for s in self.splits:
            ids = sorted(set(t.loc[t["split"] == s, "source"])) if len(t) else []
            if ids:
                out[s] = {"n_sources": len(ids), "sources": ids}
        return out


@DATASETS.register(
    "mini",
    summary="built-in offline set: 22 committed natural photos × crops × 25 KADID distortions × "
    "5 levels, labelled with KADID-10k cell MOS; split by photo 7/5/10",
)
class Mini(_MiniBase):
    """Built-in offline FR-IQA set (pairs)."""

    default = True  # the offline default: no download, no dataset root

    def __init__(
        self,
        split: str = "train",
        size: int = DEFAULT_SIZE,
        seed: int = 0,
        crops_per_source: int = DEFAULT_CROPS,
        root: str | Path | None = None,
        progress: bool = True,
    ):
        self._open(size, seed, crops_per_source, root, progress)
        self.split = split
        self.table = select_split(self.pairs, split, self.splits)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        return {
            "ref": to_tensor(self.refs[int(row["ref_index"])]),
            "dist": to_tensor(self.dists[int(row["index"])]),
            "mos": float(row["mos"]),
            "mos_raw": float(row["mos"]),
            "ref_id": row["ref_id"],
            "source": row["source"],
            "distortion": row["distortion"],
            "level": int(row["level"]),
        }


@DATASETS.register(
    "mini-2afc",
    summary="2AFC triplets from two distortions of one mini reference; judge from the "
    "Thurstone model on the cells' KADID MOS mean/std",
)
class Mini2AFC(_MiniBase):
    """Built-in offline 2AFC set: (ref, p0, p1, judge) with judge = fraction preferring p1."""

    kind = "2afc"
    training_set = "mini"  # its targets train on the pairs of the same photos
    label_name = "fraction preferring p1 (Thurstone case V on KADID cell MOS)"
    label_direction = "—"

    def __init__(
        self,
        split: str = "train",
        size: int = DEFAULT_SIZE,
        seed: int = 0,
        crops_per_source: int = DEFAULT_CROPS,
        triplets_per_reference: int = 25,
        root: str | Path | None = None,
        progress: bool = True,
    ):
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
                rows.append(
                    {
                        "ref_index": int(ref_index),
                        "p0_index": int(p0["index"]),
                        "p1_index": int(p1["index"]),
                        "judge": judge,
                        "ref_id": p0["ref_id"],
                        "source": p0["source"],
                        "distortion": f"{p0['distortion']}:{p0['level']}|{p1['distortion']}:{p1['level']}",
                        "split": p0["split"],
                    }
                )
        return pd.DataFrame(rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        return {
            "ref": to_tensor(self.refs[int(row["ref_index"])]),
            "p0": to_tensor(self.dists[int(row["p0_index"])]),
            "p1": to_tensor(self.dists[int(row["p1_index"])]),
            "judge": float(row["judge"]),
            "ref_id": row["ref_id"],
            "source": row["source"],
            "distortion": row["distortion"],
        }
