"""Gradient ascent on the oriented quality within an L∞ ball: the engine of PGD and of
AutoAttack's APGD component, written here (not through torchattacks/pyautoattack) because a
score attack needs three things those libraries do not give a one-output regressor:

* **zero first start.** Restart 0 starts at δ = 0; only extra restarts start uniformly in the
  ball. (A random start lowered ``q`` on 13–16 of 16 images, measured: at ε = 8/255 uniform
  noise is itself a distortion the metric punishes.)
* **best iterate.** Every evaluated point is a candidate; per image the highest ``q`` seen
  across steps and restarts is returned (never the last iterate: a sign step oscillates).
* **a converging step.** ``cosine``: α_t = step0·ε·½(1 + cos(π t / T)), decaying to 0 over the
  run; ``apgd``: Croce & Hein (ICML 2020) Algorithm 1 — step 2ε, momentum 0.75, halved at the
  checkpoints p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) when fewer than ρ of the steps
  since the last checkpoint improved the best value, or when neither the step nor the best
  value changed; after a halving the walk restarts from the best point.

``q`` itself is the objective (the logits adapter's cross-entropy ``softplus((q − q₀)/s)`` is a
monotone transform of it: sign steps and "improved" tests are identical). Queries are counted
by the BoundTarget: one per evaluated point per image, a gradient evaluation being one.

Two savings, both off by default and measured before a profile adopts them (README "Speed"):

* ``patience`` (cosine only): in the second half of a walk (once the step is below half its first
  value), an item whose best ``q`` of the walk has not risen by more than ``tol`` × its gain in
  ``patience`` steps leaves the batch; the walk goes on with the items still moving
  (``f(x[rows], rows)``). Counted from the first step, it stopped items while the large early
  steps oscillated: PGD 80 × 2 kept 0.90–0.91 of the converged move at ε 8/255 upwards on BiRQA
  and LPIPS-Alex. An item's walk is the same until it leaves, so a later exit is never weaker.
* ``amp="bf16"``: the search direction ∂q/∂x is taken under bf16 autocast, but no bf16 value is
  ever kept: a point whose bf16 ``q`` is within the bf16 rounding margin of the walk's best is
  re-scored in float32 and kept only when that exact value is better, so the best iterate and
  every ``q`` the attack compares are float32.

``inertia`` (cosine only): APGD's heavy ball on the sign walk — the step taken is
``(1 − inertia)·(z − x_k) + inertia·(x_k − x_{k−1})``, z the plain sign step (APGD's momentum 0.75 is
inertia 0.25). Measured on BiRQA (shipped weights, 32 mini test items, ε 4/255, downwards): 80 steps
from δ = 0 reached 1.29 mean move with inertia 0.25 against 1.09 without, 1.15 for APGD 80 and
1.06–1.08 for random starts; two items moved 6.1 and 6.3 against 3.4 and 2.7 — a sign walk alone
stalls on a ridge the carried displacement crosses. Upwards 0.624 vs 0.622; SSIM and LPIPS-Alex
equal either way.

``first="random"`` starts restart 0 at a random point too (the convergence check's "another
start", engine/cell.py: a zero start can stop in a worse basin — at δ = 0 a distortion-free
pixel has ∂SSIM/∂x = 0 and a sign step never moves it downwards).
"""

from __future__ import annotations

import math

import torch

from robench.core.target import BoundTarget


#: bf16 keeps 8 significant bits: a bf16 ``q`` within this fraction of the walk's best (both bf16
#: values, so the rounding of the shared part cancels) may still be better in float32
BF16_MARGIN = 2.0**-8


