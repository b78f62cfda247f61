"""The attack contract.

An attack raises the oriented quality ``q`` of ``dist`` within ``‖δ‖∞ ≤ ε``, keeps ``ref``
untouched and the image in [0, 1]. The direction is the harness's (``signs``, one ±1 per item,
:mod:`robench.core.directions`): the attack is handed the objective ``sign · q`` and its clean
value, so "raise" means "move the item its own way" and no attack needs code per direction
(FACPA, whose generator is trained before it sees an item, reads ``run_signs``). Two kinds, as in
foolbox v3:

* **fixed-ε** attacks (:meth:`Attack.perturb`) run once per budget;
* **minimisation** attacks (:meth:`Attack.minimise`) run once and their perturbation is clipped
  to every budget.

Either way ``attack(target, dist, ref, eps=[e1, ..., eK])`` returns an :class:`AttackResult` with
the K×N raw scores of the adversarial images (and the images), per-image query counts, L∞/L2
norms and the sanity probes. Every batch is verified (L∞ ≤ ε + 1e-6, [0, 1], no NaN, ``ref`` and
``dist`` unchanged); a violation raises :class:`BudgetViolation`, so it can never become a result.

Conventions (stated once, here):

* δ = 0 is always feasible, so per image the harness keeps the clean image when an attack ends
  against its direction (below it for ``up``) (``probes["kept_clean"]`` counts those images). A
  broken attack therefore shows as zero gain, which the runner's sanity checks flag. Iterative
  attacks return their best iterate (the highest ``q`` seen), so "kept clean" means no evaluated
  point beat the clean image.
* A minimisation attack may return several candidate perturbations (a ``list``, e.g. snapshots
  along its trajectory): clipped to each ε, the one with the highest ``q`` is kept per image and
  budget — the best unclipped point is rarely the best after clipping to a small ε.
* Hyper-parameters are :class:`Param` fields of the attack class, each with its default and what
  it means; ``budget=True`` marks one that sets the iterations or queries: the runner re-runs a
  cell at half of them and flags it ``not_converged`` when the full budget's gain exceeds the half
  budget's by more than 5 % of the gain.
* Queries count forward evaluations of the target per image, a gradient evaluation being one.
  The clean score and the sanity probes are not counted.
* The target's train/eval mode (every submodule) and its parameters' ``requires_grad`` are saved,
  the attack runs in eval mode with frozen parameters, and both are restored afterwards.
"""

from __future__ import annotations

import copy
import difflib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, Sequence, TypeVar, overload

import torch

from robench.core.device import halving_batches
from robench.core.errors import RobenchError, UnknownNameError
from robench.core.profiles import get_profile
from robench.core.target import BoundTarget, Target, as_signs, validate_pair


WHITE_BOX_NEEDS = "gradients"
BUDGET_TOL = 1e-6


T = TypeVar("T")


class Param(Generic[T]):
    """One hyper-parameter of an attack, declared as a class field: its default and what it means.

    Read on an instance it gives the resolved value (profile budget, then the user's option);
    read on the class it gives this declaration. ``budget``: it sets the iterations or queries
    (the convergence check halves it). ``quiet``: added after cells were stored with the value of
    its default, so it is left out of the record (and the cell key) while it holds that value."""

    __slots__ = ("default", "doc", "budget", "quiet", "name")

    def __init__(self, default: T, doc: str, *, budget: bool = False, quiet: bool = False):
        self.default, self.doc, self.budget, self.quiet = default, doc, budget, quiet
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> "Param[T]": ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> "T | Param[T]":
        if obj is None:
            return self
        return obj.params[self.name]  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Param({self.default!r}, {self.doc!r}{', budget=True' if self.budget else ''})"


def declared_params(cls: type) -> dict[str, Param[Any]]:
    """The :class:`Param` fields of an attack class, base classes' first, in declaration order."""
    out: dict[str, Param[Any]] = {}
    for klass in reversed(cls.__mro__):
        for k, v in vars(klass).items():
            if isinstance(v, Param):
                out[k] = v
    return out


