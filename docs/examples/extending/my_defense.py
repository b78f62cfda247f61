"""Example inference defence: a fixed box blur of the distorted image.

One file that registers itself in ``DEFENSES``. ``--defense example-blur`` wraps any target in it
(``robench.defenses.wrappers.Defended``); ``--defense aat+example-blur`` puts it in front of a
recipe-trained variant. A training recipe is the other kind of defence: subclass
``robench.defenses.recipes.TrainingRecipe`` and declare ``label`` and ``order`` (see recipes.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.core.errors import RobenchError
from robench.core.registry import DEFENSES
from robench.defenses.wrappers import InferenceDefense


@DEFENSES.register("example-blur", summary="example: fixed box blur of dist (exact gradient)")
class BoxBlur(InferenceDefense):
    randomised = False  # deterministic: attacks need no EOT (True: objective and scores averaged over draws)
    gradient = "exact"  # differentiable; "bpda": forward the transform, backward the identity
    applies_to = "dist"  # dist only: the trusted reference branch stays cacheable (ref may be None)
    defaults = {"size": 3}  # every parameter (--defense-option example-blur.size=5)
    test_options = {"size": 3}  # small parameters for the generic tests

    def __init__(self, **params):
        super().__init__(**params)  # unknown parameters fail with the list of known ones
        k = int(self.params["size"])
        if k < 1 or k % 2 == 0:
            raise RobenchError(f"example-blur: size must be an odd positive integer, got {k}")

    # prepare(options, **run) runs before the wrapper is built (DiffPure trains its denoiser
    # there); a fixed blur needs nothing, so the inherited no-op stays

    def forward(self, dist: torch.Tensor, ref):
        p = int(self.params["size"]) // 2
        out = F.avg_pool2d(F.pad(dist, (p, p, p, p), mode="replicate"), 2 * p + 1, stride=1)
        return out, ref
