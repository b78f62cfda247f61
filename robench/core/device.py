"""The device a run computes on: one place that turns ``--device`` / ``device =`` / ``device=``
into a :class:`torch.device`, and the record of it every result keeps.

``auto`` is CUDA when ``torch.cuda.is_available()`` (its current device), else the CPU; ``cuda``
is the current CUDA device, ``cuda:N`` that one. A device this machine does not have is a
:class:`RobenchError` (exit code 2) naming the fix, never a CUDA traceback hours into a run.
The device is provenance, not identity: it is recorded with every result and never enters a
cell's key (the same cell on CPU and GPU is the same cell; its weights digest and items are
what make it one).
"""

from __future__ import annotations

import gc
import re
from typing import Any, Callable

import torch

from robench.core.errors import OutOfMemory, RobenchError

#: what ``--device`` accepts
CHOICES = "auto, cpu, cuda or cuda:N"

_SPEC = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def resolve_device(spec: "str | torch.device | None" = "cpu", where: str = "--device") -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``; None = ``"cpu"``) → the
    device, checked against this machine. ``where`` names the setting in the error message."""
    text = "cpu" if spec is None else str(spec).strip().lower()
    m = _SPEC.fullmatch(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise RobenchError(f"{where} must be {CHOICES}, got {str(spec)!r}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if available else torch.device("cpu")
    if not available:
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is built without CUDA"
        else:
            why = f"torch {torch.__version__} has CUDA {torch.version.cuda} but no GPU is visible"
        raise RobenchError(
            f"{where} {text}: CUDA is not available on this machine ({why}); use --device cpu or --device auto"
        )
    count = torch.cuda.device_count()
    i = torch.cuda.current_device() if index is None else int(index)
    if i >= count:
        have = ", ".join(f"cuda:{k}" for k in range(count))
        raise RobenchError(
            f"{where} {text}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"({have}); use one of them, --device auto or --device cpu"
        )
    return torch.device("cuda", i)


def device_record(device: "str | torch.device") -> dict[str, Any]:
    """What a result records about where it was computed: the device, and for CUDA the GPU's
    name and the CUDA version torch was built with."""
    device = torch.device(device)
    rec: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(device)
        rec["cuda"] = torch.version.cuda
    return rec


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module without any)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_device(obj: Any, device: "str | torch.device") -> Any:
    """``obj`` with every tensor in it on ``device``: a tensor, or tuples, lists, dicts and
    dataclasses of them (a training batch); anything else as it is. On the tensor's own device
    ``Tensor.to`` returns the same tensor: nothing is copied on the CPU."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj) if f.init}
        )
    return obj


# --------------------------------------------------------------------------------------------
# out of memory: halve the batch and retry it


def is_oom(exc: BaseException) -> bool:
    """An accelerator out-of-memory error: ``torch.cuda.OutOfMemoryError``, or a RuntimeError
    whose message says "out of memory" (cuDNN, cuBLAS and MPS report it that way). Never a
    RobenchError (the batch-1 failure below says "out of memory" too)."""
    if isinstance(exc, RobenchError):
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


def free_memory() -> None:
    """Give a failed batch's memory back before the retry: collect its tensors (reference cycles
    of autograd graphs) and empty CUDA's caching allocator when CUDA is present."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def halving_batches(
    n: int,
    batch_size: int | None,
    body: Callable[[int, int], None],
    device: "str | torch.device" = "cpu",
    what: str = "batch",
) -> tuple[int, int]:
    """Call ``body(start, stop)`` over ``[0, n)`` in batches of ``batch_size``; a batch that runs
    out of memory is retried from its start at half its size (then every later batch is that
    size), down to 1; out of memory at 1 is :class:`OutOfMemory` naming ``what``. ``body`` must
    leave no trace of a failed call (it overwrites its output rows; counters it keeps are its
    own to restore). The global RNG (CPU and the CUDA device's) is rewound to the batch's start
    before a retry, so when the first batch fails the run equals one at the smaller batch from
    the start. Returns ``(batch size in use at the end, number of halvings)``."""
    device = torch.device(device)
    start, bs, halved = 0, max(1, int(batch_size or n or 1)), 0
    while start < n:
        stop = min(n, start + bs)
        rng = _rng_state(device)
        failed = None
        try:
            body(start, stop)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_oom(exc):
                raise
            failed = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if failed is None:
            start = stop
            continue
        free_memory()  # outside the except block: the traceback (and the batch's tensors it holds) is gone
        if stop - start <= 1:
            raise OutOfMemory(
                f"{what}: out of memory on {device} even at batch size 1 ({failed}); use smaller "
                "images, a device with more memory, or --device cpu"
            )
        bs = (stop - start) // 2
        halved += 1
        _set_rng_state(rng, device)
    return bs, halved


#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's defaults (the mmap threshold starts at 128 KiB and adapts up to 32 MiB)
_GLIBC_DEFAULT = {"mmap_threshold": 128 * 1024, "trim_threshold": 128 * 1024}


def tune_cpu_allocator(on: bool = True) -> bool:
    """Keep large tensors' memory in the process between allocations (glibc only).

    glibc serves every allocation over its mmap threshold (at most 32 MiB) by a fresh mmap and
    unmaps it on free, so each activation of an attack step's batch (32×64×64×64 floats = 32 MiB)
    page-faults its memory in again: an out-of-place element-wise op measured 3× slower than the
    same op on reused memory. A 1 GiB threshold keeps freed blocks for reuse (resident memory
    stays near the peak of one step, which the step needs anyway). ``on=False`` restores glibc's
    defaults (benchmarks compare both). Returns whether the setting took effect."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl): nothing to tune
    size = 1 << 30 if on else None
    ok = mallopt(_M_MMAP_THRESHOLD, size or _GLIBC_DEFAULT["mmap_threshold"])
    ok &= mallopt(_M_TRIM_THRESHOLD, size or _GLIBC_DEFAULT["trim_threshold"])
    return bool(ok)
