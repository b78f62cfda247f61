"""Example pairs dataset: synthetic patterns with noise and quantisation at four levels.

One file that registers itself in ``DATASETS``. Six sinusoidal colour patterns are the source
"photos"; each gets two distortions at levels 1–4 and the label MOS = 5 − level (higher is
better). Splits are by source (6:2:2, seeded), so no content is shared between train, val and
test. Images are generated on access, deterministically from the seed and the item's index.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench.core.registry import DATASETS
from robench.data.base import IQADataset, assign_splits, select_split

SOURCES = tuple(f"pattern{i}" for i in range(6))
DISTORTIONS = ("noise", "quantise")
LEVELS = (1, 2, 3, 4)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """3×H×W float32 in [0, 1], the contract of every dataset item."""
    return torch.from_numpy(np.clip(a, 0.0, 1.0).astype(np.float32))


@DATASETS.register(
    "example-synthetic", summary="example: 6 synthetic patterns × noise/quantisation × 4 levels; MOS = 5 − level"
)
class SyntheticPairs(IQADataset):
    kind = "pairs"  # items {"ref", "dist", "mos", ...}; "2afc": {"ref", "p0", "p1", "judge", ...}
    label_name = "MOS (5 − level)"
    label_direction = "higher is better"
    test_options = {"size": 32}  # small options for the generic tests (seconds to build)
    # default = True would make it the dataset of a run that names none (exactly one may)

    @classmethod
    def profile_options(cls, profile) -> dict[str, Any]:
        return {"size": int(profile.image_size)}  # a generated set follows the profile's image size

    @classmethod
    def nominal_sizes(cls, seed: int = 0) -> dict[str, int]:
        per_source = len(DISTORTIONS) * len(LEVELS)
        return {s: n * per_source for s, n in Counter(assign_splits(SOURCES, seed=seed).values()).items()}

    def __init__(self, split: str = "train", size: int = 64, seed: int = 0):
        self.split, self.size, self.seed = split, int(size), int(seed)
        split_of = assign_splits(SOURCES, seed=seed)  # by source photo: splits never share content
        rows = []
        for k, src in enumerate(SOURCES):
            for d in DISTORTIONS:
                for lv in LEVELS:  # "index": a stable item id (results name items by it)
                    rows.append(
                        {
                            "index": len(rows),
                            "source_index": k,
                            "ref_id": src,
                            "source": src,
                            "distortion": d,
                            "level": lv,
                            "mos": 5.0 - lv,
                            "split": split_of[src],
                        }
                    )
        # the rows without pixels: splits, counts and subsets never generate an image
        self.table = select_split(pd.DataFrame(rows), split, self.splits)

    def _reference(self, k: int) -> np.ndarray:
        y, x = np.mgrid[0 : self.size, 0 : self.size] / self.size
        fx, fy = 1 + k % 3, 1 + k // 3
        return np.stack([0.5 + 0.35 * np.sin(2 * np.pi * (fx * x + fy * y) + 2.1 * c + k) for c in range(3)])

    def _distort(self, ref: np.ndarray, distortion: str, level: int, index: int) -> np.ndarray:
        if distortion == "noise":
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
            return ref + 0.04 * level * rng.standard_normal(ref.shape)
        steps = 2 ** (6 - level) - 1  # quantise: 31, 15, 7, 3 steps
        return np.round(ref * steps) / steps

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table.iloc[int(i)]
        ref = self._reference(int(row["source_index"]))
        dist = self._distort(ref, row["distortion"], int(row["level"]), int(row["index"]))
        return {
            "ref": _tensor(ref),
            "dist": _tensor(dist),
            "mos": float(row["mos"]),
            "mos_raw": float(row["mos"]),
            "ref_id": row["ref_id"],
            "source": row["source"],
            "distortion": row["distortion"],
            "level": int(row["level"]),
        }
