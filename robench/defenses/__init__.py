"""Defences. Each module registers itself in ``robench.registry.DEFENSES``."""
