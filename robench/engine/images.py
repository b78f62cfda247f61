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
