"""The run configuration: every setting of a run, in one typed object.

``robench run --model …`` flags, ``robench run --config run.toml`` and ``robench.run(config)`` /
``robench.run(model=…)`` all build a :class:`RunConfig`; :meth:`RunConfig.resolve` fills what the
profile and the plugins decide (ε list, items per cell, the dataset's size options, the attack
suite) in this one place, so the same settings give the same cell keys however a run starts.
The resolved config is written beside the run (``config.toml``); ``robench run --config`` of
that file reproduces it.

:class:`RunSpec` is the engine's unit: one target × one defence of a resolved config.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from robench.core.errors import RobenchError, UnknownNameError

#: the name of the undefended row (an engine name, not a plugin)
NO_DEFENSE = "none"


@dataclass(kw_only=True)
class RunSettings:
    """The settings a grid (:class:`RunConfig`) and each of its target × defence units
    (:class:`RunSpec`) share: one field list, inherited by both."""

    dataset: str | None = None  # None: the registry's default dataset (offline)
    eps: list[float] | None = None  # /255 units; None: the profile's
    profile: str = "quick"
    n: int | None = None  # items per cell; None: the profile's; 0: the whole split
    seed: int = 0
    split: str = "test"
    weights: str | None = None  # one weights file or "none" (a single target only)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    force: bool = False
    device: str = "cpu"  # auto | cpu | cuda | cuda:N: recorded with every cell, never part of its key
    # speed options (robench.engine.speed): bf16 autocast is part of a cell's key (another
    # measurement), torch.compile is recorded, not keyed (eager's arithmetic up to float order)
    amp: str | None = None  # None: float32 | "bf16"
    compile: bool = False
    # doublings of an attack's budget allowed when a cell's half-budget check flags it not
    # converged (engine.cell.run_cell); not keyed: a converged cell is the same measurement at
    # any cap, and a stored flagged cell is re-opened by a run with a larger cap (engine.grid)
    escalate: int = 0
    # adversarial images kept beside the store (engine.images): "top" (default: the report's
    # gallery, a few items per cell), "all" (robench transfer), "none"; not keyed: the same
    # measurement, kept or not (a stored cell without them is computed again for "all")
    keep_images: str = "top"


@dataclass
class RunSpec(RunSettings):
    """One target × one defence of a grid (what the engine plans and keys)."""

    model: str
    attacks: list[str]
    defense: str | None = None
    # the training recipe's fine-tuning seed (RunConfig.seeds): None = the run's seed
    # (the single-seed behaviour); k > 0 loads/trains the weights ``M.<recipe>-s<k>``
    train_seed: int | None = None
    store: Path | None = None
    # attack directions (core.directions): one cell per attack × direction; "up" keeps old keys
    directions: list[str] = field(default_factory=lambda: ["up"])

    def __post_init__(self) -> None:
        if self.dataset is None:
            from robench.core.registry import default_dataset

            self.dataset = default_dataset()


def dataset_options_for(dataset: str, profile: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The dataset's options under a profile (a built set's image size), then the user's."""
    from robench.core.profiles import get_profile
    from robench.core.registry import DATASETS

    return {**DATASETS.get(dataset).profile_options(get_profile(profile)), **options}


def expand_attacks(names: str | list[str]) -> list[str]:
    """``all`` → the attacks that declare a suite place; unknown names fail with a did-you-mean."""
    from robench.core.registry import ATTACKS, attack_suite

    out: list[str] = []
    for name in _comma(names):
        for a in attack_suite() if name == "all" else (name,):
            ATTACKS.entry(a)
            if a not in out:
                out.append(a)
    if not out:
        raise RobenchError("no attack given (use --attacks all or a comma-separated list)")
    return out


def _comma(v: Any) -> list[str]:
    if v is None:
        return []
    items = v.split(",") if isinstance(v, str) else list(v)
    return [str(i).strip() for i in items if str(i).strip()]


