"""``robench run``: expand a grid into cells, run the missing ones, store them, summarise.

A *cell* is one target (+ weights digest) × defence × attack (+ every resolved hyper-parameter)
× ε list × dataset (+ split + subset) × seed × profile. Its key is the sha256 of that canonical
config plus the code version, so rerunning a command skips what is already in the store
(``--resume``, the default) and recomputes it with ``--force``.

Data flows one way: dataset → items → target → attack → records → store. :func:`run_cell` is a
pure function of its inputs (an executor can send it elsewhere); the driver alone writes the store.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robench import __version__
from robench.attacks.base import SUITE, Attack, AttackResult, BudgetViolation
from robench.errors import RobenchError
from robench.home import robench_home
from robench.profiles import get_profile
from robench.registry import ATTACKS, DATASETS
from robench.stats import correlations, twoafc_accuracy
from robench.store import Store, cell_key
from robench.target import Target, fingerprint

# relative tolerance of the monotonicity / ordering checks (attacks with few queries are noisy)
CHECK_TOL = 1e-6


@dataclass
class RunSpec:
    model: str
    attacks: list[str]
    dataset: str = "mini"
    eps: list[float] | None = None  # /255 units; None = the profile's
    profile: str = "quick"
    n: int | None = None  # items; None = the profile's (0 = whole split)
    seed: int = 0
    split: str = "test"
    defense: str | None = None
    weights: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    store: Path | None = None
    force: bool = False


def default_store() -> Path:
    return robench_home() / "runs" / "results.sqlite"


def expand_attacks(names: str | list[str]) -> list[str]:
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        for a in (SUITE if name == "all" else (name,)):
            ATTACKS.entry(a)  # unknown names fail here, with a did-you-mean
            if a not in out:
                out.append(a)
    if not out:
        raise RobenchError("no attack given (use --attacks all or a comma-separated list)")
    return out


# --------------------------------------------------------------------------------------------
# items


def stratified_subset(table, n: int | None, seed: int) -> list[int]:
    """``n`` rows spread over distortion types and levels: groups in a seeded order, one row of
    each group per round (so every distortion type is present once ``n`` ≥ the number of types)."""
    if not n or n >= len(table):
        return list(range(len(table)))
    rng = np.random.default_rng(seed)
    keys = ["distortion"] + (["level"] if "level" in table.columns else [])
    groups = [list(rng.permutation(idx)) for _, idx in sorted(table.groupby(keys).indices.items(), key=lambda kv: str(kv[0]))]
    order = rng.permutation(len(groups))
    # first pass by distortion type only so types are covered before levels repeat
    by_type: dict[str, list[list[int]]] = {}
    for gi in order:
        g = groups[gi]
        by_type.setdefault(str(table.iloc[g[0]]["distortion"]), []).append(g)
    picked: list[int] = []
    while len(picked) < n:
        progressed = False
        for glist in by_type.values():
            for g in glist:
                if g:
                    picked.append(int(g.pop()))
                    progressed = True
                    break
            if len(picked) >= n:
                break
        if not progressed:
            break
    return sorted(picked)


class _BatchDecoder:
    """Decodes the dataset items of one slice once for every role that asks for them (dist and
    ref of a batch are read back to back; each ``data[i]`` decodes the whole item)."""

    def __init__(self, data):
        self.data = data
        self._last: tuple[tuple[int, int], list] | None = None

    def samples(self, start: int, stop: int) -> list:
        if self._last is None or self._last[0] != (start, stop):
            self._last = ((start, stop), None)  # drop the previous batch before decoding the next
            self._last = ((start, stop), [self.data[i] for i in range(start, stop)])
        return self._last[1]


class StreamedImages:
    """A sliceable stand-in for an ``N×3×H×W`` tensor whose rows are decoded from the dataset
    only when a batch asks for them: a grid larger than memory streams (paper profile: KADID-10k's
    2000 test pairs at 512×384 are 9.4 GB as float32). Attacks only ever take ``x[start:stop]``."""

    streamed = True  # attacks validate each batch instead of the whole input

    def __init__(self, decoder: _BatchDecoder, role: str, sides: list[int] | None, n: int,
                 item_shape: tuple[int, ...]):
        self.decoder, self.role, self.sides, self.n = decoder, role, sides, n
        self.shape = torch.Size((n, *item_shape))

    def _key(self, i: int) -> str:
        if self.role not in ("attacked", "other"):
            return self.role
        # 2AFC: "attacked" is p1 when fewer than half prefer it, else p0; "other" the remaining one
        side = self.sides[i] if self.role == "attacked" else 1 - self.sides[i]
        return "p1" if side else "p0"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sl: slice) -> torch.Tensor:
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError("streamed images are read by contiguous slices")
        start, stop, _ = sl.indices(self.n)
        batch = [s[self._key(i)] for i, s in zip(range(start, stop), self.decoder.samples(start, stop))]
        return torch.stack(batch) if batch else torch.empty(0, *self.shape[1:])


@dataclass
class Items:
    """What a cell attacks: images (tensors, or :class:`StreamedImages` when they do not fit
    the memory budget) and their labels, built once per run and shared by its cells."""

    kind: str  # pairs | 2afc
    dist: Any
    ref: Any
    labels: dict[str, list]  # item_id, ref_id, distortion, level, mos | judge, attacked_side
    other: Any = None  # 2AFC: the image that is not attacked
    digest: str = ""
    load_seconds: float = 0.0
    streamed: bool = False

    def __len__(self) -> int:
        return int(self.dist.shape[0])


def memory_budget() -> int:
    """Bytes of decoded images a run may hold (``ROBENCH_MEMORY_BUDGET``, e.g. ``512M``, ``4G``,
    ``4GB``, plain bytes; unset or empty: 2 GiB)."""
    import re

    raw = os.environ.get("ROBENCH_MEMORY_BUDGET", "").strip()
    if not raw:
        return 2 * 2 ** 30
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", raw.upper())
    if m is None or float(m.group(1)) <= 0:
        raise RobenchError(f"ROBENCH_MEMORY_BUDGET must be a positive size like 512M or 4G, got {raw!r}")
    return int(float(m.group(1)) * {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[m.group(2)])


def load_items(dataset_name: str, split: str, n: int | None, seed: int, options: dict[str, Any],
               budget: int | None = None) -> Items:
    """One pass over the chosen items decodes every image (a corrupt file fails the run before
    any compute, naming the file) and collects the labels; the tensors are kept while they fit
    ``budget`` bytes, else dropped and streamed per batch (same tensors, same results)."""
    t0 = time.perf_counter()
    budget = memory_budget() if budget is None else budget
    data = DATASETS.get(dataset_name)(split=split, **options)
    rows = stratified_subset(data.table, n, seed)
    data = data.subset(rows)
    if not len(data):
        raise RobenchError(f"dataset {dataset_name!r} split {split!r} has no items")
    roles = ("dist", "ref") if data.kind == "pairs" else ("attacked", "other", "ref")
    held: dict[str, list] | None = {r: [] for r in roles}
    used, first_shape, shapes = 0, None, {}
    labels: dict[str, list] = {"ref_id": [], "distortion": []}
    labels.update({"mos": [], "level": []} if data.kind == "pairs" else {"judge": [], "attacked_side": []})
    for i in range(len(data)):
        s = data[i]
        if data.kind == "2afc":
            j = float(s["judge"])
            side = 1 if j < 0.5 else 0  # attack the image people prefer less
            labels["judge"].append(j)
            labels["attacked_side"].append(side)
            imgs = {"attacked": s["p1"] if side else s["p0"], "other": s["p0"] if side else s["p1"], "ref": s["ref"]}
        else:
            labels["mos"].append(float(s["mos"]))
            labels["level"].append(int(s.get("level", 0)))
            imgs = {"dist": s["dist"], "ref": s["ref"]}
        labels["ref_id"].append(str(s["ref_id"]))
        labels["distortion"].append(str(s["distortion"]))
        first_shape = first_shape or tuple(imgs["ref"].shape)
        shapes.setdefault(tuple(imgs["ref"].shape), i)
        if held is not None:
            used += sum(t.numel() * t.element_size() for t in imgs.values())
            if used > budget:
                held = None  # over budget: keep labels only, stream the pixels
            else:
                for r in roles:
                    held[r].append(imgs[r])
    t = data.table
    id_col = next((c for c in ("dist_path", "index", "p0_index", "p0_path") if c in t.columns), None)
    ids = [str(v) for v in (t[id_col] if id_col else range(len(t)))]
    if data.kind == "2afc":
        id_col1 = "p1_index" if "p1_index" in t.columns else "p1_path"
        ids = [f"{a}|{b}" for a, b in zip(ids, t[id_col1].astype(str))]
    labels["item_id"] = ids
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    N = len(data)
    if len(shapes) > 1:  # the same check in memory and streamed: before any compute, naming items
        (s0, i0), (s1, i1) = list(shapes.items())[:2]
        raise RobenchError(f"the images of {dataset_name!r} {split} differ in size (item {ids[i0]} is "
                           f"{s0[2]}×{s0[1]}, item {ids[i1]} is {s1[2]}×{s1[1]}; {len(shapes)} sizes): robench "
                           f"attacks equal-size batches, so resize or crop the images to one size first")
    if held is not None:
        imgs = {}
        for r in roles:  # one role at a time: the lists and the stacked copy never all coexist
            imgs[r] = torch.stack(held.pop(r))
        streamed = False
    else:
        sides = labels.get("attacked_side")
        dec = _BatchDecoder(data)
        imgs = {r: StreamedImages(dec, r, sides, N, first_shape) for r in roles}
        streamed = True
    dist = imgs["dist"] if data.kind == "pairs" else imgs["attacked"]
    return Items(kind=data.kind, dist=dist, ref=imgs["ref"], labels=labels, other=imgs.get("other"), digest=digest,
                 load_seconds=time.perf_counter() - t0, streamed=streamed)


# --------------------------------------------------------------------------------------------
# cells


def cell_config(target: Target, defense: dict[str, Any], attack: Attack, eps: list[float], spec: RunSpec,
                items: Items, n: int | None) -> dict[str, Any]:
    return {
        "target": {"name": target.card.name, "weights_sha256": fingerprint(target),
                   "weights_source": target.card.weights.source, "lower_better": bool(target.lower_better)},
        "defense": defense,
        "attack": attack.config(),
        "eps": [float(e) for e in eps],
        "dataset": {"name": spec.dataset, "split": spec.split, "kind": items.kind, "options": spec.dataset_options,
                    "n": len(items), "n_requested": n, "subset_seed": spec.seed, "items_sha256": items.digest},
        "seed": spec.seed,
        "profile": attack.profile,
    }


def run_cell(target: Target, attack: Attack, items: Items, eps: list[float], batch_size: int,
             progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Attack every item at every ε; return the cell's record (summary, probes, flags, timing)
    and its per-(item, ε) rows. Raises BudgetViolation rather than return an out-of-budget result."""
    t0 = time.perf_counter()
    res = attack(target, items.dist, items.ref, eps=[e / 255 for e in eps], return_images=False,
                 batch_size=batch_size, progress=progress)
    other_scores = None
    t1 = time.perf_counter()
    if items.other is not None:
        # seeded like the attack: a randomised defence's draws for the unattacked image must be
        # the same in every run (2AFC accuracy reproducible, a resumed store identical)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(attack.seed + 1)
            # the unattacked image of a 2AFC triplet: like every reported score, a mean over
            # the EOT draws when the target is randomised
            eot = int(attack.params["eot"])
            other_scores = torch.cat([target.expected_score(items.other[i:i + batch_size], items.ref[i:i + batch_size], eot)
                                      for i in range(0, len(items), batch_size)])
    compute = res.compute_seconds + (time.perf_counter() - t1)
    rows = make_rows(res, items, eps, other_scores)
    summary = summarise(res, items, eps, target.lower_better, other_scores)
    flags = cell_flags(res, summary, attack)
    convergence = convergence_check(target, attack, items, eps, batch_size, summary["mean_gain"])
    if convergence is not None:
        compute += convergence.pop("seconds")
        flags["convergence"] = convergence
        flags["not_converged"] = convergence["not_converged"]
    return {"summary": summary, "probes": res.probes, "flags": flags, "n_items": len(items),
            "attack_seconds": compute, "seconds": time.perf_counter() - t0}, rows


