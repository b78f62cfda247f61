"""``robench validate``: a fast self-check of an installation (:func:`self_check`), and with
``--profile paper`` a dry build of the paper's grid without running it (:func:`dry_build`).

Every target is built (random initialisation: no weights needed), every defence parsed, every
attack instantiated with the profile's parameters — so a typo or an impossible setting fails here,
not hours into a run — and the grid's size is reported with an estimated cost per cell from a
short timed sample of each target's forward and forward+backward passes at the profile's image
size on this machine. The cost model counts evaluations per image and budget from the attacks'
parameters (gradient steps, score queries, EOT draws); it ignores per-batch overheads, so it is a
lower-bound estimate, labelled as such.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from robench.core.profiles import get_profile


def paper_grid(profile: str = "paper"):
    """The paper's grid: the shipped ``configs/paper.toml``, resolved (data, not code)."""
    from dataclasses import replace

    from robench.configs import shipped
    from robench.core.config import RunConfig

    return replace(RunConfig.from_toml(shipped("paper")), profile=profile).resolve()


def split_sizes(dataset: str, seed: int = 0) -> dict[str, int]:
    """Items per split as the dataset declares them without its files (``nominal_sizes``)."""
    from robench.core.errors import RobenchError
    from robench.core.registry import DATASETS

    sizes = DATASETS.get(dataset).nominal_sizes(seed)
    if sizes is None:
        raise RobenchError(
            f"dataset {dataset!r} does not declare its split sizes (nominal_sizes): the dry build "
            "cannot size the grid without its files"
        )
    return sizes


def evaluations(attack, eot: int = 1) -> dict[str, float]:
    """Per image and budget: gradient evaluations (forward+backward) and score-only forwards,
    as the attack declares them (``Attack.cost``), plus the clean score."""
    c = attack.cost()
    return {"grad": c["grad"] * eot, "forward": (c["forward"] + 1) * eot}


