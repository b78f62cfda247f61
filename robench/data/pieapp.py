"""PieAPP (Prashnani et al. CVPR 2018): pairwise preferences with official train/test splits.

Two views of the same folder: ``pieapp`` gives (ref, dist, score) pairs from the per-image
scores the test split ships (score = perceptual error, lower is better; mos = −score), and
``pieapp-2afc`` gives (ref, A, B, preference) triplets from the pairwise labels of every split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.data.base import RealPairs, RealTwoAFC, check_labels, find_layout, read_label_csv
from robench.core.fetch import Archive
from robench.core.errors import DataError
from robench.core.registry import DATASETS

ARCHIVE = Archive(
    "https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/all_data_PieAPP_dataset_CVPR_2018.zip",
    "all_data_PieAPP_dataset_CVPR_2018.zip",
)
LAYOUT = "reference_images/<split>/, distorted_images/<split>/ref_<n>/, labels/<split>/ref_<n>_pairwise_labels.csv"


def _read_csv(path: Path) -> pd.DataFrame:
    return read_label_csv(path, lower=True)


def _col(df: pd.DataFrame, path: Path, *needles: str) -> str:
    for c in df.columns:
        if all(n in c for n in needles):
            return c
    raise DataError(f"{path}: no column containing {' '.join(needles)!r} (columns: {list(df.columns)})")


class _PieAPPBase:
    layout = LAYOUT
    archives = (ARCHIVE,)
    official_splits = True

    def _base(self, root: Path) -> Path:
        return find_layout(root, "pieapp", ["reference_images", "distorted_images", "labels"])

    def _splits_found(self, base: Path) -> tuple[str, ...]:
        found = tuple(s for s in ("train", "val", "test") if (base / "labels" / s).is_dir())
        if not found:
            raise DataError(f"pieapp: no split folders (train/val/test) under {base / 'labels'}")
        return found

    def _ref(self, base: Path, split: str, name: str, label_file: Path) -> Path:
        p = base / "reference_images" / split / Path(name).name
        if not p.is_file():
            raise DataError(f"{label_file}: reference {name!r} missing at {p}")
        return p

    def _dist(self, base: Path, split: str, ref_stem: str, name: str, label_file: Path) -> Path:
        for p in (base / "distorted_images" / split / ref_stem / name, base / "distorted_images" / split / name):
            if p.is_file():
                return p
        raise DataError(
            f"{label_file}: distorted image {name!r} missing under {base / 'distorted_images' / split / ref_stem}"
        )


@DATASETS.register("pieapp", summary="PieAPP per-image scores (official test split); error, lower is better")
class PieAPP(_PieAPPBase, RealPairs):
    label_name = "per-image perceptual error (lower is better); mos = −score"
    label_direction = "lower is better"

    def read_table(self, root: Path) -> pd.DataFrame:
        base = self._base(root)
        rows = []
        splits = []
        for split in self._splits_found(base):
            files = sorted((base / "labels" / split).glob("*_per_image_score.csv"))
            if files:
                splits.append(split)
            for lf in files:
                df = _read_csv(lf)
                c_ref, c_dist, c_score = _col(df, lf, "reference"), _col(df, lf, "distorted"), _col(df, lf, "score")
                for ref_name, dist_name, score in df[[c_ref, c_dist, c_score]].itertuples(index=False, name=None):
                    ref = self._ref(base, split, str(ref_name).strip(), lf)
                    rows.append(
                        {
                            "ref_path": str(ref),
                            "dist_path": str(self._dist(base, split, ref.stem, str(dist_name).strip(), lf)),
                            "mos_raw": pd.to_numeric(score, errors="coerce"),
                            "ref_id": ref.stem,
                            "source": ref.stem,
                            "distortion": "pieapp",
                            "level": 0,
                            "split": split,
                            "_lf": str(lf),
                        }
                    )
        if not splits:
            raise DataError(
                f"pieapp: no *_per_image_score.csv under {base / 'labels'} (the official test split has them)"
            )
        self.splits = tuple(splits)
        out = pd.DataFrame(rows)
        if not len(out):
            return out  # RealDataset: "no items found"
        for lf, g in out.groupby("_lf"):
            check_labels(g, Path(lf))
        out = out.drop(columns="_lf")
        out["mos_raw"] = out["mos_raw"].astype(float)
        out["mos"] = -out["mos_raw"]
        return out


@DATASETS.register("pieapp-2afc", summary="PieAPP pairwise preferences as 2AFC triplets (official splits)")
class PieAPP2AFC(_PieAPPBase, RealTwoAFC):
    label_name = "fraction preferring p1 (= 1 − processed probability of preference for A)"

    def read_table(self, root: Path) -> pd.DataFrame:
        base = self._base(root)
        self.splits = self._splits_found(base)
        rows = []
        for split in self.splits:
            for lf in sorted((base / "labels" / split).glob("*_pairwise_labels.csv")):
                df = _read_csv(lf)
                c_ref, c_a, c_b = _col(df, lf, "ref", "image"), _col(df, lf, "image a"), _col(df, lf, "image b")
                prob_cols = [c for c in df.columns if "probability" in c]
                c_p = next((c for c in prob_cols if "processed" in c), prob_cols[0] if prob_cols else None)
                if c_p is None:
                    raise DataError(f"{lf}: no preference-probability column (columns: {list(df.columns)})")
                for ref_name, a_name, b_name, p_a in df[[c_ref, c_a, c_b, c_p]].itertuples(index=False, name=None):
                    ref = self._ref(base, split, str(ref_name).strip(), lf)
                    a = self._dist(base, split, ref.stem, str(a_name).strip(), lf)
                    b = self._dist(base, split, ref.stem, str(b_name).strip(), lf)
                    p_a = pd.to_numeric(p_a, errors="coerce")
                    rows.append(
                        {
                            "ref_path": str(ref),
                            "p0_path": str(a),
                            "p1_path": str(b),
                            "judge": 1.0 - p_a,
                            "ref_id": ref.stem,
                            "source": ref.stem,
                            "distortion": "pieapp",
                            "split": split,
                            "_lf": str(lf),
                        }
                    )
        out = pd.DataFrame(rows)
        if len(out):
            for lf, g in out.groupby("_lf"):
                check_labels(g, Path(lf), name_col="p0_path", label_col="judge", bounds=(0.0, 1.0))
            out = out.drop(columns="_lf")
        return out
