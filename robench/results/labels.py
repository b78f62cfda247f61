"""Order and labels of attacks and defences in tables and plots."""

from __future__ import annotations

from typing import Iterable

from robench.attacks.base import SUITE


RECIPES = ("none", "r", "at", "aat")


RECIPE_LABEL = {"none": "base", "r": "R", "at": "AT", "aat": "AAT"}


def attack_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [a for a in SUITE if a in names] + sorted(names - set(SUITE))


def defense_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [d for d in RECIPES if d in names] + sorted(names - set(RECIPES))


def defense_label(d: str) -> str:
    return RECIPE_LABEL.get(d, d)
