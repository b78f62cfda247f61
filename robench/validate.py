"""``robench validate --profile paper``: dry-build the paper's grid without running it.

Every target is built (random initialisation: no weights needed), every defence parsed, every
attack instantiated with the profile's parameters — so a typo or an impossible setting fails here,
not hours into a run — and the grid's size is reported with an estimated cost per cell from a
short timed sample of each target's forward and forward+backward passes at the profile's image
size on this machine. The cost model counts evaluations per image and budget from the attacks'
parameters (gradient steps, score queries, EOT draws); it ignores per-batch overheads, so it is a
lower-bound estimate, labelled as such.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from robench.attacks.base import SUITE
from robench.profiles import get_profile

PAPER_GRID = {"targets": ("birqa", "lpips.alex", "topiq.fr"), "defenses": ("none", "r", "at", "aat"),
              "attacks": SUITE, "dataset": "kadid10k", "split": "test"}
# KADID-10k: 81 references × 25 distortions × 5 levels; split 6:2:2 by reference → 16 test refs
KADID_REFS, KADID_PER_REF = 81, 125


def kadid_split_sizes(seed: int = 0) -> dict[str, int]:
    from robench.data.base import assign_splits

    split = assign_splits([f"I{i:02d}" for i in range(1, KADID_REFS + 1)], seed=seed)
    return {s: KADID_PER_REF * sum(v == s for v in split.values()) for s in ("train", "val", "test")}


def evaluations(attack, eot: int = 1) -> dict[str, float]:
    """Per image and budget: gradient evaluations (forward+backward) and score-only forwards."""
    p = attack.params
    name = attack.name
    g = f = 0.0
    if name == "fgsm":
        g = 1
    elif name == "pgd":
        g = p["steps"]
    elif name == "cw":
        g = p["binary_steps"] * p["steps"]
    elif name == "autoattack":
        g, f = p["apgd_iter"], p["square_queries"]
    elif name in ("square", "parsimonious"):
        f = p["queries"]
    elif name == "facpa":
        f = 1  # one generator pass at attack time; its training is a per-target cost (below)
    return {"grad": g * eot, "forward": (f + 1) * eot}  # +1: the clean score


def time_target(name: str, size: tuple[int, int], batch: int = 2, repeats: int = 2, device: str = "cpu") -> dict[str, float]:
    """Seconds per image of a forward pass and of forward + ∂q/∂x at ``size`` (random weights)."""
    from robench.models import load_model

    t = load_model(name, weights="none", device=device).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    w, h = size
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(batch, 3, h, w, generator=gen).to(device)
    dist = (ref + 0.05 * torch.randn(batch, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
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
        g, = torch.autograd.grad(t(x, ref).sum(), x)
        sync()
        fb.append(time.perf_counter() - t0)
    return {"forward_s": min(fwd) / batch, "grad_s": min(fb) / batch}


def dry_build(profile: str = "paper", sample: bool = True, device: str = "cpu", size: tuple[int, int] = (512, 384),
              progress=None) -> dict[str, Any]:
    from robench.defenses.wrappers import parse_defense
    from robench.models import build
    from robench.registry import ATTACKS

    prof = get_profile(profile)
    grid = PAPER_GRID
    for d in grid["defenses"]:
        parse_defense(None if d == "none" else d)
    # as the runner builds them: FACPA's generator trains on the run's dataset
    attacks = {a: ATTACKS.get(a)(profile=prof.name, seed=0, **({"dataset": grid["dataset"]} if a == "facpa" else {}))
               for a in grid["attacks"]}
    params = {}
    for tname in grid["targets"]:
        params[tname] = sum(p.numel() for p in build(tname).parameters())
    sizes = kadid_split_sizes()
    n_items = prof.attack_n or sizes[grid["split"]]
    n_eps = len(prof.eps)
    cells = len(grid["targets"]) * len(grid["defenses"]) * len(grid["attacks"])
    out: dict[str, Any] = {
        "profile": prof.name, "dataset": grid["dataset"], "split": grid["split"], "items_per_cell": n_items,
        "eps": list(prof.eps), "targets": list(grid["targets"]), "defenses": list(grid["defenses"]),
        "attacks": {a: repr(x) for a, x in attacks.items()}, "cells": cells,
        "attacked_images": cells * n_items * n_eps, "parameters": params, "image_size": f"{size[0]}x{size[1]}",
        "device": device, "estimate": None,
    }
    if not sample:
        return out
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
            if aname == "facpa":  # generator training on the train split, once per target and defence
                epochs = a.params.get("epochs") or 1
                sec += epochs * sizes["train"] * tt["grad_s"]
            per_cell.append({"target": tname, "attack": aname, "grad_evals": ev["grad"], "forward_evals": ev["forward"],
                             "seconds": sec})
    attack_total = sum(r["seconds"] for r in per_cell) * len(grid["defenses"])
    train = {t: prof.train_epochs * sizes["train"] * timing[t]["grad_s"] for t in grid["targets"]}  # rough: ∂/∂θ ≈ ∂/∂x
    recipes = {t: 3 * prof.adv_steps * prof.train_batch * (prof.adv_pgd_steps + 1) * timing[t]["grad_s"]
               for t in grid["targets"]}
    out["estimate"] = {
        "kind": "lower bound from per-image evaluation counts × timed passes (batch overheads ignored)",
        "timing_per_image": timing, "per_cell": per_cell,
        "attack_hours": attack_total / 3600,
        "clean_training_hours": {t: v / 3600 for t, v in train.items()},
        "recipe_training_hours": {t: v / 3600 for t, v in recipes.items()},
        "total_hours": (attack_total + sum(train.values()) + sum(recipes.values())) / 3600,
    }
    return out
