"""TID2013 (Ponomarenko et al. 2015): 25 references × 24 distortions × 5 levels, 512×384 BMP."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.data.base import RealPairs, check_labels, find_ci, find_layout, require_file
from robench.core.fetch import Archive
from robench.core.errors import DataError
from robench.core.registry import DATASETS


@DATASETS.register("tid2013", summary="TID2013: 25 refs × 24 distortions × 5 levels; MOS 0–9, higher is better")
class TID2013(RealPairs):
    label_name = "MOS (0–9)"
    layout = "reference_images/I01.BMP, distorted_images/i01_01_1.bmp, mos_with_names.txt"
    archives = (Archive("http://www.ponomarenko.info/tid2013/tid2013.rar", "tid2013.rar"),)

    def read_table(self, root: Path) -> pd.DataFrame:
        base = find_layout(root, self.name, ["mos_with_names.txt", "reference_images", "distorted_images"])
        label_file = require_file(base / "mos_with_names.txt", "TID2013 label file")
        ref_dir, dist_dir = base / "reference_images", base / "distorted_images"
        rows = []
        for lineno, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{label_file}:{lineno}: expected '<mos> <file>', got {line!r}")
            mos, name = parts
            stem = Path(name).stem.lower()  # i01_01_1
            bits = stem.split("_")
            if len(bits) != 3 or not bits[0].startswith("i"):
                raise DataError(f"{label_file}:{lineno}: distorted name {name!r} is not i<ref>_<type>_<level>.bmp")
            dist = find_ci(dist_dir, name)
            if dist is None:
                raise DataError(f"{label_file}:{lineno} names {name!r}, which is missing from {dist_dir}")
            ref_name = f"I{bits[0][1:]}.BMP"
            ref = find_ci(ref_dir, ref_name)  # one reference is stored as i25.bmp
            if ref is None:
                raise DataError(f"{label_file}:{lineno}: reference {ref_name} for {name!r} is missing from {ref_dir}")
            try:
                mos_val = float(mos)
            except ValueError:
                mos_val = float("nan")
            rows.append(
                {
                    "ref_path": str(ref),
                    "dist_path": str(dist),
                    "mos_raw": mos_val,
                    "ref_id": ref_name[:-4],
                    "source": ref_name[:-4],
                    "distortion": f"tid{int(bits[1]):02d}",
                    "level": int(bits[2]),
                }
            )
        out = pd.DataFrame(rows)
        if len(out):
            check_labels(out, label_file)
            out["mos"] = out["mos_raw"].astype(float)
        return out
