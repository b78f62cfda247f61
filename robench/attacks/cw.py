"""Carlini & Wagner (IEEE S&P 2017) for a score, a minimisation attack (docs/method.md §4):

    minimise ‖δ‖₂² + c · max((q_target − q(x + δ)) / scale, −κ),   q_target = q_clean + target_gain · scale

in tanh space (x + δ = (tanh(w) + 1)/2, so the image stays in [0, 1]) with Adam, and a per-image
binary search over c (×10 until the target gain is reached, then bisection). It returns, per
image, the successful perturbation of smallest L2 (else the one with the highest ``q``) and the
highest-``q`` iterate seen; the harness clips both to every ε and keeps the better per budget.

``scale`` is :func:`~robench.attacks.base.observed_scale` of the batch: the standard deviation of
its clean oriented scores (falling back to the card's score range, then ``|mean q_clean|``, then 1,
for a batch without spread). It sets both the target gain and the hinge normalisation, so
``target_gain`` means the same fraction of the metric's observed spread for every metric, whatever
its card declares (with the card's range, PSNR's 0–100 dB asked for a 25 dB gain, SSIM's
[−1, 1] for 0.5). The scale used is recorded per image in ``AttackResult.extra["scale"]``."""

from __future__ import annotations

import torch

from robench.attacks.base import Attack, Param, observed_scale
from robench.core.registry import ATTACKS


@ATTACKS.register("cw", summary="C&W L2 for a score: tanh space, Adam, binary search over c (minimisation)")
class CW(Attack):
    kind = "minimisation"
    needs = "gradients"
    binary_steps: Param[int] = Param(5, "rounds of the per-image binary search over c")
    steps: Param[int] = Param(100, "Adam steps per round", budget=True)
    lr: Param[float] = Param(0.01, "Adam learning rate on w (x + δ = (tanh w + 1)/2)")
    c_init: Param[float] = Param(10.0, "first trade-off constant c")
    kappa: Param[float] = Param(0.0, "κ: the hinge stops at a gain this far (in scale units) past the target")
    target_gain: Param[float] = Param(
        0.25, "target gain in units of the batch's clean spread (q_target = q_clean + target_gain · scale)"
    )
    suite = 3
    budgets = {"quick": {"binary_steps": 3, "steps": 20}, "paper": {"binary_steps": 5, "steps": 100}}
    #: measured (reports/bench/attack-strength.md): lowest ratio to a converged reference per way
    strength = {"quick": {"down": 0.104, "up": 0.332}}
    test_options = {"binary_steps": 1, "steps": 3}

    def cost(self) -> dict[str, float]:
        return {"grad": self.params["binary_steps"] * self.params["steps"], "forward": 0}

    def minimise(self, f, x, q0, eps_max):
        n = x.shape[0]
        scale = observed_scale(f.plain(q0), f.target)  # the metric's own spread, whatever the direction
        self._extra = {"scale": torch.full((n,), scale)}  # recorded per image (one value per batch)
        q_target = q0 + self.target_gain * scale
        dev = x.device
        c = torch.full((n,), float(self.c_init), device=dev)
        lo = torch.zeros(n, device=dev)
        hi = torch.full((n,), float("inf"), device=dev)
        best = x.clone()
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_q = q0.clone()
        top, top_q = x.clone(), q0.clone()  # the highest-q iterate seen, whatever its L2
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        for _ in range(int(self.binary_steps)):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=float(self.lr))
            success = torch.zeros(n, dtype=torch.bool, device=dev)
            for _ in range(int(self.steps)):
                adv = (torch.tanh(w) + 1) / 2
                with torch.enable_grad():
                    q = f(adv)
                    l2 = (adv - x).flatten(1).pow(2).sum(dim=1)
                    hinge = ((q_target - q) / scale).clamp_min(-float(self.kappa))
                    loss = (l2 + c * hinge).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    ok = q >= q_target
                    success |= ok
                    better = ok & (l2 < best_l2)
                    closer = ~found & ~ok & (q > best_q)
                    upd = better | closer
                    hi_q = q > top_q
                    top[hi_q], top_q[hi_q] = adv[hi_q].detach(), q[hi_q].detach()
                    best[upd] = adv[upd].detach()
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best_q = torch.where(upd, q.detach(), best_q)
                    found |= ok
            # binary search: success → smaller c, failure → larger c
            hi = torch.where(success, torch.minimum(hi, c), hi)
            lo = torch.where(success, lo, torch.maximum(lo, c))
            c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
        # two candidates: the harness clips both to every ε and keeps, per image and budget, the
        # higher q (the smallest-L2 success is rarely the best point once clipped to a small ε)
        return [best, top]
