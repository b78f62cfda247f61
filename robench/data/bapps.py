"""BAPPS 2AFC (Zhang et al. CVPR 2018, the LPIPS paper): 64×64 patch triplets with human
preference fractions; official train/val splits (``test`` is an alias of ``val``, which is
what the LPIPS paper reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.data.base import RealTwoAFC, find_layout
from robench.core.fetch import Archive
from robench.core.errors import DataError
from robench.core.registry import DATASETS

BASE_URL = "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset"


@DATASETS.register(
    "bapps-2afc", summary="BAPPS 2AFC: 64×64 patch triplets, judge = fraction preferring p1 (official train/val)"
)
class BAPPS2AFC(RealTwoAFC):
    label_name = "fraction preferring p1"
    layout = "dataset/2afc/{train,val}/<category>/{ref,p0,p1,judge}/NNNNNN.{png,npy}"
    splits = ("train", "val")
    official_splits = True
    archives = (
        Archive(f"{BASE_URL}/twoafc_train.tar.gz", "twoafc_train.tar.gz"),
        Archive(f"{BASE_URL}/twoafc_val.tar.gz", "twoafc_val.tar.gz"),
    )

    def __init__(
        self, split: str = "val", root: str | Path | None = None, categories: list[str] | None = None, **kw: Any
    ):
        self.categories = categories
        super().__init__(split="val" if split == "test" else split, root=root, **kw)

    def read_table(self, root: Path) -> pd.DataFrame:
        rows = []
        found = []
        for split in self.splits:
            try:
                base = find_layout(root, self.name, [f"2afc/{split}"], max_depth=4) / "2afc" / split
            except DataError:
                continue
            found.append(split)
            for cat in sorted(p for p in base.iterdir() if p.is_dir()):
                if self.categories and cat.name not in self.categories:
                    continue
                for sub in ("ref", "p0", "p1", "judge"):
                    if not (cat / sub).is_dir():
                        raise DataError(f"bapps-2afc: missing folder {cat / sub}")
                for ref in sorted((cat / "ref").glob("*.png")):
                    paths = {k: cat / k / ref.name for k in ("p0", "p1")}
                    paths["judge"] = cat / "judge" / (ref.stem + ".npy")
                    for k, p in paths.items():
                        if not p.is_file():
                            raise DataError(f"bapps-2afc: {k} file for {ref} is missing: {p}")
                    rid = f"{split}/{cat.name}/{ref.stem}"
                    rows.append(
                        {
                            "ref_path": str(ref),
                            "p0_path": str(paths["p0"]),
                            "p1_path": str(paths["p1"]),
                            "judge_path": str(paths["judge"]),
                            "ref_id": rid,
                            "source": rid,
                            "distortion": cat.name,
                            "split": split,
                        }
                    )
        if not found:
            raise DataError(f"bapps-2afc: no 2afc/train or 2afc/val folder under {root}")
        return pd.DataFrame(rows)

    @staticmethod
    def read_judge(path: str) -> float:
        try:
            arr = np.load(path, allow_pickle=False)  # never unpickle a data file
        except Exception as exc:
            raise DataError(f"corrupt judge file {path}: {exc}") from None
        # only int/float arrays: bool, complex, text and dates would convert (or fail) silently
        kind = getattr(getattr(arr, "dtype", None), "kind", "")
        vals = np.asarray(arr, dtype=float).reshape(-1) if kind in ("f", "i", "u") else np.empty(0)
        if vals.size != 1 or not np.isfinite(vals[0]) or not 0.0 <= vals[0] <= 1.0:
            raise DataError(f"{path}: judge must be one finite fraction in [0,1], got {arr!r}")
        return float(vals[0])

    def _judge(self, row: pd.Series) -> float:
        return self.read_judge(row["judge_path"])  # read lazily: the train split has ~150k judge files
