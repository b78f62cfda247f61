"""Example attack: random-sign hill climbing, a score-based (black-box) L∞ attack.

One file that registers itself in ``ATTACKS``. Each query proposes ``best + step·ε·s`` for a
random sign pattern ``s``, projected to the ε-ball and [0, 1], and keeps it per image when it
raises the oriented quality ``q``. The harness (``Attack.__call__``) does the rest: it binds the
target to the references, counts queries, verifies every image is within ε and in [0, 1], and
keeps the clean image where the attack ends below it.
"""

from __future__ import annotations

import torch

from robench.attacks.base import Attack, Param
from robench.core.registry import ATTACKS


@ATTACKS.register("example-hillclimb", summary="example: random-sign hill climbing, L∞ (black-box: scores only)")
class RandomSignHillClimb(Attack):
    kind = "fixed"  # run once per ε ("minimisation": run once, clipped to every ε by the harness)
    needs = "scores"  # forwards only; "gradients" attacks refuse non-differentiable targets
    iterative = True
    # every hyper-parameter: its default and what it means; budget=True: halved by the engine's
    # convergence check (flag not_converged) and scaled by --escalate
    queries: Param[int] = Param(100, "score queries per image", budget=True)
    step: Param[float] = Param(0.5, "proposal size as a fraction of ε")
    budgets = {"quick": {"queries": 20}, "paper": {"queries": 200}}  # what each profile sets
    test_options = {"queries": 4}  # small parameters for the generic tests
    suite = None  # not in `--attacks all` (an int places it in the suite and in report tables)

    def cost(self) -> dict[str, float]:
        # evaluations per image and budget: `robench validate` turns them into a time estimate
        return {"grad": 0, "forward": self.params["queries"]}

    def perturb(self, f, x, eps, q0):
        # f(x) is q of x against the bound references (each call counts a query per image)
        gen = torch.Generator().manual_seed(self.seed)  # seeded: the same run gives the same images
        best, best_q = x.clone(), q0.clone()
        with torch.no_grad():
            for _ in range(int(self.queries)):
                sign = torch.randint(0, 2, x.shape, generator=gen).to(x) * 2 - 1
                cand = best + float(self.step) * eps * sign
                cand = (x + (cand - x).clamp(-eps, eps)).clamp(0.0, 1.0)  # the ε-ball, then [0, 1]
                q = f(cand)
                up = q > best_q
                best[up], best_q[up] = cand[up], q[up]
        return best
