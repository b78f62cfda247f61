"""Attacks on a median-smoothed target (``robench certify --check-attack``): they search for a
perturbation inside the certified L2 radius that moves the smoothed score out of its interval.
Not harness attacks (they take an L2 radius and a noise level, not an L∞ budget): listed in
:data:`CHECK_ATTACKS` by the name ``--check-attack`` takes."""

from __future__ import annotations

from typing import Callable

import torch


def l2_pgd_smoothed(
    target,
    x: torch.Tensor,
    ref_prep,
    idx: torch.Tensor,
    sign: float,
    radius: float,
    sigma: float,
    steps: int,
    eot: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """L2 PGD on ``sign ·`` the mean noisy score (EOT over ``eot`` draws a step) inside the L2
    ball of ``radius`` and [0, 1]: step 2.5·R/steps along the normalised gradient (Madry et al.'s
    L2 step; SmoothAdv, Salman et al. 2019, for the smoothed objective). Returns ``x + δ``."""
    from robench.core.target import index_prepared

    delta = torch.zeros_like(x)
    alpha = 2.5 * radius / steps
    rows = idx.repeat(eot).to(x.device)
    prep = index_prepared(ref_prep, rows)
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        with torch.enable_grad():
            xa = (x + d).repeat(eot, 1, 1, 1)
            noise = torch.randn(xa.shape, generator=gen).to(x.device)
            q = target.orient(target.call("score_with", (xa + sigma * noise).clamp(0.0, 1.0), prep))
            obj = sign * q.view(eot, -1).mean(dim=0)
            (g,) = torch.autograd.grad(obj.sum(), d)
        gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta + alpha * g / gn
        dn = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(radius / dn.clamp_min(1e-12), max=1.0)
        delta = (x + delta).clamp(0.0, 1.0) - x  # the box may only shrink the norm
    return (x + delta).detach()


#: ``--check-attack`` name → attack(target, x, prepared ref, rows, sign, radius, sigma, steps, eot, generator)
CHECK_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"pgd": l2_pgd_smoothed}
