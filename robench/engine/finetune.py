"""Fine-tuning a target with a training recipe (``M.<recipe>``): the clean model to start from,
the recipe's task run by the Trainer, the least-squares calibration start, the provenance and
the registered weights. The recipes (robench/defenses/recipes.py) declare the task — batches,
objective, stopping; this module drives it and reaches them only through the registry."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from robench.core.errors import MissingWeightsError, RobenchError
from robench.core.home import robench_home
from robench.core.profiles import get_profile, inner_objective
from robench.core.registry import DEFENSES, default_dataset, training_recipes
from robench.core import weights as W
from robench.core.device import resolve_device
from robench.core.target import fingerprint, fit_calibration
from robench.core.training import Trainer, config_hash, random_crop_pair

#: least-squares calibration fit: at most this many training items (a seeded subset) **[choice]**
CALIBRATION_ITEMS = 512


def ensure_clean(
    base: str, dataset: str, profile: str, seed: int, dataset_options: dict, progress: bool, device: str = "cpu"
):
    """The clean target to fine-tune (on ``device``): official or trained-here weights, trained
    now if missing."""
    from robench.models import load_model

    try:
        return load_model(base, device=device)
    except MissingWeightsError:
        pass
    from robench.engine.train import train

    train(
        base,
        dataset=dataset,
        profile=profile,
        seed=seed,
        dataset_options=dataset_options,
        progress=progress,
        device=device,
    )
    return load_model(base, device=device)


def adversarial_train(
    model: str,
    recipe: str,
    dataset: str | None = None,
    profile: str = "quick",
    seed: int = 0,
    steps: int | None = None,
    dataset_options: dict | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    train_seed: int | None = None,
    device: str = "cpu",
    inner: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune the clean ``model`` with ``recipe`` into weights ``model.<recipe>``, on ``device``
    (auto | cpu | cuda | cuda:N: in the provenance, not in the config hash — a run resumes anywhere).

    ``seed`` is the data seed (a built set's build and photo split, the clean model's training);
    ``train_seed`` (``robench run --seeds``) the fine-tuning's own randomness — step
    batches, crops, inner-PGD starts, the held-out batches, the calibration subset — on the same
    data and clean model. None: the fine-tuning uses ``seed`` (the weights, hence the cell keys,
    of a run without seeds). The weights of training seed k > 0 are registered as
    ``model.<recipe>-s<k>`` (:func:`robench.core.weights.seeded_name`); seed 0 (or None) keeps
    ``model.<recipe>``. ``inner`` overrides the profile's ``adv_inner``;
    ``overrides`` any of its fields (``aat_band_fraction``, ``aat_hinge_norm``, …: each one that
    changes the run is in the recipe's hyper-parameters, hence in the config hash)."""
    from robench.models import split_name
    from robench.engine.train import evaluate, run_facts, training_data

    cls = DEFENSES.get(recipe)  # an unknown name: did-you-mean
    if recipe not in training_recipes():
        raise RobenchError(f"{recipe!r} is not a training recipe (recipes: {', '.join(training_recipes())})")
    dev = resolve_device(device)
    dataset = dataset or default_dataset()
    prof = _fine_tune_profile(profile, overrides, inner, recipe)
    base, tag = split_name(model)
    if tag is not None:
        raise RobenchError(f"give the architecture ({base!r}), not a variant: the recipe makes {base}.{recipe}")
    ds_opts, _ = training_data(dataset, prof, seed, dataset_options)
    target = ensure_clean(base, dataset, prof.name, seed, ds_opts, progress, device=dev)
    clean = {"clean_weights": target.card.weights.describe(), "clean_sha256": fingerprint(target)}
    _, (data, val) = training_data(dataset, prof, seed, ds_opts, "train", "val")
    if data.kind != "pairs":
        raise RobenchError(f"adversarial training needs a pairs dataset; {dataset!r} is {data.kind}")
    tseed = seed if train_seed is None else int(train_seed)  # the fine-tuning's randomness
    task = cls(target, data, prof, tseed, base, heldout=val)
    n_steps = int(steps or prof.adv_steps)  # the cap: the held-out rule may stop the run sooner
    task.cap = n_steps
    hp = _hyper_parameters(recipe, prof, task, n_steps)
    task.run_cfg = {
        "model": base,
        "clean_sha256": clean["clean_sha256"],
        "dataset": dataset,
        "dataset_options": ds_opts,
        "profile": prof.name,
        "seed": seed,
        "recipe_version": cls.recipe_version,
        **hp,
    }
    if tseed != seed:  # only then: a run with train seed = data seed keeps its config hash (and last.pt)
        task.run_cfg["train_seed"] = tseed
    out = Path(out) if out else _fine_tune_dir(base, recipe, dataset, prof.name, seed, tseed)
    trainer = Trainer(
        task,
        out,
        config_hash(task.run_cfg, exclude=("steps",)),
        n_steps,
        prof.adv_lr,
        clip_grad=prof.train_clip_grad,
        checkpoint_every=10,
        progress=progress,
    )
    if not trainer.resume():
        task.calibration_init = _calibration_start(target, data, prof, tseed)
    t_all = time.perf_counter()
    trainer.run()

    target.eval()
    v = evaluate(target, val, prof.eval_batch)
    stop = task.stop_summary(trainer.step)
    elapsed = trainer.clock.elapsed
    provenance = {
        "dataset": dataset,
        "split": "train",
        "profile": prof.name,
        "seed": seed,
        "train_seed": tseed,
        "defense": recipe,
        **clean,
        **hp,
        **task.final_provenance(trainer.rows),
        "recipe_version": cls.recipe_version,
        **_stop_record(stop),
        "calibration_init": task.calibration_init,
        "val_srocc": v["srocc"],
        "train_seconds": round(elapsed, 2),
        **run_facts(out, dev),
    }
    name = W.seeded_name(f"{base}.{recipe}", train_seed)
    entry = _save_and_register(target, out / "final.safetensors", name, provenance)
    return {
        "name": name,
        "out": str(out),
        "weights": str(W.weights_dir() / entry["file"]),
        "sha256": entry["sha256"],
        "val_srocc": v["srocc"],
        "train_seconds": round(elapsed, 1),
        "steps": trainer.step,
        "cap": n_steps,
        "stopped": stop["stopped"],
        "wall_seconds": round(time.perf_counter() - t_all, 1),
    }


