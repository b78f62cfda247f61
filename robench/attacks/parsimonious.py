"""Parsimonious black-box attack (Moon, An & Song, ICML 2019), L∞, score-based.

The perturbation lives on the vertices of the ε-ball: every block × channel is ±ε (start: all
−ε). Blocks are visited in random mini-batches (``batch_blocks``, 64 in the paper); on each
mini-batch an accelerated lazy-greedy local search alternates *insertion* (flip −ε → +ε) and
*deletion* (+ε → −ε): marginal gains of all candidates are evaluated once, then the candidate
with the largest (stale) gain is re-evaluated and accepted if its fresh gain is positive and
still at least the next stale gain. After a full pass over the blocks, the block size halves.
The paper's ImageNet defaults: 10 000 queries, initial block 32 on 256×256 (here: 1/8 of the
shorter side unless ``block_size`` is given). Every image runs its own search; forwards are
batched over the images that still have queries left.

One change for a score: the all −ε start is kept **only when it does not lower q**; otherwise
that image starts at δ = 0 and every block is free to go to +ε (insertion) or −ε (deletion), the
search accepting only moves that raise ``q`` (measured: a −ε start lowered q and the search
never got back above the clean image with 32 queries, so the attack reported 0 gain)."""

from __future__ import annotations

import math

import torch

from robench.attacks.base import Attack, Param
from robench.core.registry import ATTACKS


@ATTACKS.register("parsimonious", summary="Parsimonious lazy-greedy block search (Moon et al. 2019, black-box)")
class Parsimonious(Attack):
    kind = "fixed"
    needs = "scores"
    queries: Param[int] = Param(10000, "score queries per image", budget=True)
    block_size: Param[int | None] = Param(None, "initial block side in pixels (None: 1/8 of the image side)")
    batch_blocks: Param[int] = Param(64, "blocks per mini-batch of the lazy-greedy search (the paper: 64)")
    max_rounds: Param[int] = Param(5, "insertion/deletion passes per mini-batch")
    suite = 6
    # quick: initial block 32 px on the profile's 128-px images (¼ of the side, not the paper's ⅛):
    # on BiRQA-AAT, 16 items, ε 8/255, mean gain at 300 / 600 queries 0.068 / 0.081 with block 32,
    # 0.049 / 0.070 with 16, 0.037 / 0.048 with 8 (scripts/budget_curve.py; README "Speed")
    budgets = {
        "quick": {"queries": 300, "batch_blocks": 16, "block_size": 32},
        "paper": {"queries": 10000, "batch_blocks": 64},
    }
    test_options = {"queries": 20, "batch_blocks": 4}

    def cost(self) -> dict[str, float]:
        return {"grad": 0, "forward": self.params["queries"]}

    def perturb(self, f, x, eps, q0):
        n, c, h, w = x.shape
        budget = int(self.queries)
        b = int(self.block_size or max(1, min(h, w) // 8))
        # block state: −1 (−ε), +1 (+ε) or 0 (unperturbed: only for images whose −ε start lowered q).
        # The search's bookkeeping (block states, scores, gains: small tensors, a decision per
        # query) stays on the CPU; only the images are built on the target's device.
        A = torch.full((n, c, math.ceil(h / b), math.ceil(w / b)), -1, dtype=torch.int8)
        used = torch.zeros(n, dtype=torch.long)

        def image(Ab: torch.Tensor, bs: int, rows: torch.Tensor) -> torch.Tensor:
            sign = Ab.to(x.device, x.dtype)
            d = sign.repeat_interleave(bs, dim=2).repeat_interleave(bs, dim=3)[..., :h, :w]
            return (x[rows] + eps * d).clamp(0.0, 1.0)

        def evaluate(Ab: torch.Tensor, bs: int, rows: torch.Tensor) -> torch.Tensor:
            used[rows] += 1
            with torch.no_grad():
                return f(image(Ab, bs, rows), rows).cpu()

        all_rows = torch.arange(n)
        q0 = q0.cpu()
        q_cur = evaluate(A, b, all_rows)
        worse = q_cur < q0
        A[worse] = 0
        q_cur = torch.where(worse, q0, q_cur)
        while (used < budget).any():
            nblocks = A[0].numel()
            order = torch.randperm(nblocks)
            for start in range(0, nblocks, int(self.batch_blocks)):
                batch = order[start : start + int(self.batch_blocks)]
                for _ in range(int(self.max_rounds)):
                    changed = False
                    for insert in (True, False):
                        changed |= self._lazy_greedy(A, b, batch, insert, q_cur, used, budget, evaluate)
                    if not changed:
                        break
                if not (used < budget).any():
                    break
            if b > 1:  # a full pass done: halve the blocks (each splits into 2×2 of the same sign)
                b2 = max(1, b // 2)
                A = A.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[
                    ..., : math.ceil(h / b2), : math.ceil(w / b2)
                ]
                b = b2
        return image(A, b, all_rows)

    @staticmethod
    def _lazy_greedy(A, b, batch, insert, q_cur, used, budget, evaluate) -> bool:
        n = A.shape[0]
        flat = A.view(n, -1)
        # candidates: blocks of the mini-batch not yet on this phase's side (+ε for insertion)
        side = 1 if insert else -1
        cand = flat[:, batch] != side
        gains = torch.full((n, len(batch)), -float("inf"))
        for j in range(len(batch)):
            rows = torch.nonzero(cand[:, j] & (used < budget)).flatten()
            if rows.numel() == 0:
                continue
            Ab = flat[rows].clone()
            Ab[:, batch[j]] = side
            gains[rows, j] = evaluate(Ab.view(-1, *A.shape[1:]), b, rows) - q_cur[rows]
        changed = False
        while True:
            top2 = gains.topk(min(2, gains.shape[1]), dim=1)
            best = top2.values[:, 0]
            rows = torch.nonzero((best > 0) & (used < budget)).flatten()
            if rows.numel() == 0:
                return changed
            j = top2.indices[rows, 0]
            nxt = top2.values[rows, 1] if gains.shape[1] > 1 else torch.full((rows.numel(),), -float("inf"))
            Ab = flat[rows].clone()
            Ab[torch.arange(rows.numel()), batch[j]] = side
            q_new = evaluate(Ab.view(-1, *A.shape[1:]), b, rows)
            fresh = q_new - q_cur[rows]
            accept = (fresh > 0) & (fresh >= nxt)
            acc_rows = rows[accept]
            flat[acc_rows, batch[j[accept]]] = side
            q_cur[acc_rows] = q_new[accept]
            gains[acc_rows, j[accept]] = -float("inf")  # no longer a candidate in this phase
            gains[rows[~accept], j[~accept]] = fresh[~accept]
            changed |= bool(accept.any())
