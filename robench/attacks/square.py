"""Square Attack (Andriushchenko et al., ECCV 2020), L∞, score-based (black-box), through
pyautoattack: vertical-stripe start, random square windows set to ±ε per channel, kept when
``q`` improves. ``p_init`` 0.05 and 10 000 queries as in the MSU IQA benchmark (paper profile);
quick uses 48 queries."""

from __future__ import annotations

from robench.attacks import _pyautoattack
from robench.attacks.base import Attack
from robench.registry import ATTACKS


@ATTACKS.register("square", summary="Square Attack L∞ (pyautoattack, black-box: scores only)")
class Square(Attack):
    name = "square"
    kind = "fixed"
    needs = "scores"
    defaults = {"queries": 10000, "p_init": 0.05}

    def perturb(self, f, x, eps, q0):
        return _pyautoattack.square(f, x, eps, self.queries, self.p_init, self.seed)
