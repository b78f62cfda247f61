"""pyautoattack 0.2.0 (the official AutoAttack code, repackaged) adapted to a one-output score
(docs/method.md §4): APGD with CE through the logits adapter and ``best_loss=True`` (the default
mode returns clean images for a regressor; only ``best_loss=True`` keeps the whole batch, so the
reference stays aligned); Square with ``margin_and_loss`` returning ``(1, −q)`` and the label
carrying each image's row index, so the subsets Square evaluates find their own references."""

from __future__ import annotations

import torch

from robench.attacks.base import ScoreLogits, require, score_scale
from robench.core.target import BoundTarget

INSTALL = "pip install pyautoattack==0.2.0"


def apgd(
    f: BoundTarget, x: torch.Tensor, q0: torch.Tensor, eps: float, n_iter: int, rho: float, seed: int
) -> torch.Tensor:
    pa = require("pyautoattack.autopgd_base", INSTALL)
    model = ScoreLogits(f, q0, score_scale(f.target))
    atk = pa.APGDAttack(
        model, n_iter=int(n_iter), norm="Linf", n_restarts=1, eps=eps, seed=seed, loss="ce", rho=rho, device=x.device
    )
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return atk.perturb(x, y, best_loss=True)


def square(f: BoundTarget, x: torch.Tensor, eps: float, n_queries: int, p_init: float, seed: int) -> torch.Tensor:
    sq = require("pyautoattack.square", INSTALL)

    class ScoreSquare(sq.SquareAttack):
        def margin_and_loss(self, xs, rows):
            # margin 1 keeps every image "not yet fooled" (no success criterion for a score);
            # the loss Square minimises is −q
            with torch.no_grad():
                q = f(xs, rows)
            return torch.ones_like(q), -q

    atk = ScoreSquare(
        None,
        norm="Linf",
        n_queries=int(n_queries),
        eps=eps,
        p_init=p_init,
        n_restarts=1,
        seed=seed,
        loss="margin",
        resc_schedule=True,
        device=x.device,
    )
    atk.init_hyperparam(x)
    rows = torch.arange(x.shape[0], device=x.device)
    _, adv = atk.attack_single_run(x.clone(), rows)
    return adv
