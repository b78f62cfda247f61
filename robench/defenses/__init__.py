"""Defences. Each module registers itself in ``robench.core.registry.DEFENSES``."""