#: the convergence rule of issue 15: the full budget's gain may exceed the half budget's by at
#: most this fraction of the full gain
CONVERGENCE_TOL = 0.05


def convergence_check(target: Target, attack: Attack, items: Items, eps: list[float], batch_size: int,
                      full_gain: list[float]) -> dict[str, Any] | None:
    """Re-run the attack at half its budget (``Attack.half_budget``) on the same items and seed;
    ``not_converged`` when, at any ε, full gain − half gain > 5 % of the full gain: doubling the
    budget still moved the score, so the reported gain is a lower bound of an unfinished attack.
    None for single-step attacks (nothing to halve)."""
    params = attack.half_budget()
    if not params:
        return None
    t0 = time.perf_counter()
    half = type(attack)(profile=attack.profile, seed=attack.seed, **params)
    res = half(target, items.dist, items.ref, eps=[e / 255 for e in eps], return_images=False, batch_size=batch_size)
    q0, q = (t.numpy() for t in res.oriented(target.lower_better))
    half_gain = [float((q[k] - q0).mean()) for k in range(len(eps))]
    gap = [(f - h) / f if f > 0 else 0.0 for f, h in zip(full_gain, half_gain)]
    return {"half_params": {k: params[k] for k in attack.budget_params if k in params},
            "full_gain": [float(g) for g in full_gain], "half_gain": half_gain, "rel_gap": gap,
            "tolerance": CONVERGENCE_TOL, "not_converged": bool(any(g > CONVERGENCE_TOL for g in gap)),
            "seconds": time.perf_counter() - t0}


