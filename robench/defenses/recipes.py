"""Adversarial-training recipes: ``robench train --model M --defense r|at|aat``.

All three fine-tune the clean checkpoint of ``M`` (trained first when missing) with the same
inner attacker — PGD at ``ε_train`` (profile ``adv_eps``, 4/255), step ε/4, random start,
``adv_pgd_steps`` steps (10 in the paper profile) — so only the recipe differs (method-notes §2):

* ``r`` (R-, vanilla AT): every sample attacked, unchanged labels, loss eq. 5.
* ``at`` (AT-, Chistyakova et al. 2024): half clean, half their attacked copies labelled
  ``clamp(y − k·(1 − SSIM(x_adv, x))·(MOS_max − MOS_min))``, loss eq. 5, with SSIM on RGB per
  channel, channels averaged (Gaussian 11/1.5, valid filtering: their ``pytorch_msssim``
  convention, :func:`robench.models.classic.ssim_rgb`).
* ``aat`` (AAT-, the paper): band/anchor batches (a moving MOS sub-range, anchors redrawn every
  step, :class:`robench.defenses.aat.AnchorSampler`), anchors clean, the rest attacked;
  ``L = α·L_base(anchors) + β·mean(top-k ℓ_i)``; every step logs the band (``band_lo``,
  ``band_hi``), the anchors' dataset item ids (``anchor_ids``), the Theorem-1 bound, the bound
  relative to the batch MOS range (``bound_rel``, ``vacuous`` when ≥ 1) and the batch's
  empirical max error.

Before the first step, a target that does not regress MOS itself (LPIPS, TOPIQ, the analytic
metrics; not BiRQA) gets its calibration ``ŷ = a·q + b`` initialised by least squares on the
training split (:func:`robench.core.target.fit_calibration`, ≤ 512 seeded items); a resumed run keeps
the checkpoint's. The result is registered as weights ``M.<recipe>`` with its provenance (clean
weights digest, recipe, every hyper-parameter, ``calibration_init``, train time). Each run writes
``steps.csv`` / ``steps.json`` (one row per optimiser step) and resumes from ``last.pt``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robench.core.errors import MissingWeightsError, RobenchError
from robench.engine.faults import fault
from robench.core.home import robench_home
from robench.core.profiles import get_profile
from robench.core.progress import progress_bar
from robench.core.registry import DEFENSES

RECIPES = ("r", "at", "aat")
#: bumped when a recipe's batches, labels or initialisation change: part of the config hash, so a
#: ``last.pt`` written by an older version is refused instead of resumed into a mixed run
#: (2: moving AAT band + random tie-breaks, least-squares calibration init, RGB SSIM for AT-)
RECIPE_VERSION = 2
#: least-squares calibration fit: at most this many training items (a seeded subset) **[choice]**
CALIBRATION_ITEMS = 512
AT_SSIM = "rgb-mean, gaussian 11/1.5, valid (pytorch_msssim convention)"


def at_labels(y: torch.Tensor, adv: torch.Tensor, clean: torch.Tensor, k: float, mos_min: float,
              mos_max: float) -> torch.Tensor:
    """AT- label rule (Chistyakova et al. 2024, method-notes §2): the attacked copy's label
    ``clamp(y − k·(1 − SSIM(x_adv, x))·(MOS_max − MOS_min), MOS_min, MOS_max)`` with SSIM per image
    on RGB, per channel and averaged (:func:`robench.models.classic.ssim_rgb`)."""
    from robench.models.classic import ssim_rgb

    with torch.no_grad():
        s = ssim_rgb(adv, clean).to(y.dtype)
    return (y - k * (1 - s) * (mos_max - mos_min)).clamp(mos_min, mos_max)


def item_ids(table) -> list:
    """Stable identifiers of a dataset's rows for the training log: the distorted image's path
    (file datasets), the built-in set's image ``index``, else the row number."""
    for col in ("dist_path", "index"):
        if col in table.columns:
            return [v if isinstance(v, (int, str)) else str(v) for v in table[col].tolist()]
    return list(range(len(table)))


