"""The target of a run: load its weights (training what is missing) and wrap it in the
inference defences; the weights records the reporter reads."""

from __future__ import annotations

from typing import Any

from robench.core.config import RunSpec
from robench.core.errors import MissingWeightsError, RobenchError
from robench.core.target import Target, fingerprint


def resolve_target(spec: RunSpec, progress: bool = True, train: bool = True) -> tuple[Target, dict[str, Any]]:
    """The target of a run and its defence record: ``--defense aat+flip`` loads ``M.aat`` (training
    what is missing: the clean model, then the recipe) and wraps it in the inference defences."""
    from robench.defenses.wrappers import Defended, parse_defense
    from robench.models import load_model, split_name

    if train:
        _train_missing_denoiser(spec, progress)
    recipe, chain = parse_defense(spec.defense, spec.defense_options)
    base, tag = split_name(spec.model)
    if recipe and tag:
        raise RobenchError(f"--model {spec.model} already names a variant; use --model {base} --defense {spec.defense}")
    name = f"{base}.{recipe}" if recipe else spec.model
    try:
        target = load_model(name, weights=spec.weights)
    except MissingWeightsError:
        if spec.weights is not None or not train:
            raise
        target = _train_missing(base, recipe, spec, progress)
    if chain:
        target = Defended(target, chain)
    record = {"name": spec.defense or "none", "training": recipe,
              "inference": [d.config() for d in chain], "randomised": bool(getattr(target, "randomised", False)),
              "gradient": getattr(target, "gradient", "exact")}
    return target, record


def _train_missing_denoiser(spec: RunSpec, progress: bool) -> None:
    """``--defense ...+diffpure`` without a denoiser: train the small DDPM first."""
    if "diffpure" not in (spec.defense or "").split("+"):
        return
    opts = spec.defense_options.get("diffpure", {})
    if opts.get("path"):
        return
    from robench.defenses.diffpure import DiffPure, train_diffpure
    from robench.core import weights as W

    name = str(opts.get("weights", DiffPure.defaults["weights"]))
    if W.lookup(name) is None:
        ds = name.split(".", 1)[1] if "." in name else "mini"
        train_diffpure(dataset=ds, profile=spec.profile, seed=spec.seed,
                       dataset_options=dict(spec.dataset_options) if ds == spec.dataset else {}, progress=progress)


def _train_missing(base: str, recipe: str | None, spec: RunSpec, progress: bool) -> Target:
    """The mission trains what is missing: the clean model on the run's dataset (or mini when
    that is a 2AFC set), then the recipe, with progress bars."""
    from robench.models import load_model
    from robench.core.registry import DATASETS

    ds = spec.dataset if getattr(DATASETS.get(spec.dataset), "kind", "pairs") == "pairs" else "mini"
    opts = dict(spec.dataset_options) if ds == spec.dataset else {}
    opts.pop("progress", None)
    if recipe:
        from robench.defenses.recipes import adversarial_train

        adversarial_train(base, recipe, dataset=ds, profile=spec.profile, seed=spec.seed, dataset_options=opts,
                          progress=progress)
        return load_model(f"{base}.{recipe}")
    from robench.engine.train import train

    train(base, dataset=ds, profile=spec.profile, seed=spec.seed, dataset_options=opts, progress=progress)
    return load_model(base)


def weights_records(target: Target) -> list[dict[str, Any]]:
    """The provenance the reporter needs (train time, recipe, data) for the target's weights and,
    for a recipe variant, the clean weights it was fine-tuned from."""
    from robench.core.weights import read_index

    w = target.card.weights
    recs = [{"sha256": fingerprint(target), "name": target.card.name, "source": w.source, "provenance": w.provenance}]
    clean = (w.provenance or {}).get("clean_sha256")
    if clean:
        entry = next((e for e in read_index().values() if e.get("sha256") == clean), None)
        if entry is not None:
            recs.append({"sha256": clean, "name": entry["name"], "source": entry["source"],
                         "provenance": entry.get("provenance", {})})
    return recs