def make_rows(res: AttackResult, items: Items, eps: list[float], other_scores) -> list[dict[str, Any]]:
    L = items.labels
    rows = []
    for k, e in enumerate(eps):
        for i in range(len(items)):
            rows.append({
                "item": i, "eps": float(e), "item_id": L["item_id"][i], "ref_id": L["ref_id"][i],
                "distortion": L["distortion"][i], "level": L["level"][i] if "level" in L else None,
                "mos": L["mos"][i] if "mos" in L else None, "judge": L["judge"][i] if "judge" in L else None,
                "attacked_side": L["attacked_side"][i] if "attacked_side" in L else None,
                "other_score": float(other_scores[i]) if other_scores is not None else None,
                "clean_score": float(res.clean_scores[i]), "score": float(res.scores[k, i]),
                "linf": float(res.linf[k, i]), "l2": float(res.l2[k, i]), "queries": int(res.queries[k, i]),
                "psnr": _finite_or_none(res.psnr[k, i]) if res.psnr is not None else None,
                "ssim": _finite_or_none(res.ssim[k, i]) if res.ssim is not None else None,
            })
    return rows


def _finite_or_none(v: torch.Tensor) -> float | None:
    """PSNR of an unperturbed image is +inf (and SSIM NaN on tiny images): stored as NULL."""
    f = float(v)
    return f if np.isfinite(f) else None


