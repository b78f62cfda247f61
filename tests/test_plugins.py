"""Generic contract tests over every registry entry (models, attacks, defences, datasets).

The parametrisations are read from the registries at collection time, so a plugin added as one
file that registers itself (or through an entry point) gets these tests with no test edit. Each
plugin runs with the small options it declares (``test_options``). The checks are plain
functions taking a registry name (``check_target``, ``check_attack_declarations``,
``run_attack_contract``, ``check_defence``, ``check_dataset_declarations``, ``check_dataset``),
so tests/test_extending.py runs the same contract on the worked examples under
docs/examples/extending/.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import layouts as L
import numpy as np
import pandas as pd
import pytest
import torch

from robench.attacks.base import Attack, declared_params
from robench.core.errors import RobenchError, UnknownNameError
from robench.core.profiles import PROFILES
from robench.core.registry import (
    ATTACKS,
    DATASETS,
    DEFENSES,
    MODELS,
    REGISTRIES,
    Registry,
    attack_suite,
    default_dataset,
    default_of,
)
from robench.core.target import Target
from robench.data.base import SPLITS, IQADataset
from robench.defenses.wrappers import Defended, InferenceDefense
from robench.models import build
from tests.conftest import attack_test_params, prepare_defence

EPS = 4 / 255
SIZE = 32

#: the real datasets' tiny official layouts (tests/layouts.py): the dataset contract runs on them
#: when the real files are absent. A dataset with files and no maker here is skipped with a reason.
LAYOUTS = {
    "kadid10k": L.make_kadid,
    "tid2013": L.make_tid,
    "live": L.make_live,
    "csiq": L.make_csiq,
    "pipal": L.make_pipal,
    "pieapp": L.make_pieapp,
    "pieapp-2afc": L.make_pieapp,
    "bapps-2afc": L.make_bapps,
}


def _pair(n: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    dist = (0.7 * ref + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)  # clearly distorted
    return dist, ref


def _info_row(reg: Registry, name: str) -> dict:
    return next(r for r in reg.info() if r["name"] == name)


def _grad_rows(f, dist: torch.Tensor) -> torch.Tensor:
    """∂ Σ f(x) / ∂x at ``dist``, one row per image."""
    x = dist.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(x).sum(), x)
    return g.flatten(1)


# --------------------------------------------------------------------------------------------
# targets (MODELS)


def check_target(name: str) -> None:
    """Declarations (card name, score direction) and behaviour (N finite deterministic scores,
    a finite non-zero gradient w.r.t. dist when differentiable) of target ``name``."""
    obj = MODELS.get(name)
    opts = dict(getattr(obj, "test_options", {}) or {})
    torch.manual_seed(0)
    t = build(name, **opts).eval()
    assert isinstance(t, Target), f"{name}: build() must return a robench Target, got {type(t).__name__}"
    assert t.card.name == name, f"card name {t.card.name!r} is not the registry name {name!r}"
    assert isinstance(t.card.lower_better, bool), "the card must declare lower_better as a bool"
    declared = MODELS.entry(name).meta.get("lower_better")
    if declared is not None:
        assert declared is t.card.lower_better, f"register(lower_better={declared}) disagrees with the card"
    assert _info_row(MODELS, name).get("lower_better") is t.card.lower_better, "`robench ls models` direction"
    for flag in ("requires_weights", "differentiable", "randomised", "predicts_mos"):
        assert isinstance(getattr(t, flag), bool), f"{flag} must be a bool"
    assert isinstance(t.card.min_size, int) and t.card.min_size >= 1
    dist, ref = _pair(n=2, size=max(SIZE, t.card.min_size))
    with torch.no_grad():
        s1, s2 = t(dist, ref), t(dist, ref)
    assert s1.shape == (2,) and s1.is_floating_point() and torch.isfinite(s1).all()
    if not t.randomised:
        assert torch.equal(s1, s2), "scores differ between two identical calls in eval mode"
    if t.differentiable:
        g = _grad_rows(lambda x: t.oriented_quality(x, ref), dist)
        assert torch.isfinite(g).all(), "non-finite gradient w.r.t. dist"
        assert (g.abs().sum(dim=1) > 0).all(), "a pair got an identically zero gradient w.r.t. dist"


@pytest.mark.parametrize("name", MODELS.names())
def test_target_contract(name):
    check_target(name)


def test_one_default_target():
    assert default_of(MODELS) in MODELS.names()


# --------------------------------------------------------------------------------------------
# attacks (ATTACKS)


def check_attack_declarations(name: str) -> None:
    """What an attack class declares: kind, needs, budgets per profile, cost, suite place."""
    cls = ATTACKS.get(name)
    assert isinstance(cls, type) and issubclass(cls, Attack), f"{name} must subclass robench.attacks.base.Attack"
    assert cls.kind in ("fixed", "minimisation")
    assert cls.needs in ("gradients", "scores")
    assert isinstance(cls.iterative, bool)
    assert isinstance(cls.defaults, dict)
    keys = set(cls.defaults)
    fields = declared_params(cls)
    assert keys <= set(fields), "every hyper-parameter is a Param field"
    for k, p in fields.items():
        assert p.doc.strip(), f"{name}.{k}: a Param says what it means"
        assert getattr(cls(profile="quick"), k) == cls(profile="quick").params[k]  # reads the resolved value
    assert set(cls.budget_params) <= keys, f"budget_params {cls.budget_params} not all in defaults"
    for profile, params in cls.budgets.items():
        assert profile in PROFILES, f"budgets names unknown profile {profile!r} (profiles: {list(PROFILES)})"
        assert set(params) <= keys, f"budgets[{profile!r}] sets {sorted(set(params) - keys)}, not in defaults"
    assert cls.suite is None or (isinstance(cls.suite, int) and not isinstance(cls.suite, bool))
    assert set(cls.test_options) <= keys, f"test_options sets {sorted(set(cls.test_options) - keys)}, not in defaults"
    assert set(cls.training_data_params) <= keys
    assert set(cls.at_least_as_strong_as) <= set(ATTACKS.names())
    for profile in PROFILES:
        a = cls(profile=profile)
        cost = a.cost()
        assert set(cost) >= {"grad", "forward"}, f"cost() under {profile!r} must give grad and forward"
        for k in ("grad", "forward"):
            v = cost[k]
            assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0, (
                profile,
                k,
                v,
            )
        setup = a.setup_cost(100)
        assert isinstance(setup, (int, float)) and math.isfinite(setup) and setup >= 0
        half = a.half_budget()
        assert half == {} or set(half) == set(a.params)
    assert json.loads(json.dumps(cls.registry_meta(), default=str))  # `robench ls attacks --json`


def run_attack_contract(name: str) -> None:
    """Run attack ``name`` with its ``test_options`` on random-init ``ssim`` (2 images, 32 px,
    ε = 4/255): every image in budget and in [0, 1], never below the clean oriented quality.
    An attack that trains on data gets the default dataset with its ``test_options`` (built by
    the ``tiny_mini`` fixture), as the engine fills ``training_data_params``."""
    cls = ATTACKS.get(name)
    params = attack_test_params(name)
    torch.manual_seed(0)
    t = build("ssim").eval()
    dist, ref = _pair(n=2, size=SIZE, seed=1)
    dist0, ref0 = dist.clone(), ref.clone()
    res = cls(seed=0, **params)(t, dist, ref, eps=[EPS])
    assert torch.equal(dist, dist0) and torch.equal(ref, ref0), "the attack changed its inputs"
    assert res.images.shape == (1, *dist.shape) and res.scores.shape == (1, 2)
    adv = res.images[0]
    assert float((adv - dist).abs().max()) <= EPS + 1e-6 and float(res.linf.max()) <= EPS + 1e-6
    assert 0 <= float(adv.min()) and float(adv.max()) <= 1 and torch.isfinite(adv).all()
    q0, q = res.oriented(t.lower_better)
    assert (q >= q0).all(), "an image ended below its clean oriented quality"
    assert (res.queries >= 0).all()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_declarations(name):
    check_attack_declarations(name)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_runs_in_budget(name, tiny_mini):
    run_attack_contract(name)


def test_suite_places_unique():
    places = {n: ATTACKS.get(n).suite for n in ATTACKS.names() if ATTACKS.get(n).suite is not None}
    assert len(set(places.values())) == len(places), f"two attacks share a suite place: {places}"
    assert list(attack_suite()) == sorted(places, key=places.get)


# --------------------------------------------------------------------------------------------
# defences (DEFENSES)


def check_defence(name: str) -> None:
    """Training recipes declare ``label`` and ``order``; an inference defence built with its
    ``test_options`` wraps a tiny target and gives finite scores and a finite, non-zero
    gradient through the bound target (exact or BPDA), leaves ``ref`` alone when it purifies
    ``dist`` only, and is deterministic unless it declares ``randomised``."""
    cls = DEFENSES.get(name)
    assert getattr(cls, "name", None) == name, f"class name attribute {getattr(cls, 'name', None)!r} is not {name!r}"
    kind = getattr(cls, "kind", None)
    assert kind in ("inference", "training"), f"kind must be 'inference' or 'training', got {kind!r}"
    meta = _info_row(DEFENSES, name)
    assert meta.get("kind") == kind, "`robench ls defenses` must show the kind"
    if kind == "training":
        label, order = getattr(cls, "label", None), getattr(cls, "order", None)
        assert isinstance(label, str) and label, f"recipe {name!r} must declare label (its name in tables)"
        assert isinstance(order, int) and not isinstance(order, bool), f"recipe {name!r} must declare order (an int)"
        return
    assert issubclass(cls, InferenceDefense)
    assert isinstance(cls.randomised, bool)
    assert cls.gradient in ("exact", "bpda"), f"gradient must be 'exact' or 'bpda', got {cls.gradient!r}"
    assert cls.applies_to in ("dist", "both")
    assert set(cls.test_options) <= set(cls.defaults)
    d = cls(**dict(cls.test_options))
    assert json.dumps(d.config(), default=str) and d.config()["name"] == name
    torch.manual_seed(0)
    t = Defended(build("ssim").eval(), [d])
    assert t.randomised == cls.randomised
    dist, ref = _pair(n=2, size=SIZE)
    with torch.no_grad():
        s1, s2 = t(dist, ref), t(dist, ref)
        out_dist, out_ref = d(dist.clone(), ref.clone())
    assert s1.shape == (2,) and torch.isfinite(s1).all()
    assert out_dist.shape == dist.shape and torch.isfinite(out_dist).all()
    if cls.applies_to == "dist":
        assert torch.equal(out_ref, ref), "a dist-only defence changed ref"
    if not cls.randomised:
        assert torch.equal(s1, s2), "a defence not declared randomised gave two different scores"
    f = t.bind(ref)  # what attacks differentiate: the reference branch cached (dist-only: ref=None)
    g = _grad_rows(f, dist)
    assert torch.isfinite(g).all(), "non-finite gradient through the defence"
    assert (g.abs().sum(dim=1) > 0).all(), f"zero gradient through a defence declaring gradient={cls.gradient!r}"


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defence_contract(name, defence_home, monkeypatch, request):
    monkeypatch.setenv("ROBENCH_HOME", str(defence_home))
    prepare_defence(name, request)
    cls = DEFENSES.get(name)
    if getattr(cls, "kind", None) == "inference":
        try:
            cls(**dict(getattr(cls, "test_options", {})))
        except RobenchError as exc:  # e.g. weights its prepare() trains, with no fixture above
            pytest.skip(f"defence {name!r} cannot be built here (no prerequisite fixture): {exc}")
    try:
        check_defence(name)
    except RobenchError as exc:
        if "is not installed; install it with" in str(exc):  # robench.attacks.base.require
            pytest.skip(f"defence {name!r} needs an optional package: {exc}")
        raise


# --------------------------------------------------------------------------------------------
# datasets (DATASETS)


def check_dataset_declarations(name: str) -> None:
    """What a dataset class declares, checked without reading any file."""
    cls = DATASETS.get(name)
    assert isinstance(cls, type) and issubclass(cls, IQADataset), f"{name} must subclass robench.data.base.IQADataset"
    assert cls.kind in ("pairs", "2afc")
    assert isinstance(cls.default, bool) and isinstance(cls.test_options, dict)
    assert cls.splits and set(cls.splits) <= set(SPLITS)
    for prof in PROFILES.values():
        opts = cls.profile_options(prof)
        assert isinstance(opts, dict), f"profile_options({prof.name!r}) must return a dict"
    sizes = cls.nominal_sizes()
    assert sizes is None or (
        isinstance(sizes, dict)
        and set(sizes) <= set(SPLITS)
        and all(isinstance(v, int) and v >= 0 for v in sizes.values())
    )
    if cls.kind == "2afc":
        ts = cls.training_set
        assert ts is None or (ts in DATASETS.names() and DATASETS.get(ts).kind == "pairs"), (
            f"training_set {ts!r} must be None or a registered pairs dataset"
        )
    else:
        assert cls.training_set is None


def _check_sample(ds: IQADataset, i: int) -> None:
    s = ds[i]
    img_keys = ("ref", "dist") if ds.kind == "pairs" else ("ref", "p0", "p1")
    assert set(s) >= {*img_keys, "ref_id", "source", "distortion"}, sorted(s)
    shape = s["ref"].shape
    for k in img_keys:
        x = s[k]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32, (k, type(x), getattr(x, "dtype", None))
        assert x.dim() == 3 and x.shape[0] == 3 and x.shape == shape, (k, tuple(x.shape))
        assert torch.isfinite(x).all() and 0 <= float(x.min()) and float(x.max()) <= 1
    if ds.kind == "pairs":
        assert math.isfinite(float(s["mos"]))
    else:
        assert 0.0 <= float(s["judge"]) <= 1.0
    row = ds.table.iloc[i]
    assert str(s["source"]) == str(row["source"]) and str(s["ref_id"]) == str(row["ref_id"])


def check_dataset(name: str, **options) -> None:
    """The dataset contract on ``DATASETS.get(name)(split=..., **options)``: item shapes and
    ranges, finite labels, splits disjoint by source photo and matching the whole table, and
    determinism (the same options give the same table and the same first item)."""
    cls = DATASETS.get(name)
    full = cls(split="all", **options)
    t = full.table
    assert isinstance(t, pd.DataFrame) and len(t) == len(full) > 0
    assert {"ref_id", "source", "distortion", "split"} <= set(t.columns), list(t.columns)
    assert full.kind == cls.kind
    assert (t.groupby("ref_id")["source"].nunique() == 1).all(), "a reference belongs to one source photo"
    if full.kind == "pairs":
        assert "mos" in t and np.isfinite(t["mos"].to_numpy(dtype=float)).all()
    elif "judge" in t:
        j = t["judge"].to_numpy(dtype=float)
        assert np.isfinite(j).all() and ((0 <= j) & (j <= 1)).all()
    splits = tuple(full.splits)
    assert splits and set(splits) <= set(SPLITS) and set(t["split"]) <= set(splits)
    sources = {s: set(t.loc[t["split"] == s, "source"]) for s in splits}
    for a in splits:
        for b in splits:
            assert a == b or not (sources[a] & sources[b]), f"splits {a} and {b} share source photos"
    total = 0
    for s in splits:
        part = cls(split=s, **options)
        assert part.split == s and len(part) == int((t["split"] == s).sum()) > 0, s
        assert set(part.table["source"]) == sources[s]
        total += len(part)
        for i in sorted({0, len(part) // 2, len(part) - 1}):
            _check_sample(part, i)
    assert total == len(t), "the splits do not add up to the whole table"
    again = cls(split="all", **options)
    pd.testing.assert_frame_equal(again.table, t)
    a, b = full[0], again[0]
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k
    sub = full.subset([len(full) - 1, 0])
    assert len(sub) == 2 and sub.table.iloc[1]["source"] == t.iloc[0]["source"]


def dataset_options(name: str, tmp_path) -> dict:
    """Options to build dataset ``name`` here: its ``test_options``, plus a tiny official layout
    under ``tmp_path`` for a real dataset whose files are absent; skip when there is neither."""
    cls = DATASETS.get(name)
    opts = dict(cls.test_options)
    try:
        cls(split="all", **opts)
        return opts
    except RobenchError as exc:
        if name not in LAYOUTS:
            pytest.skip(f"dataset {name!r} needs files that are not here and has no test layout: {exc}")
    LAYOUTS[name](tmp_path)
    return {**opts, "root": tmp_path}


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_declarations(name):
    check_dataset_declarations(name)


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, tiny_mini, tmp_path):
    check_dataset(name, **dataset_options(name, tmp_path))


def test_one_default_dataset_and_it_needs_no_files(tiny_mini):
    name = default_dataset()
    cls = DATASETS.get(name)
    assert cls.kind == "pairs"
    assert len(cls(split="test", **cls.test_options)) > 0  # the offline default: no root, no download


# --------------------------------------------------------------------------------------------
# registries


def test_unregister_removes_an_entry_and_unknown_names_fail():
    reg = Registry("widget")
    reg.add("alpha", int)
    entry = reg.unregister("alpha")
    assert entry.obj is int and "alpha" not in reg and reg.names() == []
    reg.add("alpha", float)  # a removed name registers again
    assert reg.get("alpha") is float
    with pytest.raises(UnknownNameError, match="unknown widget 'alpa'; did you mean 'alpha'"):
        reg.unregister("alpa")


def test_registries_hold_only_discovered_plugins():
    """Tests clean up what they register: the registries of this process (after the tests that
    ran before this one here) hold exactly what a fresh process discovers."""
    code = (
        "import json; from robench.core.registry import REGISTRIES; "
        "print(json.dumps({k: r.names() for k, r in REGISTRIES.items()}))"
    )
    fresh = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    here = {k: r.names() for k, r in REGISTRIES.items()}
    leaked = {k: sorted(set(here[k]) - set(fresh[k])) for k in here if set(here[k]) - set(fresh[k])}
    missing = {k: sorted(set(fresh[k]) - set(here[k])) for k in here if set(fresh[k]) - set(here[k])}
    assert not leaked, f"entries registered by tests and never removed: {leaked}"
    assert not missing, f"entries removed by tests and never restored: {missing}"