def _value_and_grad(
    f: BoundTarget, x: torch.Tensor, idx: torch.Tensor | None = None, amp: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` and ``∂q/∂x`` of ``x`` (the rows ``idx`` of the bound batch when given); under bf16
    autocast when ``amp`` (then ``q`` is only a screen, see :meth:`_Best.keep`)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        if amp is None:
            q = f(xg, idx)
        else:
            with torch.autocast(xg.device.type, dtype=torch.bfloat16):
                q = f(xg, idx)
        (g,) = torch.autograd.grad(q.float().sum(), xg)
    return q.detach().float(), g.detach()


def _project(x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + (z - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def _start(x: torch.Tensor, eps: float, restart: int, gen: torch.Generator, first: str = "zero") -> torch.Tensor:
    if restart == 0 and first == "zero":
        return x.clone()
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device) * 2 - 1
    return _project(x, x + eps * u, eps)


class _Best:
    """Per image the best point seen and its float32 ``q``; with ``amp`` also the bf16 screen
    value it had when kept."""

    def __init__(self, f: BoundTarget, x: torch.Tensor, q0: torch.Tensor, amp: str | None):
        self.f, self.amp = f, amp
        self.x, self.q = x.clone(), q0.detach().clone()
        self.screen = self.q.clone()
        if amp is not None:  # the clean point's own bf16 value: screens compare bf16 with bf16
            with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
                self.screen = f(x).float()
            f.queries -= 1  # the harness's clean score, not a point of the search
        self.rescored = 0  # float32 re-scorings (bf16 only): their share is the price of the screen

    def keep(self, rows: torch.Tensor, pts: torch.Tensor, q: torch.Tensor) -> None:
        """Offer the points ``pts`` of the batch rows ``rows`` with values ``q`` (float32, or the
        bf16 screen under ``amp``: then candidates are re-scored in float32 before any is kept)."""
        if self.amp is None:
            better = q > self.q[rows]
            r = rows[better]
            self.x[r], self.q[r] = pts[better], q[better]
            return
        ref = self.screen[rows]
        cand = q > ref - BF16_MARGIN * ref.abs()
        if not bool(cand.any()):
            return
        r = rows[cand]
        with torch.no_grad():
            exact = self.f(pts[cand], r)
        self.rescored += int(r.numel())
        ok = exact > self.q[r]
        r = r[ok]
        self.x[r], self.q[r], self.screen[r] = pts[cand][ok], exact[ok], q[cand][ok]


def _cosine_walk(
    f: BoundTarget,
    x: torch.Tensor,
    cur: torch.Tensor,
    eps: float,
    steps: int,
    step0: float,
    best: _Best,
    q0: torch.Tensor,
    patience: int,
    tol: float,
    amp: str | None,
    trace: list | None,
    inertia: float = 0.0,
) -> int:
    """One walk of the cosine schedule from ``cur``; returns the gradient evaluations it spent
    (fewer than the full batch × steps when ``patience`` lets converged items leave)."""
    n = x.shape[0]
    active = torch.arange(n, device=x.device)
    q, g = _value_and_grad(f, cur, None, amp)
    best.keep(active, cur, q)
    walk = q.clone()  # this walk's best value per item (a random start begins below the global best)
    stale = torch.zeros(n, dtype=torch.long, device=x.device)
    spent = n
    prev = cur.clone() if inertia else None
    for t in range(int(steps)):
        alpha = step0 * eps * 0.5 * (1 + math.cos(math.pi * t / max(1, int(steps))))
        part = active.numel() < n
        pts = _project(x[active], cur[active] + alpha * g.sign(), eps)
        if inertia and t > 0:  # heavy ball as APGD's: a share of the last displacement carries on
            c = cur[active]
            pts = _project(x[active], c + (1 - inertia) * (pts - c) + inertia * (c - prev[active]), eps)
        if inertia:
            prev[active] = cur[active]
        cur[active] = pts
        q, g = _value_and_grad(f, pts, active if part else None, amp)
        spent += int(active.numel())
        best.keep(active, pts, q)
        if patience:
            w = walk[active]
            gained = q > w + tol * (w - q0[active]).abs().clamp_min(1e-12)
            walk[active] = torch.maximum(w, q)
            if t >= int(steps) // 2:  # counted only once the large early steps no longer oscillate
                stale[active] = torch.where(gained, torch.zeros_like(stale[active]), stale[active] + 1)
                moving = stale[active] < int(patience)
                active, g = active[moving], g[moving]
        if trace is not None:
            trace.append(float((best.q - q0).mean()))
        if active.numel() == 0:
            break
    return spent


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step (Croce & Hein 2020, §3.1)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(v * steps - 1e-9)) for v in p[1:] if v <= 1})  # 1e-9: 0.57·100 is 57.000…01


def ascend(
    f: BoundTarget,
    x: torch.Tensor,
    q0: torch.Tensor,
    eps: float,
    steps: int,
    restarts: int = 1,
    schedule: str = "cosine",
    step0: float = 0.5,
    rho: float = 0.75,
    momentum: float = 0.75,
    seed: int = 0,
    trace: list | None = None,
    first: str = "zero",
    patience: int = 0,
    tol: float = 1e-3,
    amp: str | None = None,
    stats: dict | None = None,
    inertia: float = 0.0,
) -> torch.Tensor:
    """Best iterate per image of ``restarts`` sign-gradient walks of ``steps`` steps each.

    ``trace`` (optional list) receives, after every step, the mean best-so-far gain
    ``mean(q_best − q0)`` — the convergence curve ``robench bench attack-strength`` plots.
    ``patience``/``tol`` and ``amp`` are the savings, ``inertia`` the heavy ball, of the module
    docstring (cosine only);
    ``stats`` (optional dict) receives the gradient evaluations spent and the float32
    re-scorings."""
    if schedule not in ("cosine", "apgd"):
        raise ValueError(f"schedule must be 'cosine' or 'apgd', got {schedule!r}")
    if first not in ("zero", "random"):
        raise ValueError(f"first must be 'zero' or 'random', got {first!r}")
    if amp not in (None, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")
    if schedule == "apgd" and (patience or amp or inertia):
        raise ValueError("patience, amp and inertia apply to the cosine schedule only (APGD has its own momentum)")
    if not 0.0 <= float(inertia) < 1.0:
        raise ValueError(f"inertia must be in [0, 1), got {inertia!r}")
    gen = torch.Generator().manual_seed(int(seed))
    keeper = _Best(f, x, q0, amp)
    best, best_q = keeper.x, keeper.q  # the same tensors: APGD's branch updates them in place
    n = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    spent = 0
    for r in range(max(1, int(restarts))):
        cur = _start(x, eps, r, gen, first)
        if schedule == "cosine":
            spent += _cosine_walk(f, x, cur, eps, steps, step0, keeper, q0, patience, tol, amp, trace, inertia)
            continue
        q, g = _value_and_grad(f, cur)
        better = q > best_q
        best[better], best_q[better] = cur[better], q[better]
        spent += n * (int(steps) + 1)
        # APGD (Algorithm 1): per-image step, momentum, halving at checkpoints
        eta = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device)
        checks = set(apgd_checkpoints(int(steps)))
        x_best_r, q_best_r = cur.clone(), q.clone()  # this restart's best (the walk restarts from it)
        prev = cur.clone()
        improved = torch.zeros(n, dtype=x.dtype, device=x.device)
        since = 0
        eta_at_check, qbest_at_check = eta.clone(), q_best_r.clone()
        for k in range(int(steps)):
            z = _project(x, cur + eta.view(view) * g.sign(), eps)
            a = 1.0 if k == 0 else momentum
            nxt = _project(x, cur + a * (z - cur) + (1 - a) * (cur - prev), eps)
            prev, cur = cur, nxt
            q_new, g = _value_and_grad(f, cur)
            improved += (q_new > q).to(x.dtype)
            q = q_new
            up = q > q_best_r
            x_best_r[up], q_best_r[up] = cur[up], q[up]
            better = q > best_q
            best[better], best_q[better] = cur[better], q[better]
            since += 1
            if trace is not None:
                trace.append(float((best_q - q0).mean()))
            if (k + 1) in checks:
                frac = improved / max(1, since)
                stuck = (eta == eta_at_check) & (q_best_r <= qbest_at_check)
                halve = (frac < rho) | stuck
                eta_at_check, qbest_at_check = eta.clone(), q_best_r.clone()
                eta = torch.where(halve, eta / 2, eta)
                if halve.any():  # restart the walk from this restart's best point (only those rows queried)
                    cur[halve] = x_best_r[halve]
                    prev[halve] = x_best_r[halve]
                    rows = torch.nonzero(halve).flatten()
                    q, g = q.clone(), g.clone()
                    q[rows], g[rows] = _value_and_grad(f, cur[rows], rows)
                improved.zero_()
                since = 0
    if stats is not None:
        stats["gradients"] = stats.get("gradients", 0) + spent
        stats["rescored"] = stats.get("rescored", 0) + keeper.rescored
    return best
