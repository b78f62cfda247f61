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
    from robench.defenses import Defended, parse_defense
    from robench.models import load_model, split_name

    if train:
        _prepare_defences(spec, progress)
    recipe, chain = parse_defense(spec.defense, spec.defense_options)
    base, tag = split_name(spec.model)
    if recipe and tag:
        raise RobenchError(f"--model {spec.model} already names a variant; use --model {base} --defense {spec.defense}")
    from robench.core.weights import seeded_name

    # a recipe's training seed k > 0 (--seeds) is its own weights entry, M.<recipe>-s<k>
    name = seeded_name(f"{base}.{recipe}", spec.train_seed) if recipe else spec.model
    try:
        target = load_model(name, weights=spec.weights)
        if recipe and spec.weights is None and not _fits_clean(target, base):
            # shipped recipe weights fine-tuned from another clean model than the one this
            # machine uses for `base` (its own trained or imported weights): not comparable
            if not train:
                raise MissingWeightsError(
                    f"{name}: the shipped weights were fine-tuned from other {base} weights than this "
                    f"machine's; `robench train --model {base} --defense {recipe}` makes matching ones"
                )
            target = _train_missing(base, recipe, spec, progress)
    except MissingWeightsError:
        if spec.weights is not None or not train:
            raise
        target = _train_missing(base, recipe, spec, progress)
    if chain:
        target = Defended(target, chain)
    record = {
        "name": spec.defense or "none",
        "training": recipe,
        "inference": [d.config() for d in chain],
        "randomised": bool(getattr(target, "randomised", False)),
        "gradient": getattr(target, "gradient", "exact"),
    }
    if recipe and spec.train_seed:  # seed 0 (or none given) keeps the record, hence the stored cell keys
        record["train_seed"] = int(spec.train_seed)
    return target, record


def _fits_clean(target: Target, base: str) -> bool:
    """Whether recipe weights from the package were fine-tuned from the clean ``base`` weights in
    use here (a shipped file names the digest it was rounded from). Weights trained or imported
    on this machine are taken as they are."""
    from robench.core import weights as W

    w = target.card.weights
    clean = (w.provenance or {}).get("clean_sha256")
    if w.source != "shipped" or not clean:
        return True
    entry = W.lookup(base)
    return entry is None or clean in (entry.get("sha256"), entry.get("rounded_from_sha256"))


def _prepare_defences(spec: RunSpec, progress: bool) -> None:
    """Each inference defence's prerequisites (``InferenceDefense.prepare``: e.g. a denoiser to
    train first), before its wrapper is built."""
    from robench.core.registry import DEFENSES

    for tok in (t.strip() for t in (spec.defense or "").split("+")):
        if not tok or tok == "none":
            continue
        cls = DEFENSES.get(tok)
        prepare = getattr(cls, "prepare", None)
        if prepare is not None:
            prepare(
                dict(spec.defense_options.get(tok, {})),
                dataset=spec.dataset,
                dataset_options=dict(spec.dataset_options),
                profile=spec.profile,
                seed=spec.seed,
                progress=progress,
                device=spec.device,
            )


def training_dataset(name: str) -> str:
    """The pairs dataset that trains a missing target for a run on ``name``: itself, or the
    training set a 2AFC dataset declares (else the default dataset)."""
    from robench.core.registry import DATASETS, default_dataset

    cls = DATASETS.get(name)
    if getattr(cls, "kind", "pairs") == "pairs":
        return name
    return getattr(cls, "training_set", None) or default_dataset()


def _train_missing(base: str, recipe: str | None, spec: RunSpec, progress: bool) -> Target:
    """The mission trains what is missing: the clean model on the run's dataset (or the pairs
    set a 2AFC dataset declares), then the recipe, with progress bars."""
    from robench.models import load_model

    ds = training_dataset(spec.dataset)
    opts = dict(spec.dataset_options) if ds == spec.dataset else {}
    opts.pop("progress", None)
    if recipe:
        from robench.engine.finetune import adversarial_train

        from robench.core.weights import seeded_name

        adversarial_train(
            base,
            recipe,
            dataset=ds,
            profile=spec.profile,
            seed=spec.seed,
            dataset_options=opts,
            progress=progress,
            train_seed=spec.train_seed,
            device=spec.device,
        )
        return load_model(seeded_name(f"{base}.{recipe}", spec.train_seed))
    from robench.engine.train import train

    train(
        base,
        dataset=ds,
        profile=spec.profile,
        seed=spec.seed,
        dataset_options=opts,
        progress=progress,
        device=spec.device,
    )
    return load_model(base)


def weights_records(target: Target) -> list[dict[str, Any]]:
    """The provenance the reporter needs (train time, recipe, data) for the target's weights and,
    for a recipe variant, the clean weights it was fine-tuned from."""
    from robench.core.weights import read_index, shipped

    w = target.card.weights
    recs = [{"sha256": fingerprint(target), "name": target.card.name, "source": w.source, "provenance": w.provenance}]
    clean = (w.provenance or {}).get("clean_sha256")
    if clean:
        # this machine's weights, then the package's (a shipped file rounded from the clean
        # weights a recipe was fine-tuned from names their digest)
        known = list(read_index().values()) + list(shipped().values())
        entry = next((e for e in known if clean in (e.get("sha256"), e.get("rounded_from_sha256"))), None)
        if entry is not None:
            recs.append(
                {
                    "sha256": clean,
                    "name": entry["name"],
                    "source": entry["source"],
                    "provenance": entry.get("provenance", {}),
                }
            )
    return recs