def mean_perceptibility(res: AttackResult, k: int) -> dict[str, float | None]:
    """Mean PSNR over the images the attack changed (δ = 0 has infinite PSNR) and mean SSIM over
    all images, against the unattacked distorted images."""
    if res.psnr is None:
        return {"psnr": None, "ssim": None}
    p = res.psnr[k]
    p = p[torch.isfinite(p)]
    s = res.ssim[k]
    s = s[torch.isfinite(s)]
    return {"psnr": float(p.mean()) if p.numel() else None, "ssim": float(s.mean()) if s.numel() else None}


def summarise(res: AttackResult, items: Items, eps: list[float], lower_better: bool, other_scores) -> dict[str, Any]:
    q0, q = (t.numpy() for t in res.oriented(lower_better))
    per = [mean_perceptibility(res, k) for k in range(len(eps))]
    out: dict[str, Any] = {"eps": list(eps), "mean_gain": [float((q[k] - q0).mean()) for k in range(len(eps))],
                           "mean_queries": [float(res.queries[k].float().mean()) for k in range(len(eps))],
                           "mean_psnr": [p["psnr"] for p in per], "mean_ssim": [p["ssim"] for p in per],
                           "kept_clean": list(res.probes.get("kept_clean", []))}
    if items.kind == "pairs":
        mos = np.asarray(items.labels["mos"])
        out["clean"] = correlations(q0, mos)
        out["attacked"] = [correlations(q[k], mos) for k in range(len(eps))]
        out["clean_srocc"] = out["clean"]["srocc"]
        out["attacked_srocc"] = [c["srocc"] for c in out["attacked"]]
    else:
        sign = -1.0 if lower_better else 1.0
        qo = sign * other_scores.numpy()
        side = np.asarray(items.labels["attacked_side"])
        judge = np.asarray(items.labels["judge"])

        def acc(qa):
            q_p0 = np.where(side == 0, qa, qo)
            q_p1 = np.where(side == 1, qa, qo)
            return twoafc_accuracy(q_p0, q_p1, judge)

        out["clean_2afc"] = acc(q0)
        out["attacked_2afc"] = [acc(q[k]) for k in range(len(eps))]
    return out


