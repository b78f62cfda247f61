"""Run a torchattacks L∞ attack on a score through the ``[0, (q − q_clean)/scale]`` adapter."""

from __future__ import annotations

import torch

from robench.attacks.base import ScoreLogits, require, score_scale
from robench.core.target import BoundTarget

# torchattacks 3.5.1 pins requests~=2.25.1 and declares torchvision, but imports neither:
# installing it without dependencies keeps the environment's requests (README set-up).
INSTALL = "pip install --no-deps torchattacks==3.5.1"


def run(cls_name: str, f: BoundTarget, x: torch.Tensor, q0: torch.Tensor, **kwargs) -> torch.Tensor:
    ta = require("torchattacks", INSTALL)
    model = ScoreLogits(f, q0, score_scale(f.target))
    atk = getattr(ta, cls_name)(model, **kwargs)
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return atk(x, labels)
