"""The Target contract: every IQA model robench benchmarks is a ``Target``.

* ``target(dist, ref)`` (pyiqa's argument order) on ``N×3×H×W`` float tensors in [0, 1] returns a
  tensor of ``N`` raw scores, differentiable w.r.t. ``dist``.
* ``target.card`` (:class:`TargetCard`) says everything a user must know: score direction
  (``lower_better``), range, expected input, weights source and sha256, license, paper.
* ``target.oriented_quality(dist, ref)`` is ``q`` (``−score`` when ``lower_better``): attacks,
  training losses and robustness scores use only ``q``, so they never branch on the metric.

Inputs are validated at this boundary (4-D, 3 channels, same size, finite, in [0, 1]) and a
non-finite score is an error, never a silently propagated NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robench.core.errors import RobenchError


@dataclass(frozen=True)
class OfficialWeights:
    """A published weight file. ``sha256`` is the full digest when robench could measure it;
    otherwise ``sha256_prefix`` is the prefix the publisher put in the file name (torch.hub
    convention: the first hex digits of the file's sha256)."""

    url: str
    filename: str
    role: str = "full"  # full | lin | trunk
    sha256: str | None = None
    sha256_prefix: str | None = None


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # official | trained-here | imported | random | none (analytic metric)
    sha256: str | None = None
    path: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.source == "trained-here":
            p = self.provenance
            return (
                f"trained-here on {p.get('dataset', '?')}, profile {p.get('profile', '?')}, {(self.sha256 or '?')[:12]}"
            )
        if self.source in ("none", "random"):
            return self.source
        return f"{self.source} {(self.sha256 or '?')[:12]}"


@dataclass(frozen=True)
class TargetCard:
    name: str
    lower_better: bool
    score_range: tuple[float, float] | None
    summary: str = ""
    input: str = "RGB float N×3×H×W in [0,1], dist and ref the same size"
    min_size: int = 16
    weights: WeightsInfo = WeightsInfo("none")
    license: str = ""
    paper: str = ""
    official_weights: tuple[OfficialWeights, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"]["describe"] = self.weights.describe()
        return d

    def with_weights(self, weights: WeightsInfo, name: str | None = None) -> "TargetCard":
        return replace(self, weights=weights, name=name or self.name)


def validate_pair(dist: torch.Tensor, ref: torch.Tensor, min_size: int = 1) -> None:
    for label, t in (("dist", dist), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise RobenchError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise RobenchError(f"{label} must be N×3×H×W, got shape {tuple(t.shape)}")
        if t.shape[1] != 3:
            raise RobenchError(f"{label} must have 3 (RGB) channels, got {t.shape[1]} (shape {tuple(t.shape)})")
        if not t.is_floating_point():
            raise RobenchError(f"{label} must be a float tensor in [0,1], got {t.dtype}")
    if dist.shape != ref.shape:
        raise RobenchError(f"dist and ref must have the same shape, got {tuple(dist.shape)} and {tuple(ref.shape)}")
    if min(dist.shape[-2:]) < min_size:
        raise RobenchError(
            f"images must be at least {min_size}×{min_size} px for this target, got {tuple(dist.shape[-2:])}"
        )
    with torch.no_grad():
        for label, t in (("dist", dist), ("ref", ref)):
            if not torch.isfinite(t).all():
                raise RobenchError(f"{label} contains NaN or inf")
            lo, hi = float(t.min()), float(t.max())
            if lo < 0.0 or hi > 1.0:
                raise RobenchError(f"{label} must be in [0,1], got values in [{lo:.4g}, {hi:.4g}]")


def _softplus_inverse(a: float) -> float:
    """``softplus⁻¹(a) = a + log(1 − e^{−a})``, stable for every ``a > 0`` (``log(expm1(a))``
    overflows float32 above a ≈ 88, and LS slopes for a distance such as LPIPS reach hundreds)."""
    import math

    return a + math.log(-math.expm1(-a))


class Calibration(nn.Module):
    """Learnable affine map ``ŷ = a·q + b`` with ``a = softplus(a_raw) > 0`` (docs/method.md §2):
    puts a target whose score is not on the MOS scale (a distance) onto it for training losses
    without changing its ranking.

    It is constructed as the identity; before fine-tuning, :func:`fit_calibration` sets ``a, b``
    by least squares of MOS on ``q`` over the training split (from the identity, the recipes'
    learning rate and step count barely move it: LPIPS's ŷ stayed a negative distance spread over
    a few hundredths of a MOS unit)."""

    def __init__(self, a: float = 1.0, b: float = 0.0):
        super().__init__()
        # softplus⁻¹(a) so that the initial map is exactly a·q + b
        self.a_raw = nn.Parameter(torch.tensor(_softplus_inverse(float(a))))
        self.b = nn.Parameter(torch.tensor(float(b)))

    @property
    def a(self) -> float:
        return float(nn.functional.softplus(self.a_raw.detach()))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.a_raw) * q + self.b

    @torch.no_grad()
    def init_least_squares(self, q, mos) -> tuple[float, float]:
        """Set ``a, b`` to the least-squares fit ``mos ≈ a·q + b``; returns ``(a, b)``.

        ``a`` must stay positive (the map keeps the ranking): a slope ≤ 0 means ``q`` falls as MOS
        rises on these data — a target anti-correlated with MOS, or a wrong ``lower_better`` — and
        is a :class:`RobenchError`, not something to train through."""
        import numpy as np

        q = np.asarray(torch.as_tensor(q, dtype=torch.float64).cpu(), dtype=float).ravel()
        y = np.asarray(torch.as_tensor(mos, dtype=torch.float64).cpu(), dtype=float).ravel()
        if q.shape != y.shape or q.size < 2:
            raise RobenchError(f"calibration fit needs ≥ 2 (q, MOS) pairs of equal length, got {q.size} and {y.size}")
        if not (np.isfinite(q).all() and np.isfinite(y).all()):
            raise RobenchError("calibration fit got non-finite scores or MOS")
        qc = q - q.mean()
        var = float(qc @ qc)
        if var <= 1e-12 * max(1.0, float(np.abs(q).max())) ** 2:
            raise RobenchError(
                f"calibration fit: the target's scores are constant on the {q.size} fitting items "
                f"(q = {q.mean():.6g}); no affine map to MOS exists"
            )
        a = float(qc @ (y - y.mean())) / var
        if not a > 0:
            r = float(np.corrcoef(q, y)[0, 1])
            raise RobenchError(
                f"calibration fit: least-squares slope {a:.4g} ≤ 0 (PLCC of q with MOS {r:.3f} on "
                f"{q.size} items): the target's oriented quality falls as MOS rises; check its "
                "lower_better declaration or its weights"
            )
        b = float(y.mean() - a * q.mean())
        self.a_raw.copy_(torch.tensor(_softplus_inverse(a), dtype=self.a_raw.dtype))
        self.b.copy_(torch.tensor(b, dtype=self.b.dtype))
        return self.a, float(self.b)


def fit_calibration(
    target: "Target", dataset, batch_size: int = 32, max_items: int = 512, seed: int = 0, transform=None
) -> dict[str, Any]:
    """Least-squares initialisation of ``target.calibration`` on a pairs ``dataset`` (the
    training split): ``q`` in eval mode without gradients, then :meth:`Calibration.init_least_squares`.

    For speed at most ``max_items`` items are used: all of them when the split is that small,
    else a subset drawn without replacement with ``seed``. ``transform(ref, dist, chunk)``
    (optional) maps each batch as training will see it (the recipes' random crop). Returns
    ``{"a", "b", "n", "plcc", "seed", "max_items"}`` for the provenance."""
    import numpy as np

    n_all = len(dataset)
    rows = (
        np.arange(n_all)
        if n_all <= max_items
        else np.sort(np.random.default_rng(seed).choice(n_all, size=int(max_items), replace=False))
    )
    was_training = target.training
    target.eval()
    qs, ys = [], []
    try:
        with torch.no_grad():
            for c, start in enumerate(range(0, len(rows), int(batch_size))):
                items = [dataset[int(i)] for i in rows[start : start + int(batch_size)]]
                ref = torch.stack([it["ref"] for it in items])
                dist = torch.stack([it["dist"] for it in items])
                if transform is not None:
                    ref, dist = transform(ref, dist, c)
                dev = target.device  # batches (and their random crops) are made on the CPU
                qs.append(target.oriented_quality(dist.to(dev), ref.to(dev)).double().cpu())
                ys += [float(it["mos"]) for it in items]
    finally:
        target.train(was_training)
    q = torch.cat(qs).numpy()
    y = np.asarray(ys, dtype=float)
    a, b = target.calibration.init_least_squares(q, y)
    return {
        "a": a,
        "b": b,
        "n": int(len(rows)),
        "plcc": float(np.corrcoef(q, y)[0, 1]),
        "seed": int(seed),
        "max_items": int(max_items),
    }


class Target(nn.Module):
    """Base class. Subclasses implement :meth:`score` and set ``card``."""

    card: TargetCard
    #: True where a trained mapping to the MOS scale is part of the model (BiRQA's head)
    predicts_mos: bool = False
    #: False for analytic metrics (PSNR, SSIM): nothing to load or train
    requires_weights: bool = True
    #: constructor options for a small, fast instance used by the generic tests
    test_options: dict = {}
    #: roles of upstream weights files that each hold a part of the model (LPIPS: its ``lin``
    #: layers and an ImageNet ``trunk``); the importer hands such a file to :meth:`load_part`
    weight_parts: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.calibration = Calibration()

    #: False for a target (or defence) whose gradient w.r.t. ``dist`` is not usable (JPEG, a
    #: pyiqa metric with hard thresholds): gradient attacks refuse it, BPDA must be named
    differentiable: bool = True
    #: True for a target whose output is random (a randomised defence): attacks average the
    #: objective and the reported scores over ``eot`` draws (EOT)
    randomised: bool = False

    def score(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_part(self, role: str, state: dict[str, torch.Tensor], where: str) -> None:
        """Load one upstream file of a role in :attr:`weight_parts` (raises WeightsError when it
        does not fit); the others keep their values."""
        raise NotImplementedError(f"{type(self).__name__} declares no weight parts")

    # --- the reference branch is constant during an attack -------------------------------
    # ``score(dist, ref) == score_with(dist, reference(ref))``. ``reference`` returns everything
    # that depends on ``ref`` alone (a tensor or a list/dict of tensors, batch first), so an
    # attack computes it once and each step pays for the distorted branch only. Targets with
    # nothing to share keep the defaults.
    def reference(self, ref: torch.Tensor):
        return ref

    def score_with(self, dist: torch.Tensor, prepared) -> torch.Tensor:
        return self.score(dist, prepared)

    def bind(
        self, ref: torch.Tensor, cache: bool = True, eot: int = 1, sign: torch.Tensor | None = None
    ) -> "BoundTarget":
        """``q`` as a function of ``dist`` alone, with ``ref`` fixed (what an attack optimises);
        ``eot`` > 1 averages that many draws of a randomised target (EOT); ``sign`` (±1 per row,
        :mod:`robench.core.directions`) makes the objective ``sign · q``."""
        return BoundTarget(self, ref, cache=cache, eot=eot, sign=sign)

    def expected_score(self, dist: torch.Tensor, ref: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """The score, averaged over ``draws`` forwards when the target is randomised (a
        randomised defence is never reported from one draw)."""
        if not self.randomised or draws <= 1:
            return self(dist, ref)
        return torch.stack([self(dist, ref) for _ in range(draws)]).mean(dim=0)

    # --- speed options (set by :func:`set_speed`) ------------------------------------------
    #: "bf16": every evaluation (scoring, the attacks' steps and gradients) under bf16 autocast,
    #: scores returned in float32; None: float32
    amp: str | None = None
    #: torch.compile'd score functions by name (None: eager)
    compiled: dict | None = None

    def call(self, name: str, *args):
        """``self.<name>(*args)`` for ``score``, ``score_with`` or ``reference``, as the speed
        options say: compiled, and under autocast (the one place every evaluation passes)."""
        fn = (self.compiled or {}).get(name) or getattr(self, name)
        if self.amp is None:
            return fn(*args)
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp]):
            out = fn(*args)
        # scores leave in float32 (the harness's tables, comparisons and budget checks are float32);
        # a prepared reference keeps the dtype the autocast forward gave it
        return out.float() if name != "reference" else out

    def forward(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        validate_pair(dist, ref, self.card.min_size)
        s = self.call("score", dist, ref)
        if s.shape != (dist.shape[0],):
            raise RobenchError(f"target {self.card.name} returned shape {tuple(s.shape)}, expected ({dist.shape[0]},)")
        if not torch.isfinite(s.detach()).all():
            raise RobenchError(
                f"target {self.card.name} returned non-finite scores "
                f"({int((~torch.isfinite(s.detach())).sum())} of {s.numel()})"
            )
        return s

    @property
    def device(self) -> torch.device:
        """Where the target computes (its first parameter's device: every target has the
        calibration's): attacks and the engine move images here."""
        from robench.core.device import module_device

        return module_device(self)

    @property
    def lower_better(self) -> bool:
        return self.card.lower_better

    def orient(self, score: torch.Tensor) -> torch.Tensor:
        return -score if self.card.lower_better else score

    def oriented_quality(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``q``: higher is better for every target."""
        return self.orient(self(dist, ref))

    def predict_mos(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Prediction on the MOS scale for training losses: ``q`` through the calibration
        (identity-initialised; the training recipes fit it by least squares first, see
        :func:`fit_calibration`; BiRQA's head already regresses MOS)."""
        return self.calibration(self.oriented_quality(dist, ref))

    def post_step(self) -> None:
        """Called by training after every optimiser step (constraints such as LPIPS's
        non-negative lin weights)."""

    def extra_repr(self) -> str:
        return f"name={self.card.name}, lower_better={self.card.lower_better}, weights={self.card.weights.describe()}"


#: ``--amp`` values and the autocast dtype of each (None / "none": float32, no autocast)
AMP_DTYPES = {"bf16": torch.bfloat16}
AMP_CHOICES = ("none", *AMP_DTYPES)


def check_amp(value: Any, where: str = "--amp") -> str | None:
    """``"none"`` / ``"fp32"`` / None → None (float32); ``"bf16"`` (or ``"bfloat16"``) → ``"bf16"``;
    anything else is a RobenchError naming the allowed values."""
    text = "none" if value is None else str(value).strip().lower()
    text = {"fp32": "none", "float32": "none", "bfloat16": "bf16"}.get(text, text)
    if text not in AMP_CHOICES:
        raise RobenchError(f"{where} must be one of {', '.join(AMP_CHOICES)} (none = float32), got {value!r}")
    return None if text == "none" else text


def set_speed(target: "Target", amp: str | None = None, compile: bool = False) -> "Target":
    """Set a target's speed options in place (and return it): ``amp`` (see :func:`check_amp`)
    and ``compile`` (``torch.compile`` of its score functions, built once and kept; False
    drops them). Idempotent: a cached target serving cells of both settings follows each."""
    target.amp = check_amp(amp)
    if not compile:
        target.compiled = None
    elif target.compiled is None:
        import torch._inductor.config as inductor

        # a randomised defence draws the same numbers compiled as eager (inductor's own RNG
        # would make the compiled run a different sample)
        inductor.fallback_random = True
        target.compiled = {name: torch.compile(getattr(target, name)) for name in ("score", "score_with", "reference")}
    return target


def speed_of(target: "Target") -> dict[str, Any]:
    """The speed options a target runs with (provenance): ``{"amp": None | "bf16", "compile": bool}``."""
    return {"amp": getattr(target, "amp", None), "compile": getattr(target, "compiled", None) is not None}


def index_prepared(prepared, idx):
    """Rows ``idx`` of a prepared reference (a tensor, or a list/tuple/dict of them)."""
    if isinstance(prepared, torch.Tensor):
        return prepared[idx]
    if isinstance(prepared, dict):
        return {k: index_prepared(v, idx) for k, v in prepared.items()}
    if isinstance(prepared, (list, tuple)):
        return type(prepared)(index_prepared(v, idx) for v in prepared)
    raise TypeError(f"cannot index a prepared reference of type {type(prepared).__name__}")


class BoundTarget(nn.Module):
    """A target with its reference batch fixed: ``bound(x, idx)`` is the oriented quality ``q``
    of ``x`` against ``ref[idx]`` (all rows when ``idx`` is None).

    * ``cache=True`` computes the reference branch once (no grad); ``cache=False`` recomputes it
      on every call (the naive step ``robench bench attack`` compares against).
    * ``queries`` counts forward evaluations per image (a gradient evaluation is one query; with
      EOT, each draw is one).
    * Non-finite scores are an error, as in :meth:`Target.forward`.
    * ``sign`` (±1 per row; None = all +1) is the attack direction: ``bound(x)`` is then
      ``sign · q``, so an attack that raises it moves each row its own way (``down`` rows lower
      ``q``). :meth:`plain` undoes it.
    """

    def __init__(
        self, target: Target, ref: torch.Tensor, cache: bool = True, eot: int = 1, sign: torch.Tensor | None = None
    ):
        super().__init__()
        self.sign = None if sign is None else as_signs(sign, ref.shape[0], "bound target").to(ref.device)
        self.eot = max(1, int(eot))
        validate_pair(ref, ref, target.card.min_size)
        self.target = target
        self.ref = ref.detach()
        self.cache = cache
        self.prepared = None
        if cache:
            with torch.no_grad():
                self.prepared = target.call("reference", self.ref)
        self.queries = torch.zeros(ref.shape[0], dtype=torch.long)

    def scores(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        n = self.ref.shape[0] if idx is None else int(idx.numel())
        if x.dim() != 4 or x.shape[0] != n or x.shape[1:] != self.ref.shape[1:]:
            raise RobenchError(f"bound target expects {n}×{tuple(self.ref.shape[1:])}, got {tuple(x.shape)}")
        draws = []
        for _ in range(self.eot):
            if self.cache:
                prep = self.prepared if idx is None else index_prepared(self.prepared, idx)
                draws.append(self.target.call("score_with", x, prep))
            else:
                draws.append(self.target.call("score", x, self.ref if idx is None else self.ref[idx]))
        s = draws[0] if self.eot == 1 else torch.stack(draws).mean(dim=0)
        if s.shape != (n,):
            raise RobenchError(f"target {self.target.card.name} returned shape {tuple(s.shape)}, expected ({n},)")
        if not torch.isfinite(s.detach()).all():
            raise RobenchError(f"target {self.target.card.name} returned non-finite scores during an attack")
        if idx is None:
            self.queries += self.eot
        else:
            self.queries[idx.cpu()] += self.eot
        return s

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.plain(self.target.orient(self.scores(x, idx)), idx)

    def plain(self, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``v`` times the rows' signs: ``q`` from the directed objective ``sign · q``, and the
        objective from ``q`` (sign² = 1)."""
        if self.sign is None:
            return v
        return v * (self.sign if idx is None else self.sign[idx.to(self.sign.device)]).to(v.dtype)


def as_signs(sign, n: int, where: str) -> torch.Tensor:
    """Direction signs as a float CPU tensor of ±1, one per row (core.directions), or an error."""
    s = torch.as_tensor(sign, dtype=torch.float32).flatten().cpu()
    if s.numel() != n or not bool(((s == 1) | (s == -1)).all()):
        raise RobenchError(f"{where}: direction signs must be ±1, one per item ({n}); got {s.tolist()}")
    return s


def fingerprint(target: nn.Module) -> str:
    """sha256 identifying the exact numbers a target computes with: its weights file's digest
    when it has one, else a digest of its state dict (random init, analytic metrics)."""
    card = getattr(target, "card", None)
    sha = card.weights.sha256 if card is not None else None
    if sha:
        return sha
    from robench.core.target import state_digest

    return state_digest(target.state_dict())


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def state_digest(state) -> str:
    """sha256 over a state dict's names and bytes (official weights assembled from several files)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