@dataclass
class RunConfig(RunSettings):
    """A grid: every target × defence × attack over the ε list, on one dataset split."""

    targets: list[str]
    attacks: list[str] = field(default_factory=lambda: ["all"])
    defenses: list[str] = field(default_factory=lambda: [NO_DEFENSE])
    # training seeds of the recipes: each recipe defence (r, at, aat, with or without
    # inference wrappers) is fine-tuned and evaluated once per seed; None = one fine-tuning with
    # ``seed`` (the single-seed behaviour). Seed 0 is the weights ``M.<recipe>``, k > 0 ``M.<recipe>-s<k>``
    seeds: list[int] | None = None
    executor: str = "serial"
    executor_options: dict[str, Any] = field(default_factory=dict)
    # attack directions (core.directions): up (score inflation), down, mos-split (the ranking
    # attack); each attack runs once per direction, and the direction is part of the cell's key.
    # None: core.directions.run_default for the dataset's kind (up and mos-split on pairs data)
    directions: list[str] | None = None
    store: str | None = None
    resolved: bool = False

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "run configuration") -> "RunConfig":
        """Keys as in the TOML file; ``model``/``defense``/``attack`` (comma lists) are accepted
        for ``targets``/``defenses``/``attacks``, as the CLI flags are named."""
        data = _known_settings(cls, data, where)
        if "targets" not in data or not _comma(data["targets"]):
            raise RobenchError(f'{where}: no target given (targets = ["birqa"] or --model)')
        data["targets"] = _comma(data["targets"])
        if "attacks" in data:
            data["attacks"] = _comma(data["attacks"])
        if "defenses" in data:
            data["defenses"] = [d if d else NO_DEFENSE for d in _comma(data["defenses"])] or [NO_DEFENSE]
        if data.get("eps") is not None:
            eps = data["eps"]
            try:
                data["eps"] = [float(e) for e in (eps.split(",") if isinstance(eps, str) else eps) if str(e).strip()]
            except (TypeError, ValueError):
                raise RobenchError(
                    f"{where}: --eps / eps must be comma-separated numbers in /255 units, got {eps!r}"
                ) from None
        _check_tables(data, where)
        if data.get("store") is not None:
            data["store"] = str(data["store"])
        if data.get("device") is not None:
            data["device"] = str(data["device"])  # a torch.device from Python: its name
        if data.get("seeds") is not None:
            data["seeds"] = parse_seeds(data["seeds"], where)
        if isinstance(data.get("n"), str) and data["n"].strip().lower() == "all":
            data["n"] = 0  # the whole split
        if data.get("n") is not None and (
            isinstance(data["n"], bool) or not isinstance(data["n"], int) or data["n"] < 0
        ):
            raise RobenchError(f"{where}: n must be a whole number of items ≥ 1 or 'all', got {data['n']!r}")
        if "directions" in data:
            from robench.core.directions import parse_directions

            data["directions"] = parse_directions(data["directions"], f"{where}: directions")
        if "amp" in data:
            from robench.core.target import check_amp

            data["amp"] = check_amp(data["amp"], f"{where}: amp")
        esc = data.get("escalate", 0)
        if isinstance(esc, bool) or not isinstance(esc, int) or not 0 <= esc <= 6:
            raise RobenchError(f"{where}: escalate must be a whole number of budget doublings from 0 to 6, got {esc!r}")
        if "keep_images" in data:
            data["keep_images"] = keep_mode(data["keep_images"], where)
        if not isinstance(data.get("compile", False), bool):
            raise RobenchError(f"{where}: compile must be true or false, got {data['compile']!r}")
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise RobenchError(f"run configuration {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RobenchError(f"{path}: not valid TOML ({exc})") from None
        data.pop("robench", None)  # the header written with a resolved config (version, commit)
        return cls.from_dict(data, where=str(path))

    # -- resolving ---------------------------------------------------------------------------
    def resolve(self) -> "RunConfig":
        """Everything the profile and the plugins decide, filled in once: the result names every
        setting explicitly and resolves to itself."""
        from robench.core.profiles import get_profile
        from robench.core.registry import ATTACKS, DATASETS, DEFENSES, default_dataset

        prof = get_profile(self.profile)
        dataset = self.dataset or default_dataset()
        options = dataset_options_for(dataset, prof, self.dataset_options)
        eps = sorted({float(e) for e in (self.eps if self.eps else prof.eps)})
        for e in eps:
            if not (0 < e <= 255) or math.isnan(e):
                raise RobenchError(f"--eps values are in /255 units and must be in (0, 255], got {e:g}")
        attacks = expand_attacks(self.attacks)
        for name in self.attack_params:
            ATTACKS.entry(name)
            # a setting that would silently do nothing (an unknown parameter of an attack in the run
            # is refused by the attack itself, when the plan builds it, before any compute)
            if name not in attacks:
                close = difflib.get_close_matches(name, attacks, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RobenchError(
                    f"--attack-option (attack_params) names attack {name!r}, which is not in this run's "
                    f"attacks ({', '.join(attacks)}){hint}"
                )
        defenses = []
        for d in self.defenses:
            for tok in d.split("+"):
                if tok.strip() and tok.strip() != NO_DEFENSE:
                    DEFENSES.entry(tok.strip())
            if d not in defenses:
                defenses.append(d)
        if self.weights is not None and len(self.targets) > 1:
            raise RobenchError("--weights names one file: use it with a single --model")
        seeds = None if self.seeds is None else parse_seeds(self.seeds, "--seeds")
        if seeds is not None and len(seeds) > 1 and self.weights is not None:
            raise RobenchError("--seeds fine-tunes a recipe per seed; --weights names one file: not both")
        from robench.core.device import resolve_device

        resolve_device(self.device)  # a device this machine lacks fails here, before any work
        n = self.n if self.n is not None else prof.attack_n
        from robench.core.directions import parse_directions, run_default

        directions = (
            parse_directions(self.directions, "--direction")
            if self.directions is not None
            else run_default(DATASETS.get(dataset).kind)
        )
        return replace(
            self,
            profile=prof.name,
            dataset=dataset,
            dataset_options=options,
            eps=eps,
            attacks=attacks,
            defenses=defenses,
            n=n,
            seeds=seeds,
            directions=directions,
            resolved=True,
        )

    def specs(self) -> list[RunSpec]:
        """One :class:`RunSpec` per target × defence (of the resolved config), and per training
        seed (``seeds``) for a defence with a training recipe."""
        c = self if self.resolved else self.resolve()
        return [
            RunSpec(
                **_shared(c),
                model=m,
                attacks=list(c.attacks),
                defense=None if d == NO_DEFENSE else d,
                train_seed=s,
                store=Path(c.store) if c.store else None,
                directions=list(c.directions),
            )
            for m in c.targets
            for d in c.defenses
            for s in (c.seeds if c.seeds is not None and has_recipe(d) else [None])
        ]

    # -- writing -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("resolved")
        return d

    def to_toml(self, header: dict[str, Any] | None = None) -> str:
        """TOML of every setting that is set (TOML has no null: a missing key is the default)."""
        d = {k: v for k, v in self.to_dict().items() if v is not None}
        if header:
            d = {"robench": header, **d}
        return dumps_toml(d)


def _shared(c: RunSettings) -> dict[str, Any]:
    """The shared settings of ``c`` as fresh values (a spec never aliases its config's lists)."""
    import copy

    out = {f.name: copy.deepcopy(getattr(c, f.name)) for f in fields(RunSettings) if f.name != "dataset_options"}
    return {**out, "dataset_options": json.loads(json.dumps(c.dataset_options))}


#: the CLI's flag names accepted as settings
SETTING_ALIASES = {
    "model": "targets",
    "models": "targets",
    "defense": "defenses",
    "attack": "attacks",
    "direction": "directions",
}


def _known_settings(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings with the CLI's aliases renamed; an unknown one fails with a suggestion."""
    data = dict(data)
    for a, k in SETTING_ALIASES.items():
        if a in data:
            if k in data:
                raise RobenchError(f"{where}: give {k!r} or {a!r}, not both")
            data[k] = data.pop(a)
    known = {f.name for f in fields(cls)}
    for k in data:
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"{where}: unknown setting {k!r}{hint} (settings: {', '.join(sorted(known))})")
    return data


def _check_tables(data: dict[str, Any], where: str) -> None:
    """The option settings are tables, and each attack's or defence's entry a table of parameters."""
    for k in ("dataset_options", "attack_params", "defense_options", "executor_options"):
        if not isinstance(data.get(k, {}), dict):
            raise RobenchError(f"{where}: {k} must be a table, got {data[k]!r}")
    for k in ("attack_params", "defense_options"):
        for name, v in data.get(k, {}).items():
            if not isinstance(v, dict):
                raise RobenchError(f"{where}: {k}.{name} must be a table of parameters, got {v!r}")


def parse_seeds(v: Any, where: str = "--seeds") -> list[int]:
    """``"0,1,2"`` / ``[2, 0, 1]`` / ``1`` → the sorted unique training seeds (non-negative ints)."""
    items = [v] if isinstance(v, int) and not isinstance(v, bool) else _comma(v)
    try:
        seeds = sorted({int(str(x)) for x in items})
    except ValueError:
        raise RobenchError(f"{where}: seeds must be comma-separated non-negative integers, got {v!r}") from None
    if not seeds or seeds[0] < 0:
        raise RobenchError(f"{where}: seeds must be comma-separated non-negative integers, got {v!r}")
    return seeds


KEEP_MODES = ("top", "all", "none")


def keep_mode(v: Any, where: str = "keep_images") -> str:
    """``keep_images``: true → "all", false → "none", or one of top | all | none."""
    if isinstance(v, bool):
        return "all" if v else "none"
    if v not in KEEP_MODES:
        raise RobenchError(f"{where}: keep_images must be one of {', '.join(KEEP_MODES)} (or true/false), got {v!r}")
    return str(v)


def has_recipe(defense: str | None) -> bool:
    """Whether a defence (``aat``, ``aat+flip``) includes a training recipe: what ``seeds`` repeat."""
    from robench.core.registry import DEFENSES, training_recipes

    toks = [t.strip() for t in (defense or "").split("+") if t.strip() and t.strip() != NO_DEFENSE]
    for t in toks:
        DEFENSES.get(t)  # an unknown name: did-you-mean
    recipes = training_recipes()
    return any(t in recipes for t in toks)


# ------------------------------------------------------------------------------------------
# a small TOML writer (tomllib reads; the standard library has no writer)


def _toml_value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise RobenchError(f"{where}: {v} cannot be written to TOML")
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, where) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x, where)}" for k, x in v.items() if x is not None) + "}"
    raise RobenchError(f"{where}: {type(v).__name__} value {v!r} cannot be written to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(data: dict[str, Any]) -> str:
    """Scalars and lists first, then one ``[table]`` per dict (nested dicts inline)."""
    top = [f"{_key(k)} = {_toml_value(v, k)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(top) + ("\n" if top else "")
    for k, v in data.items():
        if isinstance(v, dict):
            out += f"\n[{_key(k)}]\n" + "".join(
                f"{_key(kk)} = {_toml_value(vv, f'{k}.{kk}')}\n" for kk, vv in v.items() if vv is not None
            )
    return out
