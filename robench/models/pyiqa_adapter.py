"""Optional adapter: any pyiqa full-reference metric as target ``pyiqa:<name>``.

pyiqa is not a robench dependency; when it is installed, ``load_model("pyiqa:dists")`` wraps
``pyiqa.create_metric(name, as_loss=True)`` (``as_loss`` keeps the graph, so gradients flow) and
takes its direction from the metric's ``lower_better``. Weights are whatever pyiqa loads.
"""

from __future__ import annotations

import torch

from robench.core.errors import RobenchError
from robench.core.target import Target, TargetCard, WeightsInfo


class PyIQATarget(Target):
    requires_weights = False  # pyiqa loads its own weights

    def __init__(self, metric: str, **options):
        super().__init__()
        try:
            import pyiqa
        except ImportError:
            raise RobenchError(
                f"target 'pyiqa:{metric}' needs the optional package pyiqa (pip install pyiqa)"
            ) from None
        try:
            self.metric = pyiqa.create_metric(metric, as_loss=True, device="cpu", **options)
        except Exception as exc:  # pyiqa raises several types for unknown names / missing weights
            raise RobenchError(f"pyiqa could not create {metric!r}: {exc}") from None
        mode = getattr(self.metric, "metric_mode", "FR")
        if mode != "FR":
            raise RobenchError(f"pyiqa metric {metric!r} is {mode}; robench benchmarks full-reference metrics")
        self.card = TargetCard(
            name=f"pyiqa:{metric}",
            lower_better=bool(self.metric.lower_better),
            score_range=None,
            summary=f"pyiqa metric {metric} (adapter)",
            weights=WeightsInfo("pyiqa"),
            paper="see pyiqa model card",
        )

    def score(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.metric(dist, ref).reshape(-1)
