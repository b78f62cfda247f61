"""Targets (IQA models). Each module registers itself in ``robench.registry.MODELS``."""
