"""Weights: a cache under ``$ROBENCH_HOME/weights`` with sha256 on every file and safe loading.

* Loading is ``safetensors`` or ``torch.load(weights_only=True)``; anything that needs a general
  unpickler is refused loudly (a pickle can run code), never loaded with ``weights_only=False``.
* Every cached file is recorded in ``index.json`` (name → file, sha256, source, provenance) and its
  sha256 is checked each time it is loaded: a tampered or truncated file is refused.
* A checkpoint must match the architecture exactly: names, shapes and dtype kind (a float
  parameter never takes integer or bool values, which ``load_state_dict`` would cast silently).
* Files and the index are written to a temp file in the same folder, fsynced, then renamed, so a
  killed process leaves either the old state or the new one; a killed download leaves only a
  ``.part`` that the next fetch resumes and verifies.
* Names follow ``arch.tag``: ``birqa`` (clean), ``birqa.aat`` (a defended variant), ``lpips.alex``.
  A recipe fine-tuned with training seed k > 0 (``robench run --seeds``) is ``birqa.aat-s<k>``;
  seed 0 keeps the plain name (:func:`seeded_name`, :func:`split_seed`).
  Extra files a target needs (LPIPS's ImageNet trunk) are stored under ``<name>#<role>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from robench.core.fetch import fsync_dir, fsync_file
from robench.core.fetch import sha256_file  # noqa: F401  (re-exported: one implementation)
from robench.core.errors import IntegrityError, RobenchError
from robench.core.home import robench_home


class WeightsError(RobenchError):
    """A checkpoint is unsafe, corrupt, or does not fit the architecture."""


def weights_dir() -> Path:
    d = robench_home() / "weights"
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------------------------
# safe loading


def load_state_dict(
    path: str | Path, sha256: str | None = None, sha256_prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict, refusing unsafe or tampered files.

    Understands the wrappers in the wild: pyiqa's ``{"params": ...}``, ``{"state_dict": ...}``,
    ``{"model": ...}``, and DataParallel's ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None or sha256_prefix is not None:
        actual = sha256_file(path)
        if sha256 is not None and actual != sha256.lower():
            raise IntegrityError(f"sha256 mismatch for {path}: expected {sha256.lower()}, got {actual}")
        if sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
            raise IntegrityError(
                f"sha256 of {path} does not start with the published prefix {sha256_prefix} (got {actual[:16]}…)"
            )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"corrupt safetensors file {path}: {exc}") from None
    else:
        try:
            with warnings.catch_warnings():  # torch announces a jit.load that weights_only then refuses
                warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(
                f"refusing to load {path}: it is not a plain tensor checkpoint (torch.load weights_only=True "
                f"rejected it: {str(exc).splitlines()[0]}). robench never unpickles arbitrary objects; convert it "
                f"to a state dict or safetensors first"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            if "TorchScript" in str(exc):
                raise WeightsError(
                    f"refusing to load {path}: it is a TorchScript archive (code, not a plain tensor "
                    f"checkpoint); export its state dict or safetensors instead"
                ) from None
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"corrupt or truncated checkpoint {path}: {why}") from None
    return flatten_checkpoint(obj, str(path))


def flatten_checkpoint(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("params", "params_ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise WeightsError(f"{where}: expected a dict of tensors, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _dtype_kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_complex():
        return "complex"
    return "float" if t.is_floating_point() else "integer"


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with a readable report of missing/unexpected keys, shape and dtype mismatches.

    Float precision may differ (a float16 file loads into a float32 model); the dtype kind may
    not: ``load_state_dict`` would silently cast integer or bool values into float parameters.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = sorted(set(own) & set(state))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in common
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    dtypes = [
        f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}"
        for k in common
        if _dtype_kind(own[k]) != _dtype_kind(state[k])
    ]
    if missing or unexpected or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
        if dtypes:
            parts.append(f"{len(dtypes)} dtype mismatch(es), e.g. {dtypes[:2]}")
        raise WeightsError(f"{where} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Atomically write ``state`` as safetensors; returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sha256_file(path)


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt safetensors file {path}: {exc}") from None


def checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, provenance)`` stored in a robench safetensors file; empty for other formats."""
    if Path(path).suffix != ".safetensors":
        return {}, {}
    meta = safetensors_metadata(path)
    try:
        config, provenance = json.loads(meta.get("config", "{}")), json.loads(meta.get("provenance", "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: config/provenance metadata is not JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(provenance, dict):
        raise WeightsError(f"{path}: config/provenance metadata must be JSON objects")
    return config, provenance


def load_checkpoint(target: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> str:
    """Load a robench checkpoint (the target's own keys) or, failing that, the architecture's
    upstream format; returns ``"own"`` or ``"upstream"``. Neither fitting raises the key report."""
    if set(state) == set(target.state_dict()) or not hasattr(target, "load_upstream"):
        load_into(target, state, where)
        return "own"
    target.load_upstream(state, where)
    return "upstream"


# --------------------------------------------------------------------------------------------
# the index


def _index_path() -> Path:
    return weights_dir() / "index.json"


@contextmanager
def _index_lock() -> Iterator[None]:
    """An exclusive lock for read-modify-write of the index (fcntl; fine for one machine)."""
    import fcntl

    lock = weights_dir() / ".index.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_index() -> dict[str, dict[str, Any]]:
    p = _index_path()
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"weights index {p} is corrupt: {exc}") from None


def _write_index(index: dict[str, dict[str, Any]]) -> None:
    p = _index_path()
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    fsync_file(tmp)
    os.replace(tmp, p)
    fsync_dir(p.parent)


def register(name: str, src: str | Path, source: str, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy ``src`` into the cache as weights ``name`` and record it in the index."""
    src = Path(src)
    safe_name = name.replace("#", "__")
    suffix = "".join(src.suffixes[-1:]) or ".pt"
    files = weights_dir() / "files"
    files.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(files)
    # hash the bytes as they are copied: the digest recorded is that of the file registered
    tmp = files / f"{safe_name}{suffix}.{os.getpid()}.tmp"
    digest = _copy_hashed(src, tmp)
    dest = files / f"{safe_name}-{digest[:12]}{suffix}"
    if src.resolve() == dest.resolve():  # already in the cache
        tmp.unlink()
    else:
        os.replace(tmp, dest)
        fsync_dir(files)
    entry = {
        "name": name,
        "file": str(dest.relative_to(weights_dir())),
        "sha256": digest,
        "source": source,
        "provenance": provenance or {},
        "registered": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with _index_lock():
        index = read_index()
        index[name] = entry
        _write_index(index)
    return entry


def _copy_hashed(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (fsynced) and return the sha256 of the bytes written."""
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fi, open(dest, "wb") as fo:
            for chunk in iter(lambda: fi.read(1 << 20), b""):
                h.update(chunk)
                fo.write(chunk)
            fo.flush()
            os.fsync(fo.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _clean_stale_tmp(folder: Path) -> None:
    """Remove ``<file>.<pid>.tmp`` copies left by killed processes (never in the index)."""
    from robench.core.fetch import clean_stale_tmp_files

    clean_stale_tmp_files(folder)


def seeded_name(name: str, train_seed: int | None) -> str:
    """The weights name of a recipe variant fine-tuned with training seed ``train_seed``:
    ``birqa.aat`` for seed 0 or None (the existing name, so caches and stores stay valid),
    ``birqa.aat-s1`` for seed 1 (``robench run --seeds``)."""
    return name if not train_seed else f"{name}-s{int(train_seed)}"


def split_seed(name: str) -> tuple[str, int]:
    """``"birqa.aat-s2"`` → ``("birqa.aat", 2)``; a name without the suffix → ``(name, 0)``."""
    import re

    m = re.fullmatch(r"(.+)-s(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


#: weights that ship with the package (the quick profile's targets, so a fresh clone attacks at
#: once): ``MANIFEST.json`` maps a name to its file, sha256 and provenance. Read-only: training
#: registers under ``$ROBENCH_HOME`` and never writes here.
SHIPPED_DIR = Path(__file__).with_name("shipped")


def shipped() -> dict[str, dict[str, Any]]:
    """The package's own weights: name → manifest entry (``path`` added); none when
    ``ROBENCH_SHIPPED_WEIGHTS=0`` (train everything here)."""
    manifest = SHIPPED_DIR / "MANIFEST.json"
    if os.environ.get("ROBENCH_SHIPPED_WEIGHTS", "1") == "0" or not manifest.is_file():
        return {}
    try:
        entries = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{manifest}: not JSON ({exc})") from None
    return {name: {**e, "path": str(SHIPPED_DIR / e["file"])} for name, e in entries.items()}


def lookup(name: str) -> dict[str, Any] | None:
    """The weights registered under ``name``: this machine's own (trained or imported here)
    first, then the package's shipped file; None when neither exists."""
    entry = read_index().get(name)
    if entry is None:
        return shipped().get(name)
    return {**entry, "path": str(weights_dir() / entry["file"])}


def verify_all() -> list[dict[str, Any]]:
    """Recompute every cached and shipped file's sha256; report ok/mismatch/missing per entry."""
    out = []
    entries = [(n, e, weights_dir() / e["file"]) for n, e in sorted(read_index().items())]
    entries += [(n, e, Path(e["path"])) for n, e in sorted(shipped().items())]
    for name, entry, p in entries:
        if not p.is_file():
            status = "missing"
        else:
            status = "ok" if sha256_file(p) == entry["sha256"] else "sha256 mismatch"
        out.append(
            {"name": name, "file": str(p), "status": status, "sha256": entry["sha256"], "source": entry["source"]}
        )
    return out


def torch_hub_checkpoint(filename: str) -> Path | None:
    """Where torch.hub keeps a downloaded file (``$TORCH_HOME/hub/checkpoints``), if present."""
    p = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return p if p.is_file() else None


# --------------------------------------------------------------------------------------------
# import and fetch
