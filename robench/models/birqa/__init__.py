"""BiRQA (Bidirectional Robust Quality Assessment, arXiv 2602.20351), implemented from the
paper: analytic features (``features``) feeding a bidirectional multiscale pyramid (``network``)."""

from __future__ import annotations

import torch

from robench.models.birqa.features import AnalyticFeatures
from robench.models.birqa.network import BiRQANet
from robench.core.registry import MODELS
from robench.core.target import Target, TargetCard


@MODELS.register(
    "birqa",
    default=True,
    summary="BiRQA: analytic features + bidirectional pyramid (CSRAM/SCGB/RAH); predicts MOS, higher is better",
    lower_better=False,
)
class BiRQA(Target):
    predicts_mos = True
    test_options = {"width": 0.25}  # a tiny model for the generic tests

    def __init__(
        self, width: float = 1.0, csram: bool = True, scgb: bool = True, rah: bool = True, lbp_tau: float = 0.02
    ):
        super().__init__()
        self.config = {"width": width, "csram": csram, "scgb": scgb, "rah": rah, "lbp_tau": lbp_tau}
        self.features = AnalyticFeatures(lbp_tau=lbp_tau)
        self.net = BiRQANet(width=width, csram=csram, scgb=scgb, rah=rah)
        self.card = TargetCard(
            name="birqa",
            lower_better=False,
            score_range=(1.0, 5.0),
            min_size=16,
            summary="BiRQA (robench implementation from the paper; no public code or weights exist)",
            license="robench (MIT)",
            paper="BiRQA: Bidirectional Robust Quality Assessment for Images, arXiv 2602.20351",
        )
        # the head regresses MOS directly: keep the calibration fixed at the identity
        for p in self.calibration.parameters():
            p.requires_grad_(False)

    def reference(self, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features.reference_stats(ref)

    def score_with(self, dist, prepared):
        return self.net(self.features(dist, prepared))

    def score(self, dist, ref):
        return self.score_with(dist, self.reference(ref))
