"""Attacks. Each module registers itself in ``robench.core.registry.ATTACKS``."""

# the attack contract the engine uses (it imports this package, never a module inside it)
from robench.attacks.base import Attack, AttackResult, BudgetViolation, ModeGuard, observed_scale  # noqa: E402,F401
from robench.attacks.smoothed import CHECK_ATTACKS  # noqa: E402,F401
