"""Example target: negative mean absolute error, a full-reference metric (higher is better).

One file that registers itself in ``MODELS`` (as robench/models/classic.py registers psnr/ssim).
Import it (or ship it in a package with an entry point) and ``--model example-nmae`` works.
"""

from __future__ import annotations

import torch

from robench.core.registry import MODELS
from robench.core.target import Target, TargetCard


# lower_better is the score direction: `robench ls models` shows it, and attacks, training and
# robustness scores use the oriented quality q (−score when lower_better), never the raw score
@MODELS.register(
    "example-nmae", summary="example: negative mean absolute error on RGB (higher is better)", lower_better=False
)
class NegativeMAE(Target):
    requires_weights = False  # analytic: nothing to train or load (load_model records weights "none")
    test_options: dict = {}  # constructor options for a small, fast instance in the generic tests

    def __init__(self):
        super().__init__()
        # the card: the name must be the registry name; min_size is the smallest image side accepted
        self.card = TargetCard(
            name="example-nmae",
            lower_better=False,
            score_range=(-1.0, 0.0),
            min_size=1,
            summary="negative mean absolute error on RGB",
            paper="—",
        )

    def score(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        # N×3×H×W in [0, 1] (validated by Target.forward) → N raw scores, differentiable w.r.t. dist
        return -(dist - ref).abs().flatten(1).mean(dim=1)
