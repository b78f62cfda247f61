"""The Dataset contract shared by the built-in and the real datasets.

Two kinds of item, both with float tensors ``3×H×W`` in [0, 1]:

* ``kind = "pairs"``: ``{"ref", "dist", "mos", "ref_id", "source", "distortion", "level"}``
  (plus ``"mos_raw"``, the label as the dataset states it). ``mos`` is always oriented so
  that higher is better; ``mos_raw`` keeps the original number and direction.
* ``kind = "2afc"``: ``{"ref", "p0", "p1", "judge", "ref_id", "source", "distortion"}`` where
  ``judge`` is the fraction of people preferring ``p1``.

Every dataset exposes its rows (without pixels) as ``dataset.table`` (a pandas DataFrame), so
splits, counts and subsets never touch image files. Splits are by source image: no content is
shared between train, val and test.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from robench.core.errors import DataError, RobenchError

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)


# --------------------------------------------------------------------------------------------
# images


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an 8-bit RGB image as ``H×W×3`` uint8, or raise :class:`DataError` naming the file.

    Palette images are expanded (lossless). Grayscale, alpha, 16-bit and other modes are refused
    rather than silently converted: an IQA label was given for the image as stored. So is an image
    whose header claims more than 2× ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing image file: {path}")
    try:
        with Image.open(path) as im:
            # PIL reads a 48-bit RGB PNG as mode "RGB", silently keeping the high byte: refuse it
            # (raw modes X;16B/L/N are 16 bits per channel; BMP's 5-6-5 "BGR;16" is not)
            if any(re.search(r";16[BLN]$", _rawmode(t)) for t in (im.tile or ())):
                raise DataError(
                    f"{path}: expected 8 bits per channel, got a 16-bit {im.mode} image (convert it to 8-bit RGB first)"
                )
            im.load()  # decode now so truncation is caught here, not later
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode != "RGB":
                raise DataError(
                    f"{path}: expected a 3-channel 8-bit RGB image, got PIL mode {mode!r} "
                    f"({len(im.getbands())} band(s))"
                )
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError: a header claiming > 2×MAX_IMAGE_PIXELS
        raise DataError(
            f"image {path} is too large to decode ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS only for files you trust"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: expected H×W×3, got array shape {arr.shape}")
    return arr


def _rawmode(tile: Any) -> str:
    """The raw (on-disk) mode of a PIL tile, '' when the decoder's arguments do not state one."""
    args = tile[3] if len(tile) > 3 else None
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``3×H×W`` float32 in [0, 1]."""
    # np.array copies: memory-mapped caches are read-only and torch warns on those
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------------------------
# splits


def assign_splits(groups: Sequence[str], seed: int = 0, ratios: Sequence[float] = DEFAULT_RATIOS) -> dict[str, str]:
    """Map each group (source image / reference) to ``train``/``val``/``test`` in the given
    ratios, seeded. With three or more groups every split gets at least one."""
    uniq = sorted(set(groups))
    if abs(sum(ratios) - 1.0) > 1e-9 or len(ratios) != 3:
        raise RobenchError(f"split ratios must be three numbers summing to 1, got {ratios}")
    order = np.random.default_rng(seed).permutation(len(uniq))
    n = len(uniq)
    n_train = int(round(ratios[0] * n))
    n_val = int(round(ratios[1] * n))
    if n >= 3:
        n_train = min(max(n_train, 1), n - 2)
        n_val = min(max(n_val, 1), n - n_train - 1)
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def select_split(table: pd.DataFrame, split: str, available: Sequence[str]) -> pd.DataFrame:
    if split == "all":
        return table.reset_index(drop=True)
    if split not in available:
        raise RobenchError(f"unknown split {split!r}; this dataset has: {', '.join(list(available) + ['all'])}")
    return table[table["split"] == split].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# datasets


class IQADataset(torch.utils.data.Dataset):
    """Base of every robench dataset. Subclasses fill ``self.table`` (this split's rows)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    kind: ClassVar[str] = "pairs"  # or "2afc"
    label_name: ClassVar[str] = "MOS"
    label_direction: ClassVar[str] = "higher is better"
    splits: ClassVar[tuple[str, ...]] = SPLITS
    official_splits: ClassVar[bool] = False
    #: the dataset a run uses when none is named (exactly one registered dataset sets it)
    default: ClassVar[bool] = False
    #: a 2AFC set cannot train a MOS regressor: the pairs dataset that trains missing targets
    training_set: ClassVar[str | None] = None
    #: small options for the generic dataset tests (seconds to build)
    test_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def profile_options(cls, profile) -> dict[str, Any]:
        """Options a profile sets for this dataset (a built set's image size); none for files
        read as they are."""
        return {}

    def content_version(self) -> str | None:
        """What identifies this dataset's content beyond its name and options (a built set's
        build version and photo manifest): part of every cell's key, so results of different
        builds are never mixed. None for files read as they are (their items are hashed)."""
        return None

    @classmethod
    def nominal_sizes(cls, seed: int = 0) -> dict[str, int] | None:
        """Items per split without reading the files (validate's estimate); None if unknown."""
        return None

    table: pd.DataFrame
    split: str

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        """Shown by ``robench ls datasets``."""
        return {"kind": cls.kind, "label": cls.label_name, "official_splits": cls.official_splits}

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, indices: Sequence[int]) -> "IQADataset":
        """A view of some rows (used by stratified subsets of the quick profile)."""
        import copy

        view = copy.copy(self)
        view.table = self.table.iloc[list(indices)].reset_index(drop=True)
        return view

    # --- summary ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        t = self.table
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "split": self.split,
            "label": {"name": self.label_name, "direction": self.label_direction, "oriented": "higher is better"},
        }
        count_key = "n_pairs" if self.kind == "pairs" else "n_triplets"
        out[count_key] = int(len(t))
        out["n_references"] = int(t["ref_id"].nunique()) if len(t) else 0
        out["n_sources"] = int(t["source"].nunique()) if len(t) else 0
        out["n_distortions"] = int(t["distortion"].nunique()) if len(t) else 0
        if "level" in t and (t["level"] > 0).any():
            out["n_levels"] = int(t.loc[t["level"] > 0, "level"].nunique())
        if "split" in t:
            per = {}
            for s, g in t.groupby("split", sort=False):
                per[s] = {
                    count_key: int(len(g)),
                    "n_references": int(g["ref_id"].nunique()),
                    "n_sources": int(g["source"].nunique()),
                }
            out["splits"] = {s: per[s] for s in list(self.splits) if s in per}
            srcs = [set(t.loc[t["split"] == s, "source"]) for s in out["splits"]]
            out["splits_disjoint"] = all(not (a & b) for i, a in enumerate(srcs) for b in srcs[i + 1 :])
        return out


