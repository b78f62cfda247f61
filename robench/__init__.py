"""robench: adversarial-robustness benchmark for full-reference image-quality metrics."""

from __future__ import annotations

from robench.core.errors import RobenchError, UnknownNameError
from robench.core.version import __version__


def load_dataset(name: str, split: str = "train", **options):
    """Load a registered dataset split, e.g. ``load_dataset("mini", split="test")`` or
    ``load_dataset("kadid10k", split="test", root="/data/kadid10k")``."""
    from robench.core.registry import DATASETS

    return DATASETS.get(name)(split=split, **options)


def load_model(name: str, weights=None, device: str = "cpu", **options):
    """Load a target, e.g. ``load_model("birqa")`` (best available weights),
    ``load_model("lpips.alex", weights="none")`` (random init) or ``load_model("topiq.fr", weights=path)``;
    ``device``: auto | cpu | cuda | cuda:N (robench.core.device.resolve_device)."""
    from robench.models import load_model as _load

    return _load(name, weights=weights, device=device, **options)


def load_attack(name: str, profile: str = "quick", seed: int = 0, **params):
    """An attack with the profile's budgets and any hyper-parameter overridden, e.g.
    ``load_attack("pgd", steps=20)``; ``attack(target, dist, ref, eps=[2/255, 8/255])``."""
    from robench.core.registry import ATTACKS

    return ATTACKS.get(name)(profile=profile, seed=seed, **params)


def run(config=None, *, progress: bool = True, **settings):
    """Run a grid from Python: ``robench.run(RunConfig(...))``, ``robench.run("run.toml")`` or
    ``robench.run(model="birqa", defense="aat", attacks="all")`` (the CLI's names), with
    ``device="auto" | "cpu" | "cuda" | "cuda:N"`` where to compute (recorded, never keyed),
    ``amp="bf16"`` (autocast; keyed) and ``compile=True`` (torch.compile; recorded), each checked
    against float32 eager first (robench.engine.speed). The same
    settings give the same cell keys and records as ``robench run``; returns the grid report."""
    from pathlib import Path

    from robench.core.config import RunConfig
    from robench.engine.grid import run_config

    if config is None:
        config = RunConfig.from_dict(settings, where="robench.run")
    elif isinstance(config, (str, Path)):
        if settings:
            raise RobenchError("robench.run: give a config file or settings, not both")
        config = RunConfig.from_toml(config)
    elif settings:
        raise RobenchError("robench.run: give a RunConfig or settings, not both")
    return run_config(config, progress=progress)


__all__ = ["run", "load_attack", "__version__", "load_dataset", "load_model", "RobenchError", "UnknownNameError"]