def _fine_tune_dir(base: str, recipe: str, dataset: str, profile: str, seed: int, tseed: int) -> Path:
    suffix = f"-train{tseed}" if tseed != seed else ""
    return robench_home() / "runs" / "train" / f"{base}.{recipe}-{dataset}-{profile}-seed{seed}{suffix}"


def _fine_tune_profile(profile: str, overrides: dict[str, Any] | None, inner: str | None, recipe: str = ""):
    """The profile with the recipe's own learning rate (``adv_lr_by_recipe``), the fine-tune's
    overrides (each a known field) and inner objective."""
    from dataclasses import fields

    prof = get_profile(profile)
    unknown = sorted(set(overrides or {}) - {f.name for f in fields(prof)})
    if unknown:
        raise RobenchError(f"unknown profile field(s) {', '.join(map(repr, unknown))} in the fine-tune's overrides")
    own_lr = {"adv_lr": prof.adv_lr_by_recipe[recipe]} if recipe in prof.adv_lr_by_recipe else {}
    prof = replace(prof, **{**own_lr, **(overrides or {})}, **({} if inner is None else {"adv_inner": inner}))
    inner_objective(prof)  # an unknown name fails before anything is trained
    return prof


def _hyper_parameters(recipe: str, prof, task, n_steps: int) -> dict[str, Any]:
    """What the fine-tune's config hash and provenance record of the recipe's settings. The inner
    objective enters only when it is not "up", so weights trained before the choice existed
    (inner PGD on the raised score) keep their config hash."""
    inner = inner_objective(prof)
    return {
        "recipe": recipe,
        "eps_train": prof.adv_eps,
        "inner": f"PGD-{prof.adv_pgd_steps}, step eps/4, random start",
        **({} if inner == "up" else {"inner_objective": inner}),
        "steps": n_steps,
        "batch": task.batch,
        "lr": prof.adv_lr,
        "crop": prof.train_crop,
        "loss_lambda": prof.train_loss_lambda,
        **task.provenance_extra(),
        **task.stopping_config(),
    }


def _calibration_start(target, data, prof, tseed: int) -> dict[str, Any]:
    """Where the MOS calibration ``a·q + b`` starts: least squares on the crops training will see
    (a target that regresses MOS itself keeps its own)."""
    if target.predicts_mos:
        return {
            "skipped": "the target regresses MOS itself",
            "a": target.calibration.a,
            "b": float(target.calibration.b),
        }
    crop_gen = torch.Generator().manual_seed((tseed + 1) * 1_000_003 - 1)  # no step uses this seed

    def as_trained(r, d, _chunk):
        return random_crop_pair(r, d, prof.train_crop, crop_gen) if prof.train_crop else (r, d)

    return fit_calibration(
        target, data, batch_size=prof.eval_batch, max_items=CALIBRATION_ITEMS, seed=tseed, transform=as_trained
    )


def _stop_record(stop: dict[str, Any]) -> dict[str, Any]:
    """The stopping rule's outcome, as the provenance names it."""
    return {
        "stop_reason": stop["stopped"],
        "steps_run": stop["steps_run"],
        "stopped_at": stop["stopped_at"],
        "scale_guard": stop["scale_guard"],
        "best_heldout_ema": stop["best_heldout_ema"],
        "best_heldout_step": stop["best_heldout_step"],
        "heldout_start": stop["heldout_start"],
    }


def _save_and_register(target, path: Path, name: str, provenance: dict[str, Any]) -> dict[str, Any]:
    W.save_safetensors(
        target.state_dict(),
        path,
        {"config": dict(getattr(target, "config", {}) or {}), "provenance": provenance, "format": "robench-target-v1"},
    )
    return W.register(name, path, source="trained-here", provenance=provenance)
