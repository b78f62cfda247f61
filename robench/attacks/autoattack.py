"""AutoAttack for a score (Croce & Hein, ICML 2020), through pyautoattack: APGD-CE (logits
adapter, ``best_loss=True``) and Square (p_init 0.8, the standard version's value); per image the
worse case of the two (the higher ``q``) is reported, and which component won is recorded.
APGD-DLR and FAB are classifier-only (DLR needs ≥ 3 logits) and are left out."""

from __future__ import annotations

import torch

from robench.attacks import _pyautoattack
from robench.attacks.base import Attack
from robench.registry import ATTACKS


@ATTACKS.register("autoattack", summary="AutoAttack: APGD-CE + Square (pyautoattack), worst case per image")
class AutoAttack(Attack):
    name = "autoattack"
    kind = "fixed"
    needs = "gradients"
    defaults = {"apgd_iter": 100, "apgd_rho": 0.75, "square_queries": 5000, "square_p_init": 0.8}
    COMPONENTS = ("apgd-ce", "square")

    def perturb(self, f, x, eps, q0):
        a = _pyautoattack.apgd(f, x, q0, eps, self.apgd_iter, self.apgd_rho, self.seed)
        b = _pyautoattack.square(f, x, eps, self.square_queries, self.square_p_init, self.seed)
        with torch.no_grad():
            qa, qb = f(a), f(b)
        f.queries -= 2  # the comparison is the harness's, not the attack's
        use_b = qb > qa
        self._extra = {"component": use_b.long()}  # index into COMPONENTS
        return torch.where(use_b.view(-1, 1, 1, 1), b, a)
