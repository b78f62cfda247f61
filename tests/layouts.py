"""Tiny fixture folders in each real dataset's official layout (a few generated images).

Each ``make_*`` writes the layout under ``root`` and returns a dict of what a loader should
find, so tests compare counts and labels against what was written, not against constants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def img(path: Path, seed: int, size=(12, 16), mode="RGB") -> Path:
    """A random image (height, width) at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def make_kadid(root: Path, n_refs: int = 5, types=(1, 2), levels=(1, 2)) -> dict:
    base = root / "kadid10k"
    rows = []
    for r in range(1, n_refs + 1):
        img(base / "images" / f"I{r:02d}.png", r)
        for t in types:
            for lv in levels:
                name = f"I{r:02d}_{t:02d}_{lv:02d}.png"
                img(base / "images" / name, 1000 * r + 10 * t + lv)
                rows.append(
                    {
                        "dist_img": name,
                        "ref_img": f"I{r:02d}.png",
                        "dmos": round(1 + 4 * ((r * 7 + t * 3 + lv) % 10) / 10, 3),
                        "var": 0.1,
                    }
                )
    pd.DataFrame(rows).to_csv(base / "dmos.csv", index=False)
    return {"base": base, "n": len(rows), "refs": n_refs, "labels": {r["dist_img"]: r["dmos"] for r in rows}}


