"""What an attack trains once per target (FACPA's generator, UAP's patches), cached under
``$ROBENCH_HOME/attacks/<name>/<key>/`` as safetensors + ``meta.json`` (sha256 and provenance)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def publish(folder: Path, tensors: dict[str, torch.Tensor], filename: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``tensors`` and ``meta`` (plus the file's sha256) into ``folder`` atomically: built in a
    ``.tmp<pid>`` folder and renamed, so a killed training leaves no half cache; when another
    process published first, its files are kept. Returns the meta now in ``folder``."""
    from robench.core.weights import save_safetensors

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sha = save_safetensors(tensors, tmp / filename)
    (tmp / "meta.json").write_text(json.dumps({"sha256": sha, **meta}, indent=2, default=str))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: use its files, drop ours
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((folder / "meta.json").read_text())
