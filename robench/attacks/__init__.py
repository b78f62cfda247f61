"""Attacks. Each module registers itself in ``robench.registry.ATTACKS``."""