class TrainingRecipe:
    """A defence that is a way of training the target's weights (``M.<name>``)."""

    kind = "training"
    name = ""
    summary = ""

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        return {"kind": cls.kind, "randomised": False, "gradient": "exact"}


@DEFENSES.register("r", summary="R-: vanilla adversarial training (PGD examples, unchanged labels)")
class R(TrainingRecipe):
    name = "r"


@DEFENSES.register("at", summary="AT-: adversarial training with SSIM-based label modification (Chistyakova et al. 2024)")
class AT(TrainingRecipe):
    name = "at"


@DEFENSES.register("aat", summary="AAT-: anchored adversarial training with the Theorem-1 bound logged (BiRQA paper)")
class AAT(TrainingRecipe):
    name = "aat"


def ensure_clean(base: str, dataset: str, profile: str, seed: int, dataset_options: dict, progress: bool):
    """The clean target to fine-tune: official or trained-here weights, trained now if missing."""
    from robench.models import load_model

    try:
        return load_model(base)
    except MissingWeightsError:
        pass
    from robench.engine.train import train

    train(base, dataset=dataset, profile=profile, seed=seed, dataset_options=dataset_options, progress=progress)
    return load_model(base)


def pgd_inner(target, dist, ref, eps: float, steps: int, seed: int) -> torch.Tensor:
    """The shared inner attacker: PGD, step ε/4, random start (torchattacks through the adapter),
    in eval mode with frozen parameters (restored afterwards)."""
    from robench.attacks import _torchattacks
    from robench.attacks.base import ModeGuard

    with ModeGuard(target), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        f = target.bind(ref)
        with torch.no_grad():
            q0 = f(dist)
        adv = _torchattacks.run("PGD", f, dist, q0, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    return adv.detach()


def adversarial_train(model: str, recipe: str, dataset: str = "mini", profile: str = "quick", seed: int = 0,
                      steps: int | None = None, dataset_options: dict | None = None, out: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    import robench
    from robench.models import split_name
    from robench.core import weights as W
    from robench.core.target import fingerprint, fit_calibration
    from robench.engine.train import clean_loss, optimizer_step, random_crop_pair, resume_checkpoint
    from robench.core.provenance import git_commit, versions

    from robench.defenses.aat import BAND_FRACTION, AnchorSampler, anchored_terms

    if recipe not in RECIPES:
        DEFENSES.entry(recipe)  # did-you-mean for a typo
        raise RobenchError(f"{recipe!r} is not a training recipe (recipes: {', '.join(RECIPES)})")
    prof = get_profile(profile)
    base, tag = split_name(model)
    if tag is not None:
        raise RobenchError(f"give the architecture ({base!r}), not a variant: the recipe makes {base}.{recipe}")
    ds_opts = dict(dataset_options or {})
    if dataset in ("mini", "mini-2afc"):
        ds_opts.setdefault("size", prof.image_size)
        ds_opts.setdefault("seed", seed)
    target = ensure_clean(base, dataset, prof.name, seed, ds_opts, progress)
    clean_sha = fingerprint(target)
    clean_desc = target.card.weights.describe()
    data = robench.load_dataset(dataset, split="train", **ds_opts)
    val = robench.load_dataset(dataset, split="val", **ds_opts)
    if data.kind != "pairs":
        raise RobenchError(f"adversarial training needs a pairs dataset; {dataset!r} is {data.kind}")
    mos = data.table["mos"].to_numpy(dtype=float)
    ids = item_ids(data.table)
    mos_min, mos_max = float(mos.min()), float(mos.max())
    n_steps = int(steps or prof.adv_steps)
    eps = prof.adv_eps / 255
    B = prof.train_batch
    hp = {"recipe": recipe, "eps_train": prof.adv_eps, "inner": f"PGD-{prof.adv_pgd_steps}, step eps/4, random start",
          "steps": n_steps, "batch": B, "lr": prof.adv_lr, "crop": prof.train_crop, "loss_lambda": prof.train_loss_lambda}
    if recipe == "aat":
        width = AnchorSampler(mos, B, prof.aat_anchors, prof.aat_spacing).width
        hp.update(anchors=prof.aat_anchors, spacing=prof.aat_spacing, top_k=prof.aat_top_k, alpha=prof.aat_alpha,
                  beta=prof.aat_beta, band_fraction=BAND_FRACTION, band_width=width)
    if recipe == "at":
        hp.update(k=prof.at_k, mos_min=mos_min, mos_max=mos_max, at_ssim=AT_SSIM)
    run_cfg = {"model": base, "clean_sha256": clean_sha, "dataset": dataset, "dataset_options": ds_opts,
               "profile": prof.name, "seed": seed, "recipe_version": RECIPE_VERSION, **hp}
    cfg_hash = hashlib.sha256(json.dumps({k: v for k, v in run_cfg.items() if k != "steps"}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]
    out = Path(out) if out else robench_home() / "runs" / "train" / f"{base}.{recipe}-{dataset}-{prof.name}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    from robench.engine.train import clean_stale_tmp

    clean_stale_tmp(out)

    params = [p for p in target.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=prof.adv_lr)
    rows: list[dict[str, Any]] = []
    start, elapsed = 0, 0.0
    ck = resume_checkpoint(out, cfg_hash, target, opt)
    if ck is not None:
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        if "rows" in ck:
            rows = [r for r in ck["rows"] if r["step"] < start]
        elif (out / "steps.json").is_file():  # checkpoints written before the rows moved into last.pt
            rows = [r for r in json.loads((out / "steps.json").read_text())["steps"] if r["step"] < start]
        calib = ck.get("calibration_init")  # fitted when the run began; the weights hold its trained state
    elif target.predicts_mos:
        calib = {"skipped": "the target regresses MOS itself", "a": target.calibration.a,
                 "b": float(target.calibration.b)}
    else:
        # the calibration starts where least squares puts it, on the crops training will see
        crop_gen = torch.Generator().manual_seed((seed + 1) * 1_000_003 - 1)  # no step uses this seed

        def as_trained(r, d, _chunk):
            return random_crop_pair(r, d, prof.train_crop, crop_gen) if prof.train_crop else (r, d)

        calib = fit_calibration(target, data, batch_size=prof.eval_batch, max_items=CALIBRATION_ITEMS, seed=seed,
                                transform=as_trained)

    def batch_at(step: int):
        """Step ``step``'s batch and its randomness derive from (seed, step): resuming repeats it."""
        rng_seed = seed * 1_000_003 + step
        gen = torch.Generator().manual_seed(rng_seed)
        info: dict[str, Any] = {}
        if recipe == "aat":  # a fresh sampler per step: its band, tie-breaks and anchors follow (seed, step)
            ab = AnchorSampler(mos, B, prof.aat_anchors, prof.aat_spacing, seed=rng_seed, ids=ids).sample()
            idx, is_anchor = ab.indices, ab.is_anchor
            info = {"band_lo": ab.band[0], "band_hi": ab.band[1], "anchor_ids": ab.anchor_ids}
        else:
            n = B // 2 if recipe == "at" else B
            idx = np.random.default_rng(rng_seed).choice(len(data), size=n, replace=False)
            is_anchor = np.zeros(n, dtype=bool)
        items = [data[int(i)] for i in idx]
        ref = torch.stack([it["ref"] for it in items])
        dist = torch.stack([it["dist"] for it in items])
        y = torch.tensor([it["mos"] for it in items], dtype=torch.float32)
        if prof.train_crop:
            ref, dist = random_crop_pair(ref, dist, prof.train_crop, gen)
        return ref, dist, y, torch.from_numpy(is_anchor), rng_seed, info

    t_all = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{recipe.upper()}-training {base}", total=n_steps, completed=start) if bar else None
        for step in range(start, n_steps):
            t0 = time.perf_counter()
            ref, dist, y, is_anchor, rng_seed, info = batch_at(step)
            # dropout (LPIPS, TOPIQ) draws from the global RNG: seeded per step, so a run is
            # reproducible and a resumed run repeats the steps it redoes exactly
            torch.manual_seed(rng_seed)
            attacked = ~is_anchor
            adv = dist.clone()
            adv[attacked] = pgd_inner(target, dist[attacked], ref[attacked], eps, prof.adv_pgd_steps, rng_seed)
            target.train()
            row: dict[str, Any] = {"step": step, **info}
            if recipe == "aat":
                pred = target.predict_mos(adv, ref)
                base_l = clean_loss(pred[is_anchor], y[is_anchor], prof.train_loss_lambda)
                _, topk, stats = anchored_terms(pred, y, is_anchor, prof.aat_top_k)
                loss = prof.aat_alpha * base_l + prof.aat_beta * topk
                row.update(stats, anchored_loss=float(topk.detach()), base_loss=float(base_l.detach()))
            elif recipe == "r":
                pred = target.predict_mos(adv, ref)
                loss = clean_loss(pred, y, prof.train_loss_lambda)
                row["emp_max_err"] = float((pred.detach() - y).abs().max())
            else:  # at: clean + attacked copies, attacked labels lowered by their SSIM to the clean image
                y_adv = at_labels(y, adv, dist, prof.at_k, mos_min, mos_max)  # SSIM on RGB, channels averaged
                pred = target.predict_mos(torch.cat([dist, adv]), torch.cat([ref, ref]))
                yy = torch.cat([y, y_adv])
                loss = clean_loss(pred, yy, prof.train_loss_lambda)
                row["emp_max_err"] = float((pred.detach() - yy).abs().max())
                row["mean_label_drop"] = float((y - y_adv).mean())
            optimizer_step(loss, opt, params, target, prof.train_clip_grad)
            elapsed += time.perf_counter() - t0
            row.update(loss=float(loss.detach()), seconds=round(elapsed, 3))
            rows.append(row)
            if (step + 1) % 10 == 0 or step + 1 == n_steps:  # checkpoint + log, atomically
                _checkpoint(out, target, opt, step + 1, elapsed, cfg_hash, rows, run_cfg, calib)
            if bar:
                bar.update(task, advance=1, description=f"{recipe.upper()}-training {base} · loss {row['loss']:.3f}")

    from robench.engine.train import evaluate

    target.eval()
    v = evaluate(target, val, prof.eval_batch)
    if recipe == "aat":  # what the Theorem-1 log supports travels with the weights (the reporter reads the store)
        from robench.defenses.aat import bound_summary

        hp["theorem1"] = bound_summary(rows)
    provenance = {"dataset": dataset, "split": "train", "profile": prof.name, "seed": seed, "defense": recipe,
                  "clean_weights": clean_desc, "clean_sha256": clean_sha, **hp, "recipe_version": RECIPE_VERSION,
                  "calibration_init": calib, "val_srocc": v["srocc"],
                  "train_seconds": round(elapsed, 2), "git_commit": git_commit(), "versions": versions(), "run": str(out)}
    path = out / "final.safetensors"
    W.save_safetensors(target.state_dict(), path, {"config": dict(getattr(target, "config", {}) or {}),
                                                   "provenance": provenance, "format": "robench-target-v1"})
    name = f"{base}.{recipe}"
    entry = W.register(name, path, source="trained-here", provenance=provenance)
    return {"name": name, "out": str(out), "weights": str(W.weights_dir() / entry["file"]), "sha256": entry["sha256"], "val_srocc": v["srocc"],
            "train_seconds": round(elapsed, 1), "steps": n_steps, "wall_seconds": round(time.perf_counter() - t_all, 1)}


def _checkpoint(out: Path, target, opt, step: int, elapsed: float, cfg_hash: str, rows: list, run_cfg: dict,
                calibration_init: dict | None = None) -> None:
    # the log rows travel inside last.pt: a kill between this file and steps.json must not lose them
    from robench.engine.train import _atomic_torch_save

    _atomic_torch_save({"model": target.state_dict(), "optim": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "cfg_hash": cfg_hash, "rows": rows, "calibration_init": calibration_init}, out / "last.pt")
    fault(f"kill-after-checkpoint:{run_cfg['recipe']}:{step}")
    tmp = out / f"steps.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"config": {**run_cfg, "calibration_init": calibration_init}, "steps": rows},
                              default=str))
    os.replace(tmp, out / "steps.json")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = out / f"steps.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        # lists (anchor_ids) as ";"-joined text in the CSV; steps.json keeps them as lists
        w.writerows({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    os.replace(tmp, out / "steps.csv")
