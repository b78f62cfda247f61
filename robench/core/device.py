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

import re
from typing import Any

import torch

from robench.core.errors import RobenchError

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
        raise RobenchError(f"{where} {text}: CUDA is not available on this machine ({why}); "
                           f"use --device cpu or --device auto")
    count = torch.cuda.device_count()
    i = torch.cuda.current_device() if index is None else int(index)
    if i >= count:
        have = ", ".join(f"cuda:{k}" for k in range(count))
        raise RobenchError(f"{where} {text}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                           f"({have}); use one of them, --device auto or --device cpu")
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
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj
