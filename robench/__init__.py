"""robench: adversarial-robustness benchmark for full-reference image-quality metrics."""

from __future__ import annotations

__version__ = "0.1.0"

from robench.errors import RobenchError, UnknownNameError  # noqa: E402


def load_dataset(name: str, split: str = "train", **options):
    """Load a registered dataset split, e.g. ``load_dataset("mini", split="test")`` or
    ``load_dataset("kadid10k", split="test", root="/data/kadid10k")``."""
    from robench.registry import DATASETS

    return DATASETS.get(name)(split=split, **options)


__all__ = ["__version__", "load_dataset", "RobenchError", "UnknownNameError"]