def cell_flags(res: AttackResult, summary: dict[str, Any], attack: Attack) -> dict[str, Any]:
    """Per-cell sanity checks (method-notes §4 end); a flag is a warning recorded with the
    result, not a failure."""
    gains = summary["mean_gain"]
    scale = max(abs(g) for g in gains) or 1.0
    flags: dict[str, Any] = {
        "gain_monotone_in_eps": all(b >= a - CHECK_TOL * scale for a, b in zip(gains, gains[1:])),
        "moves_target": bool(max(gains) > 0),
        "zero_grad": res.probes.get("zero_grad", 0), "nan_grad": res.probes.get("nan_grad", 0),
        "randomised": res.probes.get("randomised", False),
    }
    if flags["randomised"] and int(attack.params.get("eot", 1) or 1) <= 1:
        flags["eot_required"] = True  # a randomised target attacked without EOT is not a valid result
    return flags


# --------------------------------------------------------------------------------------------
# the driver


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
    except RobenchError as exc:
        if spec.weights is not None or "no weights" not in str(exc) or not train:
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
    from robench.models import weights as W

    name = str(opts.get("weights", DiffPure.defaults["weights"]))
    if W.lookup(name) is None:
        ds = name.split(".", 1)[1] if "." in name else "mini"
        train_diffpure(dataset=ds, profile=spec.profile, seed=spec.seed,
                       dataset_options=dict(spec.dataset_options) if ds == spec.dataset else {}, progress=progress)


