"""KADID-10k (Lin, Hosu, Saupe 2019): 81 references × 25 distortions × 5 levels, 512×384."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.data.base import RealPairs, check_files_exist, check_labels, find_layout, read_label_csv, require_file
from robench.core.fetch import Archive
from robench.core.errors import DataError
from robench.core.registry import DATASETS


@DATASETS.register("kadid10k", summary="KADID-10k: 81 refs × 25 distortions × 5 levels; DMOS 1–5, higher is better")
class KADID10k(RealPairs):
    label_name = "dmos (1–5; higher is better despite the name)"
    layout = "kadid10k/images/I01.png … and kadid10k/dmos.csv"
    archives = (Archive("https://datasets.vqa.mmsp-kn.de/archives/kadid10k.zip", "kadid10k.zip"),)
    #: 81 references × 25 distortions × 5 levels, split 6:2:2 by reference
    REFS, PER_REF = 81, 125

    @classmethod
    def nominal_sizes(cls, seed: int = 0) -> dict[str, int]:
        from robench.data.base import assign_splits

        split = assign_splits([f"I{i:02d}" for i in range(1, cls.REFS + 1)], seed=seed)
        return {s: cls.PER_REF * sum(v == s for v in split.values()) for s in ("train", "val", "test")}

    def read_table(self, root: Path) -> pd.DataFrame:
        base = find_layout(root, self.name, ["dmos.csv", "images"])
        label_file = require_file(base / "dmos.csv", "KADID-10k label file")
        df = read_label_csv(label_file)
        need = {"dist_img", "ref_img", "dmos"}
        if not need <= set(df.columns):
            raise DataError(f"{label_file}: expected header dist_img,ref_img,dmos,var; got {list(df.columns)}")
        rows = []
        for dist_img, ref_img, dmos in df[["dist_img", "ref_img", "dmos"]].itertuples(index=False, name=None):
            stem = Path(str(dist_img)).stem  # I01_01_01
            parts = stem.split("_")
            # isdecimal, not isdigit: int() refuses digits such as '²'
            if len(parts) != 3 or not parts[1].isdecimal() or not parts[2].isdecimal():
                raise DataError(f"{label_file}: distorted name {dist_img!r} is not I<ref>_<type>_<level>.png")
            rows.append(
                {
                    "ref_path": str(base / "images" / str(ref_img)),
                    "dist_path": str(base / "images" / str(dist_img)),
                    "mos_raw": dmos,
                    "ref_id": Path(str(ref_img)).stem,
                    "source": Path(str(ref_img)).stem,
                    "distortion": f"kadid{int(parts[1]):02d}",
                    "level": int(parts[2]),
                }
            )
        out = pd.DataFrame(rows)
        if not len(out):
            return out  # RealDataset: "no items found"
        out["mos_raw"] = check_labels(out, label_file)
        out["mos"] = out["mos_raw"]
        check_files_exist(list(out["ref_path"].unique()) + list(out["dist_path"]), label_file)
        return out
