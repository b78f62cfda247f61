"""Importing and fetching weights files for a target (official checkpoints, robench's own
files): above the models, because recognising a file's role needs the architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from robench.core.errors import RobenchError
from robench.core.weights import WeightsError, checkpoint_meta, load_checkpoint, load_state_dict, register, weights_dir


def detect_role(state: dict[str, torch.Tensor]) -> str:
    """``lin`` (an LPIPS-style lin-weights file), ``trunk`` (torchvision ``features.K.*``) or
    ``full``; a part role applies to a target that declares it (``Target.weight_parts``)."""
    keys = list(state)
    if keys and all(k.startswith(("lin", "lins.")) for k in keys):
        return "lin"
    if keys and all(k.startswith(("features.", "classifier.")) for k in keys):
        return "trunk"
    return "full"


def import_weights(
    path: str | Path, model: str, role: str | None = None, _target: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Check that ``path`` loads into ``model`` and add it to the cache.

    A robench checkpoint (the target's own keys) becomes weights ``model`` (source ``imported``);
    an upstream checkpoint becomes ``model#official`` (or ``#lin`` / ``#trunk`` for LPIPS's two
    files), which ``load_model`` prefers as official weights. ``_target``: a freshly built default
    instance to check against (saves building it twice when the file carries no config).
    """
    from robench.models import build, split_name

    path = Path(path)
    state = load_state_dict(path)
    config = checkpoint_meta(path)[0]
    target = _target if _target is not None and not config else build(split_name(model)[0], **config)
    role = role or detect_role(state)
    if role == "full":
        provenance = {"imported_from": str(path.resolve())}
        if load_checkpoint(target, state, str(path)) == "own":
            return register(model, path, source="imported", provenance=provenance)
        return register(f"{model}#official", path, source="official", provenance=provenance)
    if role in target.weight_parts:
        target.load_part(role, state, str(path))
        return register(f"{model}#{role}", path, source="official", provenance={"imported_from": str(path.resolve())})
    raise WeightsError(f"role {role!r} does not apply to {model!r}")


def fetch_official(
    model: str, url: str | None = None, sha256: str | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Download the files listed in ``model``'s card, check their sha256 (full or published
    prefix), and import them. ``url``/``sha256`` override a single-file card (mirrors, tests)."""
    from robench.core.fetch import download
    from robench.models import build, split_name

    target = build(split_name(model)[0])
    files = list(target.card.official_weights)
    if not files:
        raise RobenchError(f"{model!r} has no official weights (robench trains it: `robench train --model {model}`)")
    if (url or sha256) and len(files) > 1:
        raise RobenchError(f"{model!r} has {len(files)} official files; --url/--sha256 need a single-file card")
    out = []
    for f in files:
        dest = weights_dir() / "downloads" / f.filename
        expected = sha256 or f.sha256
        # the published prefix is checked before the download is renamed into place
        path = download(
            url or f.url, dest, expected, progress=progress, sha256_prefix=f.sha256_prefix if expected is None else None
        )
        try:
            out.append(import_weights(path, model, role=f.role, _target=target if len(files) == 1 else None))
        except WeightsError:  # verified bytes, but unsafe or unfit: do not keep them around
            path.unlink(missing_ok=True)
            raise
    return out