def _train_missing(base: str, recipe: str | None, spec: RunSpec, progress: bool) -> Target:
    """The mission trains what is missing: the clean model on the run's dataset (or mini when
    that is a 2AFC set), then the recipe, with progress bars."""
    from robench.models import load_model
    from robench.registry import DATASETS

    ds = spec.dataset if getattr(DATASETS.get(spec.dataset), "kind", "pairs") == "pairs" else "mini"
    opts = dict(spec.dataset_options) if ds == spec.dataset else {}
    opts.pop("progress", None)
    if recipe:
        from robench.defenses.recipes import adversarial_train

        adversarial_train(base, recipe, dataset=ds, profile=spec.profile, seed=spec.seed, dataset_options=opts,
                          progress=progress)
        return load_model(f"{base}.{recipe}")
    from robench.train import train

    train(base, dataset=ds, profile=spec.profile, seed=spec.seed, dataset_options=opts, progress=progress)
    return load_model(base)


@dataclass
class Plan:
    """One target × defence of a grid: everything loaded once, and the tasks of its cells."""
    spec: RunSpec
    target: Target
    defense: dict[str, Any]
    items: Items
    eps: list[float]
    attacks: list[Attack]
    tasks: list[Any]
    report: dict[str, Any]


def plan(spec: RunSpec, progress: bool = True) -> Plan:
    """Check names, train what is missing, load target and items, and describe every cell."""
    from robench.executors import CellTask

    prof = get_profile(spec.profile)
    names = expand_attacks(spec.attacks)
    # sorted and unique: `--eps 8,8` would write each row twice, and `8,2` is the same cell as `2,8`
    eps = sorted({float(e) for e in (spec.eps if spec.eps else prof.eps)})
    for e in eps:
        if not (0 < e <= 255):
            raise RobenchError(f"--eps values are in /255 units and must be in (0, 255], got {e:g}")
    n = spec.n if spec.n is not None else prof.attack_n
    attacks = []
    for name in names:
        params = dict(spec.attack_params.get(name, {}))
        if name == "facpa":  # the generator trains on the same dataset's train split
            params.setdefault("dataset", spec.dataset)
            params.setdefault("dataset_options", dict(spec.dataset_options))
        attacks.append(ATTACKS.get(name)(profile=prof.name, seed=spec.seed, **params))
    target, defense = resolve_target(spec, progress)
    for a in attacks:  # refuse the whole grid before any compute; fix eot="auto" for this target
        a.check(target)
        a.resolve(target)
    items = load_items(spec.dataset, spec.split, n or None, spec.seed, spec.dataset_options)
    store_path = Path(spec.store) if spec.store else default_store()
    report: dict[str, Any] = {"store": str(store_path), "cells": [], "profile": prof.name, "eps": eps,
                              "defense": defense, "weights": target.card.weights.describe(),
                              "target": target.card.name, "dataset": spec.dataset, "split": spec.split, "n": len(items)}
    spec_dict = {k: v for k, v in spec.__dict__.items() if k not in ("store", "force")}
    tasks = []
    for a in attacks:
        config = cell_config(target, defense, a, eps, spec, items, n)
        tasks.append(CellTask(key=cell_key(config, __version__), spec=spec_dict, attack=a.name,
                              attack_params=dict(a.params), eps=eps, batch_size=prof.attack_batch, n=n,
                              home=str(robench_home()), label=f"{target.card.name} · {a.name}",
                              extra={"config": config}))
    return Plan(spec, target, defense, items, eps, attacks, tasks, report)


def run(spec: RunSpec, progress: bool = True, log: Callable[[str], None] | None = None,
        executor: Any = "serial") -> dict[str, Any]:
    """One target × defence × attacks (the single-model form of ``run_grid``)."""
    return run_grid([spec], progress, log, executor)["runs"][0]


