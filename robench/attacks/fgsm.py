"""FGSM (Goodfellow et al., ICLR 2015): one signed-gradient step of size ε, via torchattacks."""

from __future__ import annotations

from robench.attacks import _torchattacks
from robench.attacks.base import Attack
from robench.core.registry import ATTACKS


@ATTACKS.register("fgsm", summary="FGSM: one signed-gradient step of size ε (torchattacks, white-box)")
class FGSM(Attack):
    kind = "fixed"
    needs = "gradients"
    iterative = False
    suite = 1
    budgets = {}  # one step: nothing to budget
    test_options = {}

    def cost(self) -> dict[str, float]:
        return {"grad": 1, "forward": 0}

    def perturb(self, f, x, eps, q0):
        return _torchattacks.run("FGSM", f, x, q0, eps=eps)
