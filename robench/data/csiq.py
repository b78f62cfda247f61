"""CSIQ (Larson & Chandler 2010): 30 references, 866 distorted images, 6 types."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.data.base import RealPairs, as_int, check_labels, clean_columns, find_layout
from robench.core.errors import DataError
from robench.core.registry import DATASETS

# dst_type in the label sheet -> the token in the file name <image>.<token>.<level>.png
TYPE_TOKENS = {
    "noise": "awgn",
    "awgn": "awgn",
    "jpeg": "jpeg",
    "jpeg 2000": "jpeg2000",
    "jpeg2000": "jpeg2000",
    "fnoise": "fnoise",
    "blur": "blur",
    "contrast": "contrast",
}
DMOS_OFFSET = 1.0  # oriented MOS = 1 − DMOS


@DATASETS.register("csiq", summary="CSIQ: 30 refs, 866 distorted (6 types); DMOS 0–1, lower is better")
class CSIQ(RealPairs):
    label_name = "DMOS (0–1, lower is better); mos = 1 − DMOS"
    label_direction = "lower is better"
    layout = "src_imgs/1600.png, dst_imgs/<type>/1600.AWGN.1.png, csiq.DMOS.xlsx"

    def read_table(self, root: Path) -> pd.DataFrame:
        base = find_layout(root, self.name, ["src_imgs", "dst_imgs"])
        sheets = sorted(base.glob("*.xlsx"))
        if not sheets:
            raise DataError(f"csiq: no label spreadsheet (csiq.DMOS.xlsx) in {base}")
        label_file = sheets[0]
        try:
            book = pd.read_excel(label_file, sheet_name=None)
        except Exception as exc:
            raise DataError(f"cannot read {label_file}: {exc}") from None
        df = book.get("all_by_image", next(iter(book.values())))
        df = clean_columns(df, label_file, lower=True)
        need = {"image", "dst_type", "dst_lev", "dmos"}
        if not need <= set(df.columns):
            raise DataError(f"{label_file}: expected columns image, dst_type, dst_lev, dmos; got {list(df.columns)}")
        dist_index = {p.name.lower(): p for p in (base / "dst_imgs").rglob("*") if p.is_file()}
        ref_index = {p.stem.lower(): p for p in (base / "src_imgs").iterdir() if p.is_file()}
        rows = []
        for r in df.itertuples(index=False):
            if pd.isna(r.image):
                continue
            image = (
                str(int(r.image))
                if isinstance(r.image, float) and float(r.image).is_integer()
                else str(r.image).strip()
            )
            dtype = str(r.dst_type).strip().lower()
            token = TYPE_TOKENS.get(dtype)
            if token is None:
                raise DataError(f"{label_file}: unknown dst_type {r.dst_type!r} for image {image}")
            level = as_int(r.dst_lev, f"dst_lev of image {image}", label_file)
            fname = f"{image}.{token}.{level}.png".lower()
            dist = dist_index.get(fname)
            if dist is None:
                raise DataError(
                    f"{label_file} row (image {image}, {dtype}, level {level}) names {fname}, missing under "
                    f"{base / 'dst_imgs'}"
                )
            ref = ref_index.get(image.lower())
            if ref is None:
                raise DataError(f"{label_file}: reference {image}.png missing from {base / 'src_imgs'}")
            rows.append(
                {
                    "ref_path": str(ref),
                    "dist_path": str(dist),
                    "mos_raw": r.dmos,
                    "ref_id": image,
                    "source": image,
                    "distortion": token,
                    "level": level,
                }
            )
        out = pd.DataFrame(rows)
        if len(out):
            out["mos_raw"] = check_labels(out, label_file)
            out["mos"] = DMOS_OFFSET - out["mos_raw"]
        return out