def run_grid(specs: list[RunSpec], progress: bool = True, log: Callable[[str], None] | None = None,
             executor: Any = "serial", executor_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plan every target × defence (training what is missing, in the driver), hand the cells that
    are not stored yet to the executor, and commit each returned cell in one transaction (the
    driver is the store's only writer)."""
    from robench.executors import Executor, make_executor
    from robench.progress import progress_bar
    from robench.train import git_commit, versions

    if isinstance(executor, str):
        from robench.executors import check_name

        check_name(executor)
    stores = {str(Path(s.store) if s.store else default_store()) for s in specs}
    if len(stores) != 1:
        raise RobenchError(f"one grid writes one store, got {sorted(stores)}")
    plans = [plan(s, progress) for s in specs]
    store_path = Path(stores.pop())
    commit, vers = git_commit(), versions()
    t_run = time.perf_counter()
    compute_total = 0.0
    harness_total = sum(p.items.load_seconds for p in plans)
    by_key: dict[str, tuple[Plan, Any, Attack]] = {}
    with Store(store_path) as store, progress_bar(progress) as bar:
        todo = []
        for p in plans:
            store.record_weights(weights_records(p.target))
            for t, a in zip(p.tasks, p.attacks):
                entry = {"key": t.key, "attack": a.name, "repr": repr(a)}
                p.report["cells"].append(entry)
                if not p.spec.force and store.status(t.key) == "done":
                    entry["status"] = "cached"
                else:
                    todo.append(t)
                    by_key[t.key] = (p, entry, a)
        ex = executor if isinstance(executor, Executor) else (make_executor(executor, **(executor_options or {}))
                                                             if todo else None)
        local = {}
        if ex is not None and ex.name == "serial":
            for t in todo:  # in process: reuse the loaded target and items, per-item progress
                p, _, a = by_key[t.key]
                local[t.key] = _local_cell(p, a, t, bar)
        overall = bar.add_task(f"grid ({ex.name})", total=len(todo)) if (bar and ex is not None and ex.name != "serial") else None
        try:
            for t, result in (ex.run(todo, local) if ex is not None else []):
                p, entry, a = by_key[t.key]
                t_commit = time.perf_counter()
                cell = {"config": t.extra["config"], "versions": vers, "git_commit": commit}
                if isinstance(result, BaseException) or "failed" in result:
                    msg = str(result) if isinstance(result, BaseException) else result["failed"]
                    store.record_failure(t.key, cell, msg)
                    entry.update(status="failed", error=msg)
                    if log:
                        log(f"cell {t.label} failed: {msg}")
                else:
                    record = result["record"]
                    written = store.commit_cell(t.key, {**cell, **record}, result["rows"], replace=p.spec.force,
                                                before_commit=_fault_hook(a.name))
                    wall = result.get("wall", record["seconds"]) + (time.perf_counter() - t_commit)
                    compute_total += record["attack_seconds"]
                    harness_total += wall - record["attack_seconds"]
                    entry.update(status="done" if written else "cached", seconds=wall,
                                 attack_seconds=record["attack_seconds"])
                if overall is not None:
                    bar.advance(overall, 1)
        finally:
            if ex is not None and not isinstance(executor, Executor):
                ex.close()
        for p in plans:
            cross_cell_checks(store, [c["key"] for c in p.report["cells"] if c.get("status") in ("done", "cached")])
        table = store.cells(status=None)
        for p in plans:
            for entry in p.report["cells"]:
                row = table[table["key"] == entry["key"]]
                if len(row):
                    r = row.iloc[0]
                    entry.update(summary=r["summary"], flags=r["flags"], status_in_store=r["status"])
    seconds = time.perf_counter() - t_run
    for p in plans:
        p.report.update(seconds=seconds, attack_compute_seconds=compute_total,
                        harness_overhead=harness_total / compute_total if compute_total > 0 else None)
    return {"runs": [p.report for p in plans], "seconds": seconds, "executor": ex.name if ex is not None else "none",
            "store": str(store_path)}


def _local_cell(p: Plan, attack: Attack, task, bar) -> Callable[[], dict[str, Any]]:
    def go() -> dict[str, Any]:
        t0 = time.perf_counter()
        prog = bar.add_task(task.label, total=len(p.items)) if bar else None
        tick = (lambda k: bar.advance(prog, k)) if bar else None
        out = cell_result(task.key, p.target, attack, p.items, p.eps, task.batch_size, tick)
        out["wall"] = time.perf_counter() - t0
        return out
    return go


def cell_result(key: str, target: Target, attack: Attack, items: Items, eps: list[float], batch_size: int,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """What an executor hands back for one cell: record and rows, or the budget violation that
    stopped it (an out-of-budget result must never reach the store as data)."""
    try:
        record, rows = run_cell(target, attack, items, eps, batch_size, progress)
    except BudgetViolation as exc:
        return {"key": key, "failed": str(exc)}
    return {"key": key, "record": record, "rows": rows}


def weights_records(target: Target) -> list[dict[str, Any]]:
    """The provenance the reporter needs (train time, recipe, data) for the target's weights and,
    for a recipe variant, the clean weights it was fine-tuned from."""
    from robench.models.weights import read_index

    w = target.card.weights
    recs = [{"sha256": fingerprint(target), "name": target.card.name, "source": w.source, "provenance": w.provenance}]
    clean = (w.provenance or {}).get("clean_sha256")
    if clean:
        entry = next((e for e in read_index().values() if e.get("sha256") == clean), None)
        if entry is not None:
            recs.append({"sha256": clean, "name": entry["name"], "source": entry["source"],
                         "provenance": entry.get("provenance", {})})
    return recs


def _fault_hook(attack_name: str):
    """Fault injection for the crash tests: ``ROBENCH_FAULT=kill-before-commit:<attack>`` sends
    SIGKILL to this process inside the cell's transaction, after its rows are written."""
    from robench.faults import armed, fault

    point = f"kill-before-commit:{attack_name}"
    return (lambda: fault(point)) if armed(point) else None


def cross_cell_checks(store: Store, keys: list[str]) -> None:
    """Checks across the cells of one grid (same target, defence, items and ε): iterative ≥
    single-step (PGD vs FGSM mean gain per ε), and white-box ≥ black-box per image (the share of
    images where a score-only attack beats every gradient attack by more than 1 % of the score
    range; a large share suggests gradient masking)."""
    if not keys:
        return
    cells = store.cells(status="done")
    cells = cells[cells["key"].isin(keys)]
    if cells.empty:
        return
    res = {k: store.results(k) for k in cells["key"]}
    for _, grp in cells.groupby(["target", "weights_sha256", "defense", "dataset", "split", "seed", "profile"]):
        by_attack = {r["attack"]: r for _, r in grp.iterrows()}
        if "pgd" in by_attack and "fgsm" in by_attack:
            gp, gf = by_attack["pgd"]["summary"]["mean_gain"], by_attack["fgsm"]["summary"]["mean_gain"]
            if len(gp) == len(gf):
                scale = max(map(abs, gp + gf)) or 1.0
                ok = all(p >= f - 0.05 * scale for p, f in zip(gp, gf))
                store.update_flags(by_attack["pgd"]["key"], {"iterative_ge_single_step": ok})
        white = [r for r in by_attack.values() if r["config"]["attack"]["needs"] == "gradients"]
        black = [r for r in by_attack.values() if r["config"]["attack"]["needs"] == "scores"]
        if white and black:
            def gains(r):
                df = res[r["key"]]
                return df.assign(g=df["score"] - df["clean_score"]).pivot(index="item", columns="eps", values="g")

            wb = [gains(r) for r in white]
            bb = [gains(r) for r in black]
            sign = -1.0 if white[0]["config"]["target"]["lower_better"] else 1.0  # stored scores are raw
            try:
                w = np.maximum.reduce([sign * g.to_numpy() for g in wb])
                b = np.maximum.reduce([sign * g.to_numpy() for g in bb])
            except ValueError:
                continue
            spread = float(np.nanmax(np.abs(np.concatenate([w.ravel(), b.ravel()])))) or 1.0
            frac = float(np.mean(b > w + 0.01 * spread))
            for r in white + black:
                store.update_flags(r["key"], {"black_box_beats_white_box": frac, "suspect_gradient_masking": frac > 0.1})