def time_target(
    name: str, size: tuple[int, int], batch: int = 2, repeats: int = 2, device: str = "cpu"
) -> dict[str, float]:
    """Seconds per image of a forward pass and of forward + ∂q/∂x at ``size`` (random weights)."""
    from robench.core.device import resolve_device
    from robench.models import load_model

    device = resolve_device(device)
    t = load_model(name, weights="none", device=device).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    w, h = size
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(batch, 3, h, w, generator=gen).to(device)
    dist = (ref + 0.05 * torch.randn(batch, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fwd, fb = [], []
    with torch.no_grad():
        t(dist, ref)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            t(dist, ref)
        sync()
        fwd.append(time.perf_counter() - t0)
        x = dist.clone().requires_grad_(True)
        t0 = time.perf_counter()
        (g,) = torch.autograd.grad(t(x, ref).sum(), x)
        sync()
        fb.append(time.perf_counter() - t0)
    return {"forward_s": min(fwd) / batch, "grad_s": min(fb) / batch}


def dry_build(
    profile: str = "paper", sample: bool = True, device: str = "cpu", size: tuple[int, int] = (512, 384), progress=None
) -> dict[str, Any]:
    from robench.core.device import resolve_device
    from robench.defenses import parse_defense
    from robench.models import build
    from robench.core.registry import ATTACKS

    device = str(resolve_device(device))  # a device this machine lacks fails before the build
    prof = get_profile(profile)
    cfg = paper_grid(prof.name)
    grid = {
        "targets": cfg.targets,
        "defenses": cfg.defenses,
        "attacks": cfg.attacks,
        "dataset": cfg.dataset,
        "split": cfg.split,
    }
    for spec in cfg.specs():
        parse_defense(spec.defense)
    # as the engine builds them: an attack that trains on data gets the run's dataset
    run_data = {"dataset": cfg.dataset, "dataset_options": dict(cfg.dataset_options)}
    attacks = {
        a: ATTACKS.get(a)(profile=prof.name, seed=0, **{k: run_data[k] for k in ATTACKS.get(a).training_data_params})
        for a in grid["attacks"]
    }
    params = {}
    for tname in grid["targets"]:
        params[tname] = sum(p.numel() for p in build(tname).parameters())
    sizes = split_sizes(cfg.dataset)
    n_items = prof.attack_n or sizes[grid["split"]]
    n_eps = len(prof.eps)
    cells = len(grid["targets"]) * len(grid["defenses"]) * len(grid["attacks"])
    out: dict[str, Any] = {
        "profile": prof.name,
        "dataset": grid["dataset"],
        "split": grid["split"],
        "items_per_cell": n_items,
        "eps": list(prof.eps),
        "targets": list(grid["targets"]),
        "defenses": list(grid["defenses"]),
        "attacks": {a: repr(x) for a, x in attacks.items()},
        "cells": cells,
        "attacked_images": cells * n_items * n_eps,
        "parameters": params,
        "image_size": f"{size[0]}x{size[1]}",
        "device": device,
        "estimate": None,
    }
    if sample:
        out["estimate"] = _dry_estimate(prof, grid, attacks, sizes, n_items, size, device, progress)
    return out


def _dry_estimate(prof, grid: dict, attacks: dict, sizes: dict, n_items: int, size, device: str, progress) -> dict:
    n_eps = len(prof.eps)
    timing = {}
    for tname in grid["targets"]:
        if progress:
            progress(f"timing {tname} at {size[0]}x{size[1]} on {device}")
        timing[tname] = time_target(tname, size, device=device)
    per_cell = []
    for tname in grid["targets"]:
        tt = timing[tname]
        for aname, a in attacks.items():
            ev = evaluations(a)
            # a minimisation attack (C&W) runs once at the largest ε and is clipped to the others
            runs = 1 if a.kind == "minimisation" else n_eps
            sec = n_items * runs * (ev["grad"] * tt["grad_s"] + ev["forward"] * tt["forward_s"])
            # training before attacking (a generator), once per target and defence
            sec += a.setup_cost(sizes["train"]) * tt["grad_s"]
            per_cell.append(
                {
                    "target": tname,
                    "attack": aname,
                    "grad_evals": ev["grad"],
                    "forward_evals": ev["forward"],
                    "seconds": sec,
                }
            )
    attack_total = sum(r["seconds"] for r in per_cell) * len(grid["defenses"])
    train = {t: prof.train_epochs * sizes["train"] * timing[t]["grad_s"] for t in grid["targets"]}  # rough: ∂/∂θ ≈ ∂/∂x
    recipes = {
        t: 3 * prof.adv_steps * prof.train_batch * (prof.adv_pgd_steps + 1) * timing[t]["grad_s"]
        for t in grid["targets"]
    }
    return {
        "kind": "lower bound from per-image evaluation counts × timed passes (batch overheads ignored)",
        "timing_per_image": timing,
        "per_cell": per_cell,
        "attack_hours": attack_total / 3600,
        "clean_training_hours": {t: v / 3600 for t, v in train.items()},
        "recipe_training_hours": {t: v / 3600 for t, v in recipes.items()},
        "total_hours": (attack_total + sum(train.values()) + sum(recipes.values())) / 3600,
    }


# --------------------------------------------------------------------------------------------
# `robench validate`: a fast self-check of an installation


def self_check(progress=None, device: str = "cpu") -> dict[str, Any]:
    """Seconds-long checks that an installation works end to end, each reported ok/failed with
    what it found: versions and optional extras, every registry entry imports, a tiny target
    gives finite non-zero gradients, tiny attacks stay in budget and raise quality, the store
    round-trips a cell in the folder of the default store, the cache is writable and every cached
    weights file matches its sha256. Nothing is downloaded; the only writes are temporary files,
    removed again. ``device`` (auto | cpu | cuda | cuda:N): where the tiny target and attacks run."""
    from robench.core.device import resolve_device

    dev = resolve_device(device)  # an unavailable device is bad input (exit 2), not a failed check
    checks: list[dict[str, Any]] = []
    tiny = None  # (target, dist, ref) once the tiny target passed: the attacks check uses it

    def tiny_target() -> str:
        nonlocal tiny
        detail, tiny = _check_tiny_target(dev)
        return detail

    for name, fn in (
        ("versions", lambda: _check_versions(dev)),
        ("registries", _check_registries),
        ("tiny target differentiates", tiny_target),
        ("tiny attacks stay in budget", lambda: _check_tiny_attacks(tiny)),
        ("store round-trips", _check_store),
        ("cache", _check_cache),
    ):
        checks.append(_run_check(name, fn, progress))
    return {
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
        "seconds": round(sum(c["seconds"] for c in checks), 2),
    }


def _run_check(name: str, fn, progress) -> dict[str, Any]:
    """One check's record; every check reports: one failure must not hide the others."""
    t0 = time.perf_counter()
    if progress:
        progress(f"checking {name}…")
    try:
        detail, ok = fn(), True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return {"check": name, "ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}


def _check_versions(dev) -> str:
    from robench.core.device import device_record
    from robench.core.version import __version__

    import numpy

    extras = {
        m: importlib.util.find_spec(m) is not None for m in ("ray", "pyiqa", "ot", "torchattacks", "autoattack", "art")
    }
    cuda = torch.cuda.is_available()
    return (
        f"robench {__version__}, python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{numpy.__version__}; CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}; checks on "
        f"{', '.join(str(v) for v in device_record(dev).values())}; optional: "
        + ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in extras.items())
    )


def _check_registries() -> str:
    from robench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS

    counts, broken = {}, []
    for reg in (MODELS, ATTACKS, DEFENSES, DATASETS):
        for name in reg.names():
            try:
                reg.get(name)
            except Exception as exc:
                broken.append(f"{reg.kind} {name!r}: {exc}")
        counts[reg.kind + "s"] = len(reg.names())
    if broken:
        raise RuntimeError("; ".join(broken))
    return ", ".join(f"{n} {k}" for k, n in counts.items()) + ", all import"


def _check_tiny_target(dev) -> tuple[str, tuple]:
    from robench.core.registry import MODELS, default_of
    from robench.models import build

    name = default_of(MODELS)  # the mission's target, at its declared test size
    opts = dict(getattr(MODELS.get(name), "test_options", {}) or {})
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 32, 32, generator=g)
    dist = (ref + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        target = build(name, **opts).eval().to(dev)
    ref, dist = ref.to(dev), dist.to(dev)
    x = dist.clone().requires_grad_(True)
    s = target(x, ref)
    (grad,) = torch.autograd.grad(s.sum(), x)
    if s.shape != (2,) or not torch.isfinite(s).all():
        raise RuntimeError(f"scores {s.tolist()} (shape {tuple(s.shape)})")
    if not torch.isfinite(grad).all() or not (grad.flatten(1).abs().amax(dim=1) > 0).all():
        raise RuntimeError("zero or non-finite gradient: the target would fake robustness")
    if not torch.equal(target(dist, ref), target(dist, ref)):
        raise RuntimeError("two identical calls gave different scores")
    desc = ", ".join(f"{k} {v}" for k, v in opts.items())
    return (
        f"{name} ({desc + ', ' if desc else ''}random init) on 2×3×32×32 on {dev}: scores finite, gradient "
        "finite and non-zero, deterministic"
    ), (target, dist, ref)


def _check_tiny_attacks(tiny: tuple | None) -> str:
    import robench
    from robench.core.registry import ATTACKS, attack_suite

    if tiny is None:
        raise RuntimeError("skipped: no tiny target")
    t, dist, ref = tiny
    out = []
    # one attack of each sort the suite has (single-step and iterative gradient, score-only),
    # at its declared test options
    picked: dict[tuple, str] = {}
    for a in attack_suite():
        cls = ATTACKS.get(a)
        if cls.training_data_params or cls.kind != "fixed":
            continue  # a generator to train / a minimisation: not seconds-long
        picked.setdefault((cls.needs, cls.iterative), a)
    for name in picked.values():
        params = dict(ATTACKS.get(name).test_options)
        eps = 4 / 255
        res = robench.load_attack(name, **params)(t, dist, ref, eps=[eps])
        q0, q = res.oriented(t.lower_better)
        if not (res.linf <= eps + 1e-6).all():
            raise RuntimeError(f"{name}: L∞ {float(res.linf.max()) * 255:.3f}/255 > 4/255")
        if (q < q0 - 1e-6).any():
            raise RuntimeError(f"{name}: reported quality below the clean image")
        # a gradient attack on a target with real gradients must move it: zero gain = broken
        if ATTACKS.get(name).needs == "gradients" and not float((q - q0).mean()) > 0:
            raise RuntimeError(f"{name}: no quality gain at 4/255 on a differentiable target")
        out.append(f"{name} L∞ ≤ {float(res.linf.max()) * 255:.2f}/255, gain {float((q - q0).mean()):+.4f}")
    return "; ".join(out)


def _check_store() -> str:
    from robench.engine.grid import default_store
    from robench.engine.store import Store

    where = default_store().parent  # where runs write: WAL mode must work on that filesystem
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where, prefix=".selfcheck-") as d:
        path = Path(d) / "check.sqlite"
        cfg = {
            "target": {"name": "t", "weights_sha256": "0" * 64},
            "defense": {"name": "none"},
            "attack": {"name": "a"},
            "dataset": {"name": "d", "split": "test", "kind": "pairs"},
            "profile": "quick",
            "seed": 0,
            "eps": [2.0],
        }
        rows = [
            {
                "item": i,
                "eps": 2.0,
                "item_id": f"i{i}",
                "ref_id": "r",
                "distortion": "x",
                "level": 1,
                "mos": float(i),
                "clean_score": 0.5 + i,
                "score": 0.75 + i,
                "linf": 2 / 255,
                "l2": 0.1,
                "queries": 1,
            }
            for i in range(3)
        ]
        with Store(path) as st:
            if not st.commit_cell("k" * 64, {"config": cfg, "summary": {"x": 1}}, rows):
                raise RuntimeError("first commit refused")
            if st.commit_cell("k" * 64, {"config": cfg}, rows):
                raise RuntimeError("a second commit of the same cell was accepted")
        with Store(path) as st:
            back = st.results()
            cells = st.cells()
        if len(cells) != 1 or cells.iloc[0]["summary"] != {"x": 1}:
            raise RuntimeError("the cell did not read back")
        if back["score"].tolist() != [r["score"] for r in rows]:
            raise RuntimeError("per-image rows did not read back")
    return f"in {where}: one cell + 3 rows written in one transaction, a duplicate refused, read back exactly"


def _check_cache() -> str:
    from robench.core.home import robench_home

    from robench.core import weights as W

    home = robench_home()
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=home, prefix=".write-test-"):
        pass
    free = shutil.disk_usage(home).free / 2**30
    ver = W.verify_all()
    bad = [f"{v['name']}: {v['status']}" for v in ver if v["status"] != "ok"]
    if bad:
        raise RuntimeError("weights cache: " + "; ".join(bad) + " (re-fetch or retrain those)")
    mini = (
        sorted(p.name for p in (home / "datasets").glob("mini*") if p.is_dir()) if (home / "datasets").is_dir() else []
    )
    return f"{home} writable, {free:.1f} GiB free; {len(ver)} cached weights, all sha256 verified; built data: " + (
        ", ".join(mini) if mini else "none yet (`robench data build mini`, or any run builds it)"
    )
