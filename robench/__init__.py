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
    ``load_model("lpips.alex", weights="none")`` (random init) or ``load_model("topiq.fr", weights=path)``."""
    from robench.models import load_model as _load

    return _load(name, weights=weights, device=device, **options)


def load_attack(name: str, profile: str = "quick", seed: int = 0, **params):
    """An attack with the profile's budgets and any hyper-parameter overridden, e.g.
    ``load_attack("pgd", steps=20)``; ``attack(target, dist, ref, eps=[2/255, 8/255])``."""
    from robench.core.registry import ATTACKS

    return ATTACKS.get(name)(profile=profile, seed=seed, **params)


__all__ = ["load_attack", "__version__", "load_dataset", "load_model", "RobenchError", "UnknownNameError"]