class FilePairs(IQADataset):
    """Pairs read from image files listed in ``table`` (columns ``ref_path``, ``dist_path``)."""

    def _load(self, path: str) -> np.ndarray:
        return read_rgb(path)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        ref, dist = self._load(row["ref_path"]), self._load(row["dist_path"])
        if ref.shape != dist.shape:
            raise DataError(
                f"size mismatch: reference {row['ref_path']} is {ref.shape[1]}×{ref.shape[0]} but "
                f"distorted {row['dist_path']} is {dist.shape[1]}×{dist.shape[0]}"
            )
        return {
            "ref": to_tensor(ref),
            "dist": to_tensor(dist),
            "mos": float(row["mos"]),
            "mos_raw": float(row["mos_raw"]),
            "ref_id": str(row["ref_id"]),
            "source": str(row["source"]),
            "distortion": str(row["distortion"]),
            "level": int(row["level"]),
        }


class FileTwoAFC(IQADataset):
    """2AFC triplets read from files (columns ``ref_path``, ``p0_path``, ``p1_path``, ``judge``)."""

    kind = "2afc"
    label_name = "fraction preferring p1"
    label_direction = "—"

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        imgs = [read_rgb(row[k]) for k in ("ref_path", "p0_path", "p1_path")]
        if not (imgs[0].shape == imgs[1].shape == imgs[2].shape):
            sizes = ", ".join(
                f"{k} {row[k + '_path']} is {a.shape[1]}×{a.shape[0]}" for k, a in zip(("ref", "p0", "p1"), imgs)
            )
            raise DataError(f"size mismatch in triplet: {sizes}")
        return {
            "ref": to_tensor(imgs[0]),
            "p0": to_tensor(imgs[1]),
            "p1": to_tensor(imgs[2]),
            "judge": self._judge(row),
            "ref_id": str(row["ref_id"]),
            "source": str(row["source"]),
            "distortion": str(row["distortion"]),
        }

    def _judge(self, row: pd.Series) -> float:
        return float(row["judge"])


