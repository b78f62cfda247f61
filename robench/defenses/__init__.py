"""Defences. Each module registers itself in ``robench.core.registry.DEFENSES``."""

# what the engine uses to wrap a target (it imports this package, never a module inside it)
from robench.defenses.wrappers import Defended, parse_defense  # noqa: E402,F401
