"""Inference-time defences: wrappers around any target.

Each declares whether it is **randomised** (attacks then use EOT: the objective and the reported
scores are means over draws) and how a **gradient** passes through it: ``exact`` (the transform
is differentiable and the attack differentiates it) or ``bpda`` (Athalye et al. 2018: the
forward pass uses the real transform, the backward pass the identity).

Geometric transforms (``flip``, ``rotate``) apply the *same* random transform to ``ref`` and
``dist`` (docs/method.md §4). Purifiers (``jpeg``, ``smoothing``, ``squeeze`` from ART, and
``diffpure``) act on ``dist`` only: the reference is trusted and never under attack, so its
branch stays cacheable.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from robench.attacks.base import require
from robench.core.registry import DEFENSES, training_recipes
from robench.core.target import Target, TargetCard


class InferenceDefense(torch.nn.Module):
    kind: ClassVar[str] = "inference"
    name: ClassVar[str] = ""
    randomised: ClassVar[bool] = False
    gradient: ClassVar[str] = "exact"  # or "bpda"
    applies_to: ClassVar[str] = "dist"  # or "both"
    defaults: ClassVar[dict[str, Any]] = {}
    #: small parameters for the generic tests
    test_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def prepare(cls, options: dict[str, Any], **run: Any) -> None:
        """Prerequisites before the wrapper is built (``run``: dataset, dataset_options, profile,
        seed, progress); most defences need none. DiffPure trains its denoiser here."""

    def __init__(self, **params: Any):
        super().__init__()
        from robench.core.errors import UnknownNameError

        bad = [k for k in params if k not in self.defaults]
        if bad:
            raise UnknownNameError(
                f"unknown parameter {bad[0]!r} for defence {self.name!r} "
                f"(parameters: {', '.join(self.defaults) or 'none'})"
            )
        self.params = {**self.defaults, **params}

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {
            "kind": cls.kind,
            "randomised": cls.randomised,
            "gradient": cls.gradient,
            "applies_to": cls.applies_to,
            "defaults": dict(cls.defaults),
        }

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": dict(self.params),
            "randomised": self.randomised,
            "gradient": self.gradient,
            "applies_to": self.applies_to,
        }

    def forward(self, dist: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    #: True for a defence that aggregates the inner target's scores over several inputs (median
    #: smoothing) instead of transforming one input: it overrides :meth:`around`, and its
    #: reference is passed raw (the inner target's prepared reference is per batch row)
    aggregates: ClassVar[bool] = False

    def around(
        self, score: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor]", dist: torch.Tensor, ref: torch.Tensor
    ) -> torch.Tensor:
        """The defended score given the inner ``score(dist, ref)``: transform, then score."""
        d, r = self(dist, ref)
        return score(d, r)


def bpda(x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """Forward: ``purified``; backward: identity (BPDA with the identity as surrogate)."""
    return x + (purified - x).detach()


@DEFENSES.register("flip", summary="random horizontal flip of ref and dist together (randomised; EOT)")
class Flip(InferenceDefense):
    randomised = True
    applies_to = "both"
    defaults = {"p": 0.5}

    def forward(self, dist, ref):
        m = (torch.rand(dist.shape[0], device=dist.device) < float(self.params["p"])).view(-1, 1, 1, 1)
        return torch.where(m, dist.flip(-1), dist), torch.where(m, ref.flip(-1), ref)


@DEFENSES.register(
    "rotate", summary="random rotation (±max_degrees, bilinear) of ref and dist together (randomised; EOT)"
)
class Rotate(InferenceDefense):
    randomised = True
    applies_to = "both"
    defaults = {"max_degrees": 10.0}

    def forward(self, dist, ref):
        n = dist.shape[0]
        a = (torch.rand(n, device=dist.device) * 2 - 1) * math.radians(float(self.params["max_degrees"]))
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.stack(
            [torch.stack([cos, -sin, torch.zeros_like(a)], 1), torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1
        )
        grid = F.affine_grid(theta, list(dist.shape), align_corners=False)
        # border padding: no black corners for the metric to react to
        rot = lambda x: F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # noqa: E731
        return rot(dist).clamp(0, 1), rot(ref).clamp(0, 1)


@DEFENSES.register(
    "smooth",
    summary="median smoothing: median score over Gaussian noise N(0, sigma^2) on dist "
    "(randomised; EOT); robench certify bounds it",
)
class Smooth(InferenceDefense):
    """The smoothed target of median smoothing (Chiang et al. 2020; :mod:`robench.core.smoothing`):
    the median of the inner score over ``samples`` draws of Gaussian noise (σ in pixel units of
    [0, 1]) added to ``dist`` (the reference is trusted and untouched). Each noisy image is clipped to
    [0, 1] before scoring: the clip is part of the smoothed function, so the certificate (which
    holds for any function of ``x + ε``) is unchanged and the target sees valid images. The gradient is
    exact: the median's gradient flows to the draw that is the median; attacks average it over
    their EOT draws."""

    randomised = True
    aggregates = True
    defaults = {"sigma": 0.12, "samples": 8}
    test_options = {"sigma": 0.05, "samples": 3}

    def forward(self, dist, ref):  # one noisy draw (what the chain would apply without aggregation)
        return (dist + float(self.params["sigma"]) * torch.randn_like(dist)).clamp(0.0, 1.0), ref

    def around(self, score, dist, ref):
        draws = torch.stack([score(self(dist, ref)[0], ref) for _ in range(int(self.params["samples"]))])
        return draws.median(dim=0).values


class _ArtPreprocessor(InferenceDefense):
    gradient = "bpda"
    install = "pip install adversarial-robustness-toolbox==1.20.1"

    def make(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, dist, ref):
        if not hasattr(self, "_art"):
            self._art = self.make()
        x = dist.detach().cpu().numpy()
        y, _ = self._art(x)
        purified = torch.from_numpy(y).to(dist).clamp(0, 1)
        return bpda(dist, purified), ref


@DEFENSES.register("jpeg", summary="ART JpegCompression of dist (quality 75); BPDA gradient")
class Jpeg(_ArtPreprocessor):
    defaults = {"quality": 75}

    def make(self):
        art = require("art.defences.preprocessor", self.install)
        return art.JpegCompression(
            clip_values=(0, 1), quality=int(self.params["quality"]), channels_first=True, apply_predict=True
        )


@DEFENSES.register("smoothing", summary="ART SpatialSmoothing (median filter, window 3) of dist; BPDA gradient")
class Smoothing(_ArtPreprocessor):
    defaults = {"window_size": 3}

    def make(self):
        art = require("art.defences.preprocessor", self.install)
        return art.SpatialSmoothing(
            window_size=int(self.params["window_size"]), channels_first=True, clip_values=(0, 1)
        )


@DEFENSES.register("squeeze", summary="ART FeatureSqueezing (bit depth 5) of dist; BPDA gradient")
class Squeeze(_ArtPreprocessor):
    defaults = {"bit_depth": 5}

    def make(self):
        art = require("art.defences.preprocessor", self.install)
        return art.FeatureSqueezing(clip_values=(0, 1), bit_depth=int(self.params["bit_depth"]))


class Defended(Target):
    """``inner`` behind a chain of inference-time defences (applied in order)."""

    def __init__(self, inner: Target, chain: list[InferenceDefense]):
        super().__init__()
        self.inner = inner
        self.chain = torch.nn.ModuleList(chain)
        self.calibration = inner.calibration
        self.randomised = any(d.randomised for d in chain)
        self.gradient = "bpda" if any(d.gradient == "bpda" for d in chain) else "exact"
        self.differentiable = inner.differentiable
        # the reference passes raw (and is scored with every call) when a defence transforms it
        # too or aggregates over several copies of the input
        self.both = any(d.applies_to == "both" or d.aggregates for d in chain)
        names = "+".join(d.name for d in chain)
        self.card = TargetCard(
            **{
                **inner.card.__dict__,
                "name": f"{inner.card.name}+{names}",
                "summary": f"{inner.card.summary} behind {names}",
            }
        )
        self.defense_config = [d.config() for d in chain]

    def _defend(self, dist, ref):
        # not ``_apply``: that is nn.Module's hook under ``.to(device)`` / ``.float()``
        for d in self.chain:
            dist, ref = d(dist, ref)
        return dist, ref

    def score(self, dist, ref):
        fn = self.inner.score
        for d in reversed(self.chain):  # the first defence of the chain is the outermost
            fn = (lambda f, dd: lambda x, r: dd.around(f, x, r))(fn, d)
        return fn(dist, ref)

    # purifiers of dist only keep the reference branch cacheable
    def reference(self, ref):
        return ref if self.both else self.inner.reference(ref)

    def score_with(self, dist, prepared):
        if self.both:
            return self.score(dist, prepared)
        d, _ = self._defend(dist, None)
        return self.inner.score_with(d, prepared)


def parse_defense(spec: str | None, options: dict[str, dict[str, Any]] | None = None):
    """``"aat+flip"`` → ("aat", [Flip()]): at most one training recipe, then inference wrappers in
    order. ``None``/``"none"`` → (None, [])."""
    from robench.core.errors import RobenchError

    if spec in (None, "", "none"):
        return None, []
    recipe, chain = None, []
    for tok in (t.strip() for t in spec.split("+")):
        if not tok or tok == "none":
            continue
        cls = DEFENSES.get(tok)  # unknown names: did-you-mean
        if tok in training_recipes():
            if recipe is not None:
                raise RobenchError(f"defence {spec!r} names two training recipes ({recipe}, {tok})")
            recipe = tok
        else:
            chain.append(cls(**(options or {}).get(tok, {})))
    return recipe, chain
