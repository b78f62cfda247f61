"""PGD (Madry et al., ICLR 2018), L∞, on the oriented quality (robench's own loop, attacks/_ascent.py).

Restart 0 starts at δ = 0 and extra ``restarts`` start uniformly in the ball; the step decays
(``schedule="cosine"``: α_t = step0·ε·½(1 + cos(π t/T)), or ``"apgd"``: APGD's halving schedule);
per image the best iterate over all steps and restarts is returned. The audit's PGD (random start,
constant step ε/2, last iterate) ended below the clean image on 14/32 TOPIQ items: a constant sign
step of ε/2 overshoots the score's curvature and oscillates. Step counts per profile come from the
measured convergence curve (``robench bench attack-strength``; README)."""

from __future__ import annotations

from robench.attacks._ascent import ascend
from robench.attacks.base import Attack
from robench.core.registry import ATTACKS


@ATTACKS.register("pgd", summary="PGD L∞: zero start (+ random restarts), decaying step, best iterate (white-box)")
class PGD(Attack):
    name = "pgd"
    kind = "fixed"
    needs = "gradients"
    budget_params = ("steps",)
    defaults = {"steps": 20, "restarts": 1, "schedule": "cosine", "step0": 0.5}

    def perturb(self, f, x, eps, q0):
        return ascend(f, x, q0, eps, steps=int(self.steps), restarts=int(self.restarts), schedule=str(self.schedule),
                      step0=float(self.step0), seed=self.seed)