def make_tid(root: Path, n_refs: int = 5) -> dict:
    base = root / "tid2013"
    lines, labels = [], {}
    for r in range(1, n_refs + 1):
        # TID2013 really stores one reference in lower case (i25.bmp): mimic it for the last one
        ref_name = f"i{r:02d}.bmp" if r == n_refs else f"I{r:02d}.BMP"
        img(base / "reference_images" / ref_name, r)
        for t in (1, 2):
            for lv in (1, 2, 3):
                name = f"i{r:02d}_{t:02d}_{lv}.bmp"
                img(base / "distorted_images" / name, 100 * r + 10 * t + lv)
                mos = round(9 * ((r + 2 * t + 3 * lv) % 7) / 7, 5)
                lines.append(f"{mos} {name}")
                labels[name] = mos
    (base / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return {"base": base, "n": len(lines), "refs": n_refs, "labels": labels}


def make_live(root: Path) -> dict:
    from scipy.io import savemat

    base = root / "live"
    refs = [f"ref{i}.bmp" for i in range(1, 6)]
    for i, r in enumerate(refs):
        img(base / "refimgs" / r, i)
    counts = {"jp2k": 3, "jpeg": 3, "wn": 2, "gblur": 2, "fastfading": 2}
    dmos, orgs, names, labels = [], [], [], {}
    k = 0
    for folder, n in counts.items():
        for j in range(1, n + 1):
            img(base / folder / f"img{j}.bmp", 500 + k)
            ref = refs[k % len(refs)]
            is_org = 1 if (folder == "jpeg" and j == 1) else 0  # one reference copy to drop
            d = 0.0 if is_org else 10.0 + 5 * k
            dmos.append(d)
            orgs.append(is_org)
            names.append(ref)
            if not is_org:
                labels[f"{folder}/img{j}.bmp"] = d
            k += 1
    savemat(base / "dmos.mat", {"dmos": np.array([dmos]), "orgs": np.array([orgs])})
    cell = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        cell[0, i] = n
    savemat(base / "refnames_all.mat", {"refnames_all": cell})
    return {"base": base, "n": len(labels), "refs": len(refs), "labels": labels}


def make_csiq(root: Path) -> dict:
    base = root / "CSIQ"
    images = ["1600", "aerial_city", "boston", "bridge", "butter_flower"]
    types = [("noise", "awgn", "AWGN"), ("jpeg 2000", "jpeg2000", "jpeg2000"), ("blur", "blur", "BLUR")]
    rows, labels = [], {}
    for i, name in enumerate(images):
        img(base / "src_imgs" / f"{name}.png", i)
        for t, (dtype, folder, token) in enumerate(types):
            for lv in (1, 2):
                fname = f"{name}.{token}.{lv}.png"
                img(base / "dst_imgs" / folder / fname, 100 * i + 10 * t + lv)
                d = round(((i + t + lv) % 5) / 5, 3)
                rows.append(
                    {
                        "image": int(name) if name.isdigit() else name,
                        "dst_idx": t + 1,
                        "dst_type": dtype,
                        "dst_lev": lv,
                        "dmos_std": 0.01,
                        "dmos": d,
                    }
                )
                labels[fname] = d
    with pd.ExcelWriter(base / "csiq.DMOS.xlsx") as xw:
        pd.DataFrame({"note": ["readme sheet"]}).to_excel(xw, sheet_name="readme", index=False)
        pd.DataFrame(rows).to_excel(xw, sheet_name="all_by_image", index=False)
    return {"base": base, "n": len(rows), "refs": len(images), "labels": labels}


def make_pipal(root: Path) -> dict:
    base = root / "PIPAL"
    labels = {}
    for r in range(1, 6):
        ref = f"A{r:04d}"
        img(base / "Train_Ref" / f"{ref}.bmp", r)
        lines = []
        for t in range(3):
            name = f"{ref}_{t:02d}_{r % 3:02d}.bmp"
            img(base / f"Distortion_{1 + (r + t) % 4}" / name, 10 * r + t)
            elo = 1400.0 + 13 * r - 40 * t
            lines.append(f"{name},{elo}")
            labels[name] = elo
        (base / "Train_Label").mkdir(parents=True, exist_ok=True)
        (base / "Train_Label" / f"{ref}.txt").write_text("\n".join(lines) + "\n")
    return {"base": base, "n": len(labels), "refs": 5, "labels": labels}


def make_pieapp(root: Path) -> dict:
    base = root / "PieAPP_dataset_CVPR_2018"
    out = {"base": base, "pairs": {}, "triplets": {}}
    for split, refs in (("train", [1, 2, 3]), ("test", [4, 5])):
        out["triplets"][split] = 0
        for r in refs:
            ref = f"ref_{r}.png"
            img(base / "reference_images" / split / ref, r)
            dists = [f"distort_{r}_{k}.png" for k in range(3)]
            for k, d in enumerate(dists):
                img(base / "distorted_images" / split / f"ref_{r}" / d, 10 * r + k)
            pw = pd.DataFrame(
                {
                    "ref. image": [ref] * 2,
                    " distorted image A": [dists[0], dists[1]],
                    " distorted image B": [dists[1], dists[2]],
                    " raw probability of preference for A": [0.3, 0.8],
                    " processed probability of preference for A": [0.25, 0.9],
                }
            )
            (base / "labels" / split).mkdir(parents=True, exist_ok=True)
            pw.to_csv(base / "labels" / split / f"ref_{r}_pairwise_labels.csv", index=False)
            out["triplets"][split] += len(pw)
            if split == "test":
                scores = {d: 0.5 + r + k for k, d in enumerate(dists)}
                pd.DataFrame(
                    {
                        "reference image": [ref] * 3,
                        " distorted image": dists,
                        " score for distorted image": [scores[d] for d in dists],
                    }
                ).to_csv(base / "labels" / split / f"ref_{r}_per_image_score.csv", index=False)
                out["pairs"].update(scores)
    return out


def make_bapps(root: Path) -> dict:
    base = root / "dataset" / "2afc"
    counts = {}
    judges = {}
    for split, cats in (("train", ["traditional", "cnn"]), ("val", ["traditional", "superres", "color"])):
        counts[split] = 0
        for c, cat in enumerate(cats):
            for k in range(3):
                stem = f"{k:06d}"
                for s_i, sub in enumerate(("ref", "p0", "p1")):
                    img(
                        base / split / cat / sub / f"{stem}.png",
                        1000 * c + 10 * k + s_i + (0 if split == "train" else 5000),
                        size=(8, 8),
                    )
                j = (k + c + 1) / 10
                (base / split / cat / "judge").mkdir(parents=True, exist_ok=True)
                np.save(base / split / cat / "judge" / f"{stem}.npy", np.array([j]))
                judges[f"{split}/{cat}/{stem}"] = j
                counts[split] += 1
    return {"base": base, "counts": counts, "judges": judges}
