"""Adversarial images kept beside a store (``robench run --keep-images``): one file per image,
named by the sha256 of its bytes (content-addressed: the same image is stored once, a file is
verified on every read, and a crash leaves at most an unreferenced file).

Lossless: the float32 pixels the attack returned and the cell scored, as ``.npy`` (NumPy's format,
read without pickle). At 128×128 px a file is 3·128·128·4 + 128 = 196 736 bytes; at 512×384,
2 359 424. Folder: ``<store folder>/<store name>-images/<sha[:2]>/<sha>.npy``."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from robench.core.errors import RobenchError


#: items per cell whose images ``keep_images="top"`` keeps (the report's gallery): those the
#: attack moved most at the cell's largest ε, with their distorted and reference images
TOP_ITEMS = 4
#: above this many bytes of adversarial images a cell keeps none in "top" mode (the attack would
#: have to hold them all in memory to pick the top items)
TOP_MAX_BYTES = 512 * 2**20


def keep_rows(
    rows: list[dict],
    images,
    items,
    signs,
    lower_better: bool,
    mode: str,
    folder: Path,
    eps: list[float],
    top: int = TOP_ITEMS,
) -> None:
    """Name the kept images in the cell's ``rows`` (in place): every row's adversarial image for
    ``all``; for the ``top`` items (largest directed move at the largest ε) also their distorted
    and reference images (every mode keeps those for the gallery)."""
    k_of = {float(e): k for k, e in enumerate(eps)}
    e_max = max(float(e) for e in eps)
    orient = -1.0 if lower_better else 1.0
    # the directed move of oriented quality, sign · (q_adv − q_clean), at the largest ε
    moves = {
        r["item"]: float(signs[r["item"]]) * orient * (r["score"] - r["clean_score"])
        for r in rows
        if float(r["eps"]) == e_max
    }
    chosen = set(sorted(moves, key=lambda i: (-moves[i], i))[:top])
    for row in rows:
        i = row["item"]
        if mode == "all" or i in chosen:
            row["image"] = save_image(folder, images[k_of[float(row["eps"])], i])
        if i in chosen:
            row["dist_image"] = save_image(folder, items.dist[i : i + 1][0])
            row["ref_image"] = save_image(folder, items.ref[i : i + 1][0])


def images_folder(store_path: str | Path) -> Path:
    p = Path(store_path)
    return p.parent / f"{p.stem}-images"


def _path(folder: Path, sha: str) -> Path:
    return folder / sha[:2] / f"{sha}.npy"


def save_image(folder: Path, image: torch.Tensor) -> str:
    """Write one 3×H×W image (float32) unless a file with its content exists; return its sha256."""
    buf = io.BytesIO()
    np.save(buf, image.detach().cpu().float().numpy(), allow_pickle=False)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = _path(folder, sha)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return sha


def load_image(folder: Path, sha: str) -> torch.Tensor:
    """The image of ``sha`` (3×H×W float32), its content verified."""
    path = _path(folder, sha)
    if not path.is_file():
        raise RobenchError(f"kept image {path} is missing (was the store's -images folder moved or deleted?)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise RobenchError(f"kept image {path} does not match its sha256 (modified or corrupt)")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.dtype != np.float32:
        raise RobenchError(f"kept image {path} is not a 3×H×W float32 image (shape {arr.shape}, {arr.dtype})")
    return torch.from_numpy(arr.copy())
