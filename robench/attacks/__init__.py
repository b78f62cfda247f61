"""Attacks. Each module registers itself in ``robench.core.registry.ATTACKS``."""
