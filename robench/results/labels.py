"""Order, labels and roles of attacks and defences in tables and plots, read from what each
plugin declares (``Attack.suite``; a training recipe's ``order``, ``label``, ``compare_with``,
``logs_bound``, ``purification_reference``) — never from a list of names kept here."""

from __future__ import annotations

from typing import Any, Iterable

from robench.core.registry import attack_suite, training_recipes

#: the row of a target without any defence (the engine's own name, not a plugin)
BASE = "none"
BASE_LABEL = "base"


def recipes() -> tuple[str, ...]:
    """Training recipes in table order (each declares ``order``), after the undefended base."""
    return (BASE, *training_recipes())


def recipe_declares(name: str | None, attr: str, default: Any = None) -> Any:
    """A recipe's declaration (``compare_with``, ``logs_bound``, …); ``default`` for anything
    that is not a registered training recipe (the base, inference defences, unknown names)."""
    cls = training_recipes().get(name or "")
    return getattr(cls, attr, default) if cls is not None else default


def attack_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    order = attack_suite()
    return [a for a in order if a in names] + sorted(names - set(order))


def defense_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    order = recipes()
    return [d for d in order if d in names] + sorted(names - set(order))


def defense_label(d: str) -> str:
    if d == BASE:
        return BASE_LABEL
    return recipe_declares(d, "label", d)
