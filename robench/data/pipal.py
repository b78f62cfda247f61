"""PIPAL (Jinjin et al. 2020), public training part: 200 references, 23 200 distorted, Elo."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.data.base import RealPairs, check_labels, find_layout
from robench.core.errors import DataError
from robench.core.registry import DATASETS


@DATASETS.register(
    "pipal", summary="PIPAL (train part): 200 refs, GAN/SR/traditional distortions; Elo, higher is better"
)
class PIPAL(RealPairs):
    label_name = "Elo (higher is better)"
    layout = "Train_Ref/A0001.bmp, Distortion_*/A0001_00_00.bmp, Train_Label/*.txt"

    def read_table(self, root: Path) -> pd.DataFrame:
        base = find_layout(root, self.name, ["Train_Ref", "Train_Label"])
        dist_index = {}
        for d in sorted(base.glob("Distortion*")):
            if d.is_dir():
                for p in d.iterdir():
                    dist_index[p.name] = p
        rows = []
        for label_file in sorted((base / "Train_Label").glob("*.txt")):
            for lineno, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                parts = [x.strip() for x in line.split(",")]
                if len(parts) != 2:
                    raise DataError(f"{label_file}:{lineno}: expected '<file>,<elo>', got {line!r}")
                name, elo = parts
                dist = dist_index.get(name)
                if dist is None:
                    raise DataError(f"{label_file}:{lineno} names {name!r}, missing from {base}/Distortion_*")
                ref_name = name.split("_")[0] + Path(name).suffix
                ref = base / "Train_Ref" / ref_name
                if not ref.is_file():
                    raise DataError(f"{label_file}:{lineno}: reference {ref} for {name!r} is missing")
                try:
                    elo_val = float(elo)
                except ValueError:
                    elo_val = float("nan")
                bits = Path(name).stem.split("_")
                rows.append(
                    {
                        "ref_path": str(ref),
                        "dist_path": str(dist),
                        "mos_raw": elo_val,
                        "ref_id": Path(ref_name).stem,
                        "source": Path(ref_name).stem,
                        "distortion": f"pipal{bits[1]}" if len(bits) > 1 else "pipal",
                        "level": 0,
                        "_label_file": str(label_file),
                    }
                )
        out = pd.DataFrame(rows)
        if len(out):
            for lf, g in out.groupby("_label_file"):
                check_labels(g, Path(lf))
            out = out.drop(columns="_label_file")
            out["mos"] = out["mos_raw"].astype(float)
        return out
