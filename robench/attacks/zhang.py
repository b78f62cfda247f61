"""The perceptual attack of Zhang et al. (NeurIPS 2022), adapted to an FR score (docs/method.md §4).

Source: "Perceptual Attacks of No-Reference Image Quality Models with Human-in-the-Loop",
Zhang et al., NeurIPS 35 (2022), pp. 2916–2929, arXiv 2210.00933; code
github.com/zwx8981/PerceptualAttack_BIQA. The column "Zhang et al." of the BiRQA paper's Tables 7
and 9. The paper attacks NR-IQA models under a Lagrangian formulation: optimise the image itself
with Adam so that the model's score moves while a full-reference model of perception (L∞, SSIM,
LPIPS or DISTS) keeps it close to the unattacked image. Their public script maximises
``(s(x') − s(x))² + λ·FR(x', x)`` with Adam (lr 0.005, 200 steps), the gradient L2-normalised
per image, a random start of −1/255 or 0 per pixel, λ swept over a wide range (default 5000),
and clamps to [0, 1] only — no ε ball.

robench **[choice]** (docs/method.md §4), per image and budget ε:

    maximise  (q(x') − q_clean) / scale  +  lam · SSIM(x', x)       over x' = x + δ

* ``scale`` is :func:`~robench.attacks.base.observed_scale` (the spread of the batch's clean
  oriented scores), so ``lam`` weighs the same relative gain for every metric; it is recorded per
  image in ``AttackResult.extra["scale"]``. The score term is the oriented quality raised, not
  the squared change (this threat model only raises ``q``).
* SSIM is :func:`robench.models.classic.ssim_rgb` (RGB per channel, Gaussian 11/σ 1.5, data range
  1, valid filtering, channels averaged), against the unattacked distorted image ``x`` — never
  the reference. It needs images of at least 11 px.
* Adam (``lr``) on the image from δ = 0 (zero start: no random noise), ``steps`` gradient steps, δ
  projected to the ε ball and the image to [0, 1] after every step like every robench attack.
* Per image the best iterate is returned: the highest ``q`` among the evaluated (all feasible)
  iterates, the clean image when none beats it. Queries: ``steps`` gradient evaluations + one
  forward of the final iterate.

Difference from the implementation the AT- authors' tables come from: their training code runs
Adam lr 0.005 for 10 iterations on the loss ``SSIM(x', x) − score_norm(x')``, clamped to [0, 1]
only. Minimising that loss also *lowers* SSIM, the opposite of the paper's intent (keep the
attacked image perceptually close); robench adds the SSIM term with a plus sign, keeps the ε ball
of the rest of the suite and returns the best iterate. Their 10 iterations are not converged (on
quick-trained BiRQA, mini v2, 32 items, ε 8/255: gain 0.71 at 10 steps vs 0.52 at 5, flagged; 1.08
at 40 vs 1.04 at 20, converged). On the weights of reports/quick (96 items) 40 steps failed the
rule (1.116 vs 1.060 at 20: 5.0 %) and 80 met it (1.133) — measured upwards. Downwards a run from
δ = 0 stops short (0.92–0.94 of a converged reference on SSIM), so the quick profile spends the same
80 steps as two runs of 40, the second from a random point of the ball; the paper profile 100.
"""

from __future__ import annotations

import torch

from robench.attacks.base import Attack, Param, observed_scale
from robench.core.errors import RobenchError
from robench.models.classic import ssim_rgb
from robench.core.registry import ATTACKS


@ATTACKS.register(
    "zhang", summary="Zhang et al. 2022 perceptual attack: Adam on q/scale + λ·SSIM(x', x), ε-projected (white-box)"
)
class Zhang(Attack):
    kind = "fixed"
    needs = "gradients"
    iterative = True
    steps: Param[int] = Param(100, "Adam steps per run and budget", budget=True)
    lr: Param[float] = Param(0.005, "Adam learning rate on δ (Zhang et al.'s code and the AT- authors')")
    lam: Param[float] = Param(1.0, "weight of SSIM(x', x) against the score gain in units of the clean spread")
    restarts: Param[int] = Param(
        1, "Adam runs of steps each, the first from δ = 0 (see first), the rest uniform in the ball", quiet=True
    )
    first: Param[str] = Param("zero", "where run 0 begins: 'zero' (δ = 0) or 'random'", quiet=True)
    another_start = {"first": "random"}
    suite = 8
    # quick: two Adam runs of 40 (δ = 0, then a random start) for one of 80: from δ = 0 alone it
    # reached 0.92–0.94 of the converged reference on SSIM's downward items (32 items, ε 8/255),
    # 40 × 2 reaches 0.998 (down) / 0.993 (up) at the same cost; paper: robench's choice (the AT-
    # authors ran 10, Zhang et al.'s own script 200)
    budgets = {"quick": {"steps": 40, "restarts": 2}, "paper": {"steps": 100}}
    #: measured (reports/bench/attack-strength.md): lowest ratio to a converged reference per way
    strength = {"quick": {"down": 0.782, "up": 0.968}}
    test_options = {"steps": 2}

    def cost(self) -> dict[str, float]:
        r = self.params.get("restarts", 1)
        return {"grad": self.params["steps"] * r, "forward": r}  # + one forward of each run's final iterate

    def perturb(self, f, x, eps, q0):
        if min(x.shape[-2:]) < 11:
            raise RobenchError(
                f"attack 'zhang' needs images of at least 11×11 px (SSIM's window); got {tuple(x.shape[-2:])}"
            )
        n = x.shape[0]
        scale = observed_scale(f.plain(q0), f.target)  # the metric's own spread, whatever the direction
        self._extra = {"scale": torch.full((n,), scale)}  # recorded per image (one value per batch)
        best, best_q = x.clone(), q0.detach().clone()
        gen = torch.Generator().manual_seed(int(self.seed))
        for r in range(max(1, int(self.restarts))):
            if r == 0 and self.first == "zero":
                start = x
            else:
                u = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device) * 2 - 1
                start = (x + eps * u).clamp(0.0, 1.0)
            self._walk(f, x, start, eps, q0, scale, best, best_q)
        return best

    def _walk(self, f, x, start, eps, q0, scale, best, best_q):
        """One Adam run from ``start``; ``best``/``best_q`` updated in place."""
        lam = float(self.lam)
        # Adam on the image itself (the same updates as on δ, x being fixed); projecting the image
        # keeps it exactly in [0, 1] (x + δ could round past 1)
        z = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=float(self.lr))
        for _ in range(int(self.steps)):
            with torch.enable_grad():
                q = f(z)
                objective = (q - q0) / scale + lam * ssim_rgb(z, x)
                opt.zero_grad()
                (-objective.sum()).backward()
            with torch.no_grad():
                better = q.detach() > best_q  # the current iterate is feasible: a candidate
                best[better], best_q[better] = z.detach()[better], q.detach()[better]
                opt.step()
                z.copy_((x + (z - x).clamp(-eps, eps)).clamp(0.0, 1.0))  # ε ball, then [0, 1]
        with torch.no_grad():  # the last step's iterate
            q = f(z)
            better = q > best_q
            best[better], best_q[better] = z.detach()[better], q[better]
