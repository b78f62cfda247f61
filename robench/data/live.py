"""LIVE Image Quality Assessment Database, release 2 (Sheikh et al. 2006)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from robench.data.base import RealPairs, check_labels, find_layout, require_file
from robench.core.errors import DataError
from robench.core.registry import DATASETS

# dmos.mat concatenates the folders in this order (each imgN.bmp, N = 1..count)
FOLDERS = ("jp2k", "jpeg", "wn", "gblur", "fastfading")
DMOS_OFFSET = 100.0  # oriented MOS = 100 − DMOS (a flip; correlations are unchanged)


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for bad files
        raise DataError(f"cannot read MATLAB file {path}: {exc}") from None


def _mat_strings(cell, path: Path) -> list[str]:
    out = []
    for i, x in enumerate(np.asarray(cell).reshape(-1)):
        v = np.asarray(x).reshape(-1)
        if v.size != 1:  # an empty MATLAB string loads as a 0-size array
            raise DataError(f"{path}: entry {i + 1} of refnames_all is not one name (got {x!r})")
        out.append(str(v[0]))
    return out


def _mat_numbers(m: dict, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(m[key], dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:  # text or cells where numbers belong
        raise DataError(f"{path}: variable {key!r} is not numeric: {exc}") from None


@DATASETS.register("live", summary="LIVE release 2: 29 refs, 779 distorted (5 types); DMOS, lower is better")
class LIVE(RealPairs):
    label_name = "DMOS (lower is better); mos = 100 − DMOS"
    label_direction = "lower is better"
    layout = "jp2k/ jpeg/ wn/ gblur/ fastfading/ (imgN.bmp), refimgs/, dmos.mat, refnames_all.mat"

    def read_table(self, root: Path) -> pd.DataFrame:
        base = find_layout(root, self.name, ["dmos.mat", "refimgs"])
        dmos_file = require_file(base / "dmos.mat", "LIVE dmos.mat")
        names_file = require_file(base / "refnames_all.mat", "LIVE refnames_all.mat")
        m = _loadmat(dmos_file)
        if "dmos" not in m or "orgs" not in m:
            found = sorted(k for k in m if not k.startswith("__"))
            raise DataError(f"{dmos_file}: expected variables 'dmos' and 'orgs', found {found}")
        dmos = _mat_numbers(m, "dmos", dmos_file)
        orgs = _mat_numbers(m, "orgs", dmos_file)
        if not np.isin(orgs, (0.0, 1.0)).all():
            raise DataError(
                f"{dmos_file}: 'orgs' must hold 0 (distorted) or 1 (reference copy), got "
                f"{sorted(set(orgs[~np.isin(orgs, (0.0, 1.0))].tolist()))[:5]}"
            )
        rn = _loadmat(names_file)
        if "refnames_all" not in rn:
            raise DataError(f"{names_file}: expected variable 'refnames_all'")
        refnames = _mat_strings(rn["refnames_all"], names_file)
        files = []
        for folder in FOLDERS:
            d = base / folder
            if not d.is_dir():
                raise DataError(f"live: missing distortion folder {d}")
            nums = sorted(int(mm.group(1)) for p in d.iterdir() if (mm := re.fullmatch(r"img(\d+)\.bmp", p.name, re.I)))
            if nums != list(range(1, len(nums) + 1)):
                raise DataError(f"live: {d} must hold img1.bmp … imgN.bmp without gaps")
            files += [(folder, d / f"img{n}.bmp") for n in nums]
        if not (len(files) == len(dmos) == len(orgs) == len(refnames)):
            raise DataError(
                f"live: {len(files)} images in {', '.join(FOLDERS)} but {dmos_file} has {len(dmos)} DMOS, "
                f"{len(orgs)} orgs and {names_file} has {len(refnames)} reference names"
            )
        rows = []
        for (folder, path), score, org, ref in zip(files, dmos, orgs, refnames):
            if org == 1:  # a copy of the reference inside the distortion folder
                continue
            ref_path = base / "refimgs" / ref
            if not ref_path.is_file():
                raise DataError(f"{names_file} names reference {ref!r} for {path}, missing from {base / 'refimgs'}")
            rows.append(
                {
                    "ref_path": str(ref_path),
                    "dist_path": str(path),
                    "mos_raw": score,
                    "ref_id": Path(ref).stem,
                    "source": Path(ref).stem,
                    "distortion": folder,
                    "level": 0,
                }
            )
        out = pd.DataFrame(rows)
        if len(out):
            out["mos_raw"] = check_labels(out, dmos_file)
            out["mos"] = DMOS_OFFSET - out["mos_raw"]
        return out
