"""Shipped run configurations (TOML): ``paper.toml`` is the paper's grid."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent


def shipped(name: str) -> Path:
    """The path of a shipped config, e.g. ``shipped("paper")``."""
    from robench.core.errors import UnknownNameError

    path = FOLDER / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in FOLDER.glob("*.toml"))
        raise UnknownNameError(f"no shipped config {name!r} (shipped: {', '.join(known)})")
    return path
