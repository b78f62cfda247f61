"""Targets (IQA models). Each module registers itself in ``robench.core.registry.MODELS``;
:func:`load_model` resolves ``arch.tag`` names to an architecture plus weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robench.core.errors import MissingWeightsError, RobenchError
from robench.core.target import state_digest  # noqa: F401  (re-exported)
from robench.models.kernels import reference_kernels  # noqa: F401  (the kernels bench reads it)


def split_name(name: str) -> tuple[str, str | None]:
    """``"birqa.aat"`` → ``("birqa", "aat")``; ``"lpips.alex"`` → ``("lpips.alex", None)``
    (the longest registered prefix is the architecture, the rest the weights tag)."""
    from robench.core.registry import MODELS

    if name in MODELS or name.startswith("pyiqa:"):
        return name, None
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        base = ".".join(parts[:i])
        if base in MODELS:
            return base, ".".join(parts[i:])
    MODELS.entry(name)  # raises UnknownNameError with did-you-mean
    raise AssertionError  # pragma: no cover


def pyiqa_catalogue() -> list[dict[str, Any]]:
    """Every pyiqa full-reference metric with whether it runs here (robench.models.pyiqa_adapter)."""
    from robench.models.pyiqa_adapter import catalogue

    return catalogue()


def build(name: str, **kwargs: Any):
    """The architecture only (random initialisation)."""
    from robench.core.registry import MODELS

    base, _ = split_name(name)
    if base.startswith("pyiqa:"):
        from robench.models.pyiqa_adapter import PyIQATarget

        return PyIQATarget(base.split(":", 1)[1], **kwargs)
    try:
        return MODELS.get(base)(**kwargs)
    except TypeError as exc:
        raise RobenchError(f"model {base!r} does not accept {sorted(kwargs)}: {exc}") from None


def load_model(name: str, weights: str | Path | None = None, device: Any = "cpu", **kwargs: Any):
    """Build target ``name`` and load its weights.

    ``weights=None``: the best available — official weights, else weights trained here, else a
    clear error naming the command that makes them. ``weights="none"``: random initialisation.
    A path: that file (a robench checkpoint, or the upstream format of the architecture).
    """
    from robench.core import weights as W
    from robench.core.device import resolve_device
    from robench.core.target import WeightsInfo

    device = resolve_device(device)  # auto | cpu | cuda | cuda:N, checked against this machine
    base, tag = split_name(name)
    if weights is not None and str(weights) != "none":
        path = Path(str(weights))
        if not path.is_file():
            raise RobenchError(f"weights file not found: {weights}")
        config, provenance = W.checkpoint_meta(path)
        target = build(base, **{**config, **kwargs})
        W.load_checkpoint(target, W.load_state_dict(path), str(path))
        info = WeightsInfo("imported", W.sha256_file(path), str(path), provenance)
        target.card = target.card.with_weights(info, name=name)
        return target.to(device).eval()

    entry = W.lookup(name) if weights is None else None
    if entry is not None:  # robench weights (trained here or imported) carry their arch config
        kwargs = {**W.checkpoint_meta(entry["path"])[0], **kwargs}
    target = build(base, **kwargs)
    if weights == "none" or not getattr(target, "requires_weights", True):
        src = "random" if getattr(target, "requires_weights", True) else "none"
        target.card = target.card.with_weights(WeightsInfo(src), name=name)
        return target.to(device).eval()
    if tag is None and hasattr(target, "official_state"):  # official weights first
        official = target.official_state()
        if official is not None:
            target.load_upstream(official, "official weights")
            target.card = target.card.with_weights(WeightsInfo("official", state_digest(official)), name=name)
            return target.to(device).eval()
    if entry is None:
        recipe, k = W.split_seed(tag) if tag else (None, 0)
        hint = (
            f"`robench train --model {base} --dataset mini` trains it here"
            if tag is None
            else f"`robench train --model {base} --defense {recipe}"
            + (f" --train-seed {k}" if k else "")
            + "` makes it"
        )
        raise MissingWeightsError(
            f"no weights for {name!r}: no official weights found offline and none trained here; "
            f"{hint}, `robench weights import PATH --model {name}` adds a file, or pass weights='none' "
            f"for a random initialisation"
        )
    state = W.load_state_dict(entry["path"], sha256=entry["sha256"])
    W.load_into(target, state, entry["path"])
    target.card = target.card.with_weights(
        WeightsInfo(entry["source"], entry["sha256"], entry["path"], entry.get("provenance", {})), name=name
    )
    return target.to(device).eval()