class BudgetViolation(RobenchError):
    """An attack returned an image outside its budget, outside [0, 1], with NaN, or touched ref."""


@dataclass
class AttackResult:
    eps: list[float]  # budgets in [0, 1] units
    clean_scores: torch.Tensor  # N raw scores
    scores: torch.Tensor  # K×N raw scores of the adversarial images
    queries: torch.Tensor  # K×N forward evaluations per image
    linf: torch.Tensor  # K×N
    l2: torch.Tensor  # K×N
    images: torch.Tensor | None = None  # K×N×3×H×W
    #: perceptibility of each adversarial image against the unattacked distorted one (K×N):
    #: PSNR in dB (inf for δ = 0) and SSIM (luminance, Gaussian 11/1.5, as the ssim target)
    psnr: torch.Tensor | None = None
    ssim: torch.Tensor | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. AutoAttack's winning component
    #: seconds in the attack proper (prepare, perturb/minimise) and in scoring clean and adversarial
    #: images; the rest of the call (probes, verification) is harness overhead
    compute_seconds: float = 0.0
    #: the batch size asked for, the one in use at the end (smaller after an out-of-memory
    #: error: each halves it, ``oom_halved`` counts them) — provenance, never the cell's key
    batch_size: int = 0
    batch_size_used: int = 0
    oom_halved: int = 0

    def oriented(self, lower_better: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sign = -1.0 if lower_better else 1.0
        return sign * self.clean_scores, sign * self.scores


def as_eps(eps: float | Sequence[float]) -> list[float]:
    """Budgets in [0, 1] units, e.g. ``[2/255, 8/255]``."""
    vals = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not vals:
        raise RobenchError("no ε budget given")
    for e in vals:
        if not (0.0 < e <= 1.0) or e != e:
            raise RobenchError(f"ε must be in (0, 1] (e.g. 8/255 = {8 / 255:.4f}); got {e}")
    return vals


def score_scale(target: Target) -> float:
    """Width of the target's score range: puts ``q − q_clean`` on a comparable scale for the
    logits adapter and C&W's target gain (1 when the range is unknown)."""
    r = target.card.score_range
    if r is None or not all(map(lambda v: v == v and abs(v) != float("inf"), r)) or r[1] <= r[0]:
        return 1.0
    return float(r[1] - r[0])


def observed_scale(q0: torch.Tensor, target: Target) -> float:
    """Spread of the clean oriented scores ``q0`` of a batch (their standard deviation): the unit of
    a relative gain taken from what the metric does on these items, not from the card's declared
    range (PSNR declares 0–100 dB, ~10× its spread over real distortions; a pyiqa metric declares
    none), so a relative setting such as C&W's ``target_gain`` means the same for every metric.

    Fallbacks, in order, when the batch has no spread (one image, or identical clean scores):
    the declared range (:func:`score_scale`) when the card has a finite one — the best prior on
    the metric's spread; else ``|mean q0|`` — at least the metric's own magnitude; else 1."""
    q = q0.detach().flatten().double()
    q = q[torch.isfinite(q)]
    mean = float(q.mean()) if q.numel() else 0.0
    if q.numel() >= 2:
        s = float(q.std())
        if s > 1e-8 * max(1.0, abs(mean)):  # constant scores up to float noise are no spread
            return s
    r = target.card.score_range
    if r is not None and all(v == v and abs(v) != float("inf") for v in r) and r[1] > r[0]:
        return score_scale(target)
    return abs(mean) if abs(mean) > 0 else 1.0


class ModeGuard:
    """Save and restore every submodule's train flag and every parameter's requires_grad."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self) -> "ModeGuard":
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.grads = [(p, p.requires_grad) for p in self.module.parameters()]
        self.module.eval()
        for p, _ in self.grads:
            p.requires_grad_(False)  # the attack needs ∂q/∂x only
        return self

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            m.training = mode
        for p, rg in self.grads:
            p.requires_grad_(rg)


@dataclass
class _Buffers:
    """What one attack call fills batch by batch: per ε × item scores, queries, norms and
    perceptibility of the change, the clean scores, the images when kept, the probes."""

    scores: torch.Tensor
    queries: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    clean: torch.Tensor
    images: torch.Tensor | None
    psnr: torch.Tensor
    ssim: torch.Tensor
    probes: dict[str, Any]
    extra: dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    @classmethod
    def empty(cls, K: int, n: int, shape, return_images: bool) -> _Buffers:
        return cls(
            scores=torch.empty(K, n),
            queries=torch.zeros(K, n, dtype=torch.long),
            linf=torch.empty(K, n),
            l2=torch.empty(K, n),
            clean=torch.empty(n),
            images=torch.empty(K, *shape) if return_images else None,
            psnr=torch.empty(K, n),
            ssim=torch.empty(K, n),
            probes={"zero_grad": 0, "nan_grad": 0, "probed": 0, "randomised": False, "kept_clean": [0] * K},
            extra={},
        )

    def put(self, k: int, sl: slice, adv: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> None:
        self.scores[k, sl] = s
        d = (adv - x).flatten(1)
        self.linf[k, sl] = d.abs().amax(dim=1)
        self.l2[k, sl] = d.norm(dim=1)
        self.psnr[k, sl], self.ssim[k, sl] = perceptibility(adv, x)
        if self.images is not None:
            self.images[k, sl] = adv


class Attack:
    """Base class; subclasses register with ``@ATTACKS.register(name)``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "fixed"  # or "minimisation"
    needs: ClassVar[str] = WHITE_BOX_NEEDS  # or "scores"
    iterative: ClassVar[bool] = True
    #: derived from the :class:`Param` fields (never declared): the ``budget`` ones, which set the
    #: iterations/queries (halved by the convergence check) ...
    budget_params: ClassVar[tuple[str, ...]] = ()
    #: ... every attack-specific one with its default (the profile's budgets override some, users
    #: any) ...
    defaults: ClassVar[dict[str, Any]] = {}
    #: ... and the ``quiet`` ones with the default that reproduces cells stored before they existed
    quiet_defaults: ClassVar[dict[str, Any]] = {}
    #: budgets per profile name (``quick``, ``paper``): the parameters a profile sets
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: place in ``--attacks all`` and in report tables (None: registered, not in the suite)
    suite: ClassVar[int | None] = None
    #: small parameters for the generic tests (seconds on CPU)
    test_options: ClassVar[dict[str, Any]] = {}
    #: attacks this one must match or beat on the same items (a cross-cell sanity flag)
    at_least_as_strong_as: ClassVar[tuple[str, ...]] = ()
    #: parameters the engine fills with the run's dataset and its options (a generator that
    #: trains on the run's train split)
    training_data_params: ClassVar[tuple[str, ...]] = ()
    #: m > 0: the gain can stall and rise again at a larger budget (a generator's training), so
    #: once the half-budget rule passes the engine runs the attack at m × the accepted budget and
    #: flags the cell not converged when that gains > 5 % more (0: the half-budget rule alone)
    plateau_probe: ClassVar[int] = 0
    #: True: the convergence check re-attacks every item, not a quarter (the budget's cost does
    #: not grow with the items — a generator trained once — so a subset saves nothing and only
    #: adds sampling noise)
    check_all_items: ClassVar[bool] = False
    #: the directions (+1 raise, −1 lower) the current call needs, set by the harness before
    #: ``prepare``: an attack that prepares per direction (a generator) reads it
    run_signs: list[int] = [1]

    #: parameters that make the attack start somewhere else (a random first point): the
    #: convergence check runs the attack once more with them and another seed on its items and
    #: flags the cell not converged when the per-item better of the two gains > 5 % more (a start
    #: that stops in a worse basin is invisible to the half-budget rule). None: no such check
    another_start: ClassVar[dict[str, Any] | None] = None

    #: measured strength per profile and direction: the lowest mean directed move, as a fraction
    #: of a converged reference's, over the targets and ε of reports/bench/attack-strength.json
    #: (``robench bench attack-strength``; a test holds these to that table). Below
    #: core.flags.STRENGTH_FLOOR every cell of the attack in that direction carries [nc] and the
    #: fraction. Empty: not measured
    strength: ClassVar[dict[str, dict[str, float]]] = {}

    #: the harness parameter every attack takes
    eot: Param[int | str] = Param(
        "auto", "draws per objective evaluation ('auto': the profile's eot_draws against a randomised target, else 1)"
    )
    #: the harness parameters with their defaults (set below the class, from its Param fields)
    HARNESS_DEFAULTS: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for derived in ("defaults", "budget_params", "quiet_defaults"):
            if derived in vars(cls):
                raise TypeError(
                    f"attack class {cls.__name__}: declare hyper-parameters as Param fields "
                    f"(steps = Param(20, 'what it does', budget=True)), not {derived!r}"
                )
        fields = {k: p for k, p in declared_params(cls).items() if k not in Attack.HARNESS_DEFAULTS}
        cls.defaults = {k: p.default for k, p in fields.items()}
        cls.budget_params = tuple(k for k, p in fields.items() if p.budget)
        cls.quiet_defaults = {k: p.default for k, p in fields.items() if p.quiet}

    def __init__(self, profile: str = "quick", seed: int = 0, **params: Any):
        prof = get_profile(profile)
        known = {**self.defaults, **self.HARNESS_DEFAULTS}
        unknown = [k for k in params if k not in known]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown parameter {k!r} for attack {self.name!r}{hint} (parameters: {', '.join(known)})"
            )
        merged = dict(known)
        merged.update(self.budgets.get(prof.name, {}))
        merged.update(prof.attack_params(self.name))
        merged.update(params)
        self.params = merged
        self.profile = prof.name
        self.eot_draws = prof.eot_draws
        self.seed = int(seed)

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {
            "kind": cls.kind,
            "needs": cls.needs,
            "defaults": dict(cls.defaults),
            "params": {k: p.doc for k, p in declared_params(cls).items()},
            "suite": cls.suite,
            "iterative": cls.iterative,
            "budgets": {k: dict(v) for k, v in cls.budgets.items()},
        }

    def cost(self) -> dict[str, float]:
        """Evaluations per image and budget: ``grad`` (forward + backward) and ``forward``
        (score only), the clean score excluded; validate's time estimate multiplies them."""
        raise NotImplementedError(f"attack {self.name!r} does not declare its cost")

    def setup_cost(self, train_items: int) -> float:
        """Gradient evaluations spent once per target and defence before attacking (0 for most)."""
        return 0.0

    def half_budget(self) -> dict[str, Any]:
        """This attack's parameters with every budget parameter halved (the convergence check);
        empty when the attack has no budget to halve (single-step attacks)."""
        return self._with_budget(lambda v: max(1, v // 2))

    def scaled_budget(self, factor: int) -> dict[str, Any]:
        """This attack's parameters with every budget parameter multiplied by ``factor`` (the
        engine's ``--escalate``: a cell its half-budget check flags is re-run at 2×, 4×, …);
        empty when the attack has no budget to scale."""
        return self._with_budget(lambda v: v * int(factor))

    def _with_budget(self, change: Callable[[int], int]) -> dict[str, Any]:
        """The parameters with ``change`` applied to every positive numeric budget parameter;
        empty when there is none."""
        new = {
            k: change(int(v))
            for k in self.budget_params
            if isinstance(v := self.params.get(k), (int, float)) and not isinstance(v, bool) and v > 0
        }
        return {**self.params, **new} if new else {}

    @property
    def white_box(self) -> bool:
        return self.needs == WHITE_BOX_NEEDS

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args}{', ' if args else ''}seed={self.seed}, profile={self.profile!r})"

    def config(self) -> dict[str, Any]:
        """What a result records about the attack (with every resolved hyper-parameter)."""
        params = {
            k: v for k, v in self.params.items() if not (k in self.quiet_defaults and v == self.quiet_defaults[k])
        }
        return {"name": self.name, "kind": self.kind, "needs": self.needs, "params": params}

    # --- what subclasses implement ------------------------------------------------------
    def check(self, target: Target) -> None:
        """Refuse a target that cannot give what this attack needs (before any compute)."""
        eot = self.params.get("eot", "auto")
        if eot != "auto" and (not isinstance(eot, int) or eot < 1):
            raise RobenchError(f"eot must be 'auto' or a positive integer, got {eot!r}")
        if self.white_box and not getattr(target, "differentiable", True):
            raise RobenchError(
                f"attack {self.name!r} needs gradients but target {target.card.name!r} is not "
                "differentiable; use a score-based attack or a BPDA defence wrapper"
            )

    def resolve(self, target: Target) -> "Attack":
        """Fix ``eot="auto"`` for this target (recorded with the result)."""
        if self.params.get("eot") == "auto":
            self.params["eot"] = self.eot_draws if getattr(target, "randomised", False) else 1
        return self

    def prepare(self, target: Target) -> None:
        """Per-target set-up before the first batch (FACPA trains or loads its generator)."""

    def trained(self) -> dict[str, Any] | None:
        """What the attack trained or loaded for this call (a generator, a universal patch: path,
        sha256, training seconds), recorded with the cell's probes; None for most attacks."""
        return None

    def perturb(self, f: BoundTarget, x: torch.Tensor, eps: float, q0: torch.Tensor) -> torch.Tensor:
        """Fixed-ε attacks: adversarial images for one budget."""
        raise NotImplementedError

    def minimise(self, f: BoundTarget, x: torch.Tensor, q0: torch.Tensor, eps_max: float) -> torch.Tensor:
        """Minimisation attacks: one unbounded adversarial image per input (clipped by the caller)."""
        raise NotImplementedError

    # --- the harness ----------------------------------------------------------------------
    def __call__(
        self,
        target: Target,
        dist: torch.Tensor,
        ref: torch.Tensor,
        eps: float | Sequence[float],
        return_images: bool = True,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        signs: torch.Tensor | None = None,
    ) -> AttackResult:
        epses = as_eps(eps)
        self.check(target)
        self.resolve(target)
        streamed = getattr(dist, "streamed", False) is True  # runner.StreamedImages: decoded per batch
        if not streamed:
            validate_pair(dist, ref, target.card.min_size)
        n = dist.shape[0]
        signs = torch.ones(n) if signs is None else as_signs(signs, n, f"attack {self.name!r}")
        self.run_signs = sorted({int(v) for v in signs.tolist()}, reverse=True)
        bs = batch_size or n
        buf = _Buffers.empty(len(epses), n, dist.shape, return_images)
        compute = 0.0
        with ModeGuard(target), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            t0 = time.perf_counter()
            self.prepare(target)
            compute += time.perf_counter() - t0

            def one(start: int, stop: int) -> None:
                nonlocal compute
                kept = copy.deepcopy(buf.probes)
                try:
                    compute += self._batch(target, dist, ref, signs, slice(start, stop), epses, streamed, buf)
                except BaseException:
                    buf.probes.clear()  # a batch retried at half its size must not count its probes twice
                    buf.probes.update(kept)
                    raise
                if progress is not None:
                    progress(stop - start)

            # an out-of-memory batch is retried at half its size (down to 1); the batch size in
            # use at the end is recorded with the result. Seeding is per call and per batch (the
            # global RNG once per call, an attack's own generator once per batch), so a randomised
            # attack's numbers depend on the batch size: equal to a run at the smaller batch from
            # the start when the first batch fails (the global RNG is rewound), deterministic
            # attacks equal per item wherever it fails
            what = f"attack {self.name!r} on {target.card.name}"
            used, halved = halving_batches(n, bs, one, target.device, what=what)
        if self.trained():
            buf.probes["trained"] = self.trained()  # provenance of the generator / patch the images came from
        return AttackResult(
            eps=epses,
            clean_scores=buf.clean,
            scores=buf.scores,
            queries=buf.queries,
            linf=buf.linf,
            l2=buf.l2,
            images=buf.images,
            psnr=buf.psnr,
            ssim=buf.ssim,
            probes=buf.probes,
            extra=buf.extra,
            compute_seconds=compute,
            batch_size=bs,
            batch_size_used=used,
            oom_halved=halved,
        )

    def _batch(self, target: Target, dist, ref, signs, sl: slice, epses: list[float], streamed: bool, buf) -> float:
        """Attack the items ``sl`` at every ε into ``buf`` (a _Buffers); the seconds of attack compute."""
        eot = int(self.params["eot"])
        # a copy on the target's device (items stay on the CPU; on the CPU this is clone())
        x, r = dist[sl].detach().to(target.device, copy=True), ref[sl].detach().to(target.device, copy=True)
        if streamed:
            validate_pair(x, r, target.card.min_size)
        x_keep, r_keep = x.clone(), r.clone()
        sg = signs[sl].to(target.device)
        t0 = time.perf_counter()
        # the attack sees the directed objective sign · q (and its clean value)
        f = target.bind(r, eot=eot, sign=sg)
        with torch.no_grad():
            s0 = target.expected_score(x, r, eot)
        q0 = target.orient(s0) * sg
        buf.clean[sl] = s0
        spent_s = time.perf_counter() - t0
        if sl.start == 0:
            self._probe(target, f, x[: self.PROBE_N], buf.probes)
        t0 = time.perf_counter()
        if self.kind == "minimisation":
            f.queries.zero_()
            far = self.minimise(f, x, q0, max(epses))
            fars = [c.detach() for c in far] if isinstance(far, (list, tuple)) else [far.detach()]
            spent = f.queries.clone()
        spent_s += time.perf_counter() - t0
        for k, e in enumerate(epses):
            t0 = time.perf_counter()
            if self.kind == "minimisation":
                adv = self._best_clipped(target, fars, x, r, e, eot, sg)
                buf.queries[k, sl] = spent
            else:
                f.queries.zero_()
                adv = self.perturb(f, x, e, q0).detach()
                buf.queries[k, sl] = f.queries
            spent_s += time.perf_counter() - t0
            for key, val in getattr(self, "_extra", {}).items():
                buf.extra.setdefault(key, torch.zeros(len(epses), buf.n, dtype=val.dtype))[k, sl] = val
            adv = self._verify(adv, x, x_keep, r, r_keep, e)
            t0 = time.perf_counter()
            with torch.no_grad():
                s = target.expected_score(adv, r, eot)
            spent_s += time.perf_counter() - t0
            worse = target.orient(s) * sg < q0
            if worse.any():  # δ = 0 is feasible: never report against the direction
                adv[worse] = x[worse]
                s = torch.where(worse, s0, s)
                buf.probes["kept_clean"][k] += int(worse.sum())
            buf.put(k, sl, adv, x, s)
        return spent_s

    def _best_clipped(
        self,
        target: Target,
        fars: list[torch.Tensor],
        x: torch.Tensor,
        r: torch.Tensor,
        e: float,
        eot: int,
        sign: torch.Tensor,
    ) -> torch.Tensor:
        """Each candidate clipped to ε; per image the one with the highest directed ``sign · q``
        (harness scoring, not counted as the attack's queries)."""
        advs = [(x + (c - x).clamp(-e, e)).clamp(0.0, 1.0) for c in fars]
        if len(advs) == 1:
            return advs[0]
        with torch.no_grad():
            qs = torch.stack([target.orient(target.expected_score(a, r, eot)) * sign for a in advs])
        pick = qs.argmax(dim=0)
        return torch.stack(advs)[pick, torch.arange(x.shape[0], device=x.device)]

    #: images of the first batch the probes look at (kept small: probes are harness overhead)
    PROBE_N = 8

    def _probe(self, target: Target, f: BoundTarget, x: torch.Tensor, probes: dict) -> None:
        """Carlini et al. 2019 checks, not counted as queries: zero/NaN gradients at the clean
        input (gradient masking or a broken target), and whether 5 forwards of the same input
        differ (a randomised target needs EOT)."""
        rows = torch.arange(x.shape[0])
        probes["probed"] += x.shape[0]
        if getattr(target, "differentiable", True):
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(f(xg, rows).sum(), xg, allow_unused=True)
            if g is None:
                probes["zero_grad"] += x.shape[0]
            else:
                g = g.flatten(1)
                bad = ~torch.isfinite(g).all(dim=1)
                probes["nan_grad"] += int(bad.sum())
                probes["zero_grad"] += int(((g.abs().amax(dim=1) == 0) & ~bad).sum())
        with torch.no_grad():
            m = min(2, x.shape[0])
            outs = torch.stack([target(x[:m], f.ref[:m]) for _ in range(5)])
        probes["randomised"] = bool(probes["randomised"] or (outs - outs[0]).abs().max() > 0)
        f.queries.zero_()

    def _verify(
        self,
        adv: torch.Tensor,
        x: torch.Tensor,
        x_keep: torch.Tensor,
        r: torch.Tensor,
        r_keep: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        where = f"attack {self.name!r} at ε={eps * 255:.4g}/255"
        if adv.shape != x.shape:
            raise BudgetViolation(f"{where} returned shape {tuple(adv.shape)}, expected {tuple(x.shape)}")
        if not torch.isfinite(adv).all():
            raise BudgetViolation(f"{where} returned NaN/inf pixels")
        if not torch.equal(r, r_keep):
            raise BudgetViolation(f"{where} modified the reference image")
        if not torch.equal(x, x_keep):
            raise BudgetViolation(f"{where} modified its input in place")
        lo, hi = float(adv.min()), float(adv.max())
        if lo < 0.0 or hi > 1.0:
            raise BudgetViolation(f"{where} left [0,1]: values in [{lo:.4g}, {hi:.4g}]")
        dev = (adv - x).abs().flatten(1).amax(dim=1)
        if float(dev.max()) > eps + BUDGET_TOL:
            i = int(dev.argmax())
            raise BudgetViolation(f"{where}: image {i} has L∞ {float(dev[i]) * 255:.4g}/255 > ε")
        return adv.clone()


Attack.HARNESS_DEFAULTS = {k: p.default for k, p in declared_params(Attack).items()}


def perceptibility(adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR (dB) and SSIM of each adversarial image against the unattacked distorted image: how
    visible the attack is. SSIM follows the ``ssim`` target (luminance, Gaussian 11/1.5, valid;
    reflect padding below 11 px)."""
    from robench.models.classic import luminance, ssim_map

    with torch.no_grad():
        mse = (adv - x).flatten(1).pow(2).mean(dim=1)
        psnr = torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-20)), torch.full_like(mse, float("inf")))
        side = min(x.shape[-2:])
        if side > 5:
            pad = "valid" if side >= 11 else "reflect"
            s = ssim_map(luminance(adv), luminance(x), padding=pad).flatten(1).mean(dim=1)
        else:  # too small for an 11-px window even with reflect padding
            s = torch.full_like(mse, float("nan"))
    return psnr, s


class ScoreLogits(torch.nn.Module):
    """Two logits ``[0, (q − q_clean)/scale]`` for classifier-only attack code: with label 0 the
    cross-entropy is ``softplus((q − q_clean)/scale)``, increasing in ``q``, so an untargeted
    attack that raises the loss raises the quality (docs/method.md §4)."""

    def __init__(self, f: BoundTarget, q_clean: torch.Tensor, scale: float):
        super().__init__()
        self.f = f
        self.q_clean = q_clean.detach()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.f(x) - self.q_clean) / self.scale
        return torch.stack([torch.zeros_like(z), z], dim=1)


def require(module: str, install: str):
    """Import an optional attack library or fail with the command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RobenchError(f"{module} is not installed ({exc}); install it with: {install}") from None
