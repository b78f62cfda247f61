"""PGD (Madry et al., ICLR 2018), L∞, random start, via torchattacks.

Step size ``alpha = step_factor · ε / steps`` (Madry's 2.5·ε/steps rule: the walk can cross the
ε-ball from side to side). Defaults: 10 steps, random start; quick uses 5 steps, paper 20."""

from __future__ import annotations

from robench.attacks import _torchattacks
from robench.attacks.base import Attack
from robench.registry import ATTACKS


@ATTACKS.register("pgd", summary="PGD L∞ with random start (torchattacks, white-box)")
class PGD(Attack):
    name = "pgd"
    kind = "fixed"
    needs = "gradients"
    defaults = {"steps": 10, "step_factor": 2.5, "random_start": True}

    def perturb(self, f, x, eps, q0):
        steps = int(self.steps)
        return _torchattacks.run("PGD", f, x, q0, eps=eps, alpha=self.step_factor * eps / steps, steps=steps,
                                 random_start=bool(self.random_start))