def thurstone_preference(mu0: np.ndarray, sd0: np.ndarray, mu1: np.ndarray, sd1: np.ndarray) -> np.ndarray:
    """Fraction preferring p1 under Thurstone case V: ``Φ((μ1 − μ0) / sqrt(σ0² + σ1²))``."""
    z = (np.asarray(mu1) - np.asarray(mu0)) / np.sqrt(np.asarray(sd0) ** 2 + np.asarray(sd1) ** 2)
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def check_root(root: str | Path | None, dataset: str, expect: str) -> Path:
    """Resolve a dataset root or fail with a message that says what is expected there."""
    if root is None:
        raise RobenchError(
            f"dataset {dataset!r} needs root=PATH (the folder holding {expect}); "
            f"`robench data fetch {dataset}` downloads it where a public archive exists"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: root folder does not exist: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing {what}: {path}")
    return path


def find_ci(folder: Path, name: str) -> Path | None:
    """Case-insensitive file lookup (TID2013 mixes ``I25.BMP`` and ``i25.bmp``)."""
    exact = folder / name
    if exact.is_file():
        return exact
    low = name.lower()
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.lower() == low:
                return p
    return None


def find_layout(root: Path, dataset: str, markers: Sequence[str], max_depth: int = 3) -> Path:
    """The folder at or below ``root`` (breadth-first, up to ``max_depth``) that holds every
    marker path: users point ``root`` at the extracted folder or at its parent."""
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for d in frontier:
            if all((d / m).exists() for m in markers):
                return d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        frontier = nxt
    raise DataError(
        f"{dataset}: {root} does not hold the official layout (expected {', '.join(markers)} in it or in a subfolder)"
    )


def check_labels(
    df: pd.DataFrame,
    label_file: Path,
    name_col: str = "dist_path",
    label_col: str = "mos_raw",
    bounds: tuple[float, float] | None = None,
) -> np.ndarray:
    """Every label must be a finite number (within ``bounds`` when given): NaN/inf or text in a
    label file is an error naming the row. Returns the labels as floats."""
    # a column that pandas parsed as booleans ("True"/"False") is not a label: to_numeric would give 1/0
    col = df[label_col].map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v)
    vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    what = "a finite number"
    if bounds is not None:
        with np.errstate(invalid="ignore"):
            bad |= (vals < bounds[0]) | (vals > bounds[1])
        what = f"a finite number in [{bounds[0]:g}, {bounds[1]:g}]"
    if bad.any():
        row = df[bad].iloc[0]
        shown = row[label_col].item() if isinstance(row[label_col], np.generic) else row[label_col]
        raise DataError(
            f"{label_file}: label {shown!r} for {Path(str(row[name_col])).name} is not {what} "
            f"({int(bad.sum())} such row(s))"
        )
    return vals


def read_label_csv(path: Path, lower: bool = False) -> pd.DataFrame:
    """``pd.read_csv`` with any parse failure a DataError naming the file; header names stripped
    (and lower-cased) and required to be unique."""
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # ParserError, EmptyDataError, UnicodeDecodeError, ...
        raise DataError(f"cannot read {path}: {exc}") from None
    return clean_columns(df, path, lower)


def clean_columns(df: pd.DataFrame, path: Path, lower: bool = False) -> pd.DataFrame:
    cols = [str(c).strip().lower() if lower else str(c).strip() for c in df.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:  # two columns with one name: which holds the labels is ambiguous
        raise DataError(f"{path}: duplicate column(s) {dup} (columns: {list(df.columns)})")
    df.columns = cols
    return df


def as_int(value: Any, what: str, where: Path) -> int:
    """An integer-valued label-file field (a level, an index), or a DataError naming the file."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and f.is_integer()):
        raise DataError(f"{where}: {what} {value!r} is not an integer")
    return int(f)


def check_files_exist(paths: Sequence[str], label_file: Path) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(str(m) for m in missing[:3])
        raise DataError(f"{label_file} names {len(missing)} image file(s) that do not exist, e.g. {shown}")


class RealDataset(IQADataset):
    """A dataset read from its official layout under ``root``. Subclasses implement
    ``read_table(root) -> DataFrame`` with the columns of their kind plus ``source``; splits
    are by source (reference image), 6:2:2 and seeded, unless the dataset has official ones."""

    layout: ClassVar[str] = ""  # what the user must put at root, for error messages
    archives: ClassVar[tuple] = ()  # fetch.Archive entries with a public URL

    def __init__(
        self,
        split: str = "train",
        root: str | Path | None = None,
        seed: int = 0,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        verify: bool = False,
    ):
        self.root = check_root(root, self.name, self.layout)
        self.split = split
        self.seed = seed
        full = self.read_table(self.root)
        if not len(full):
            raise DataError(f"{self.name}: no items found under {self.root}")
        if "split" not in full:
            full["split"] = full["source"].map(assign_splits(list(full["source"]), seed, ratios))
        self.full_table = full
        self.table = select_split(full, split, self.splits)
        if verify:
            self.verify()

    def read_table(self, root: Path) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify(self) -> int:
        """Decode every item of this split (errors name the file); returns the count."""
        for i in range(len(self)):
            self[i]
        return len(self)


class RealPairs(RealDataset, FilePairs):
    pass


class RealTwoAFC(RealDataset, FileTwoAFC):
    pass
