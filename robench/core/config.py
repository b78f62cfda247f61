"""The run configuration: every setting of a run, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSpec:
    model: str
    attacks: list[str]
    dataset: str = "mini"
    eps: list[float] | None = None  # /255 units; None = the profile's
    profile: str = "quick"
    n: int | None = None  # items; None = the profile's (0 = whole split)
    seed: int = 0
    split: str = "test"
    defense: str | None = None
    weights: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    store: Path | None = None
    force: bool = False
