"""One cell: a target × defence × attack × ε list on the items → its record and rows.

:func:`run_cell` is a pure function of its inputs (an executor can send it elsewhere); the
driver alone writes the store. The cell's sanity flags (monotone gain, convergence at half the
budget, EOT, gradient masking across cells) are computed here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from robench.attacks import Attack, AttackResult, BudgetViolation
from robench.core.config import RunSpec
from robench.core.directions import DEFAULT as UP, directed_gain, get_direction, item_signs
from robench.core.device import halving_batches
from robench.core.errors import OutOfMemory
from robench.core.flags import STRENGTH_FLOOR
from robench.core.registry import ATTACKS
from robench.core.target import Target, fingerprint
from robench.engine.items import Items
from robench.engine.store import Store
from robench.core.stats import correlations, twoafc_accuracy


# relative tolerance of the monotonicity / ordering checks (attacks with few queries are noisy)
CHECK_TOL = 1e-6


def cell_config(
    target: Target,
    defense: dict[str, Any],
    attack: Attack,
    eps: list[float],
    spec: RunSpec,
    items: Items,
    n: int | None,
    direction: str = UP,
) -> dict[str, Any]:
    return {
        "target": {
            "name": target.card.name,
            "weights_sha256": fingerprint(target),
            "weights_source": target.card.weights.source,
            "lower_better": bool(target.lower_better),
        },
        "defense": defense,
        "attack": attack.config(),
        "eps": [float(e) for e in eps],
        "dataset": {
            "name": spec.dataset,
            "split": spec.split,
            "kind": items.kind,
            "options": spec.dataset_options,
            "n": len(items),
            "n_requested": n,
            "subset_seed": spec.seed,
            "items_sha256": items.digest,
            **({"content_version": items.content_version} if items.content_version else {}),
        },
        "seed": spec.seed,
        "profile": attack.profile,
        # bf16 autocast gives other numbers: its cells are keyed apart (absent for float32, so
        # every stored cell keeps its key); torch.compile is provenance (engine.speed)
        **({"amp": target.amp} if getattr(target, "amp", None) else {}),
        # the attack direction (core.directions): absent for ``up``, so every stored cell keeps its key
        **({"direction": direction} if direction != UP else {}),
    }


def direction_signs(direction: str, items: Items) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-item ±1 of the cell's direction and its record (name, protocol, threshold, counts)."""
    mos = items.labels.get("mos") if items.kind == "pairs" else None
    s, info = get_direction(direction).signs(mos, len(items))
    return torch.from_numpy(s).float(), info


def run_cell(
    target: Target,
    attack: Attack,
    items: Items,
    eps: list[float],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    escalate: int = 0,
    direction: str = UP,
    keep_images: str = "none",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Attack every item at every ε; return the cell's record (summary, probes, flags, timing)
    and its per-(item, ε) rows. Raises BudgetViolation rather than return an out-of-budget result.

    ``escalate`` (``robench run --escalate K``): when the half-budget check flags the cell not
    converged, the attack runs again at twice its budget, checked against the run before it (its
    half), up to K doublings; the cell keeps the largest budget's numbers and records the ladder.
    A cell still short of the rule after K doublings stays flagged.

    ``direction`` (core.directions) sets each item's sign; gains and the convergence rule are on
    the directed gain ``sign · (q_adv − q_clean)`` (≥ 0 per item by the harness).

    ``keep_images`` ("top" | "all"; engine.images): the record carries the adversarial images
    (K×N×3×H×W, ``record["images"]``) for the driver to store beside the store; "top" keeps none
    when they would not fit ``TOP_MAX_BYTES`` or the items are streamed."""
    from robench.engine.images import TOP_MAX_BYTES

    t0 = time.perf_counter()
    signs, dir_info = direction_signs(direction, items)
    if keep_images == "top" and (
        items.streamed or len(eps) * len(items) * 4 * int(np.prod(items.dist.shape[1:])) > TOP_MAX_BYTES
    ):
        keep_images = "none"
    keep = keep_images in ("top", "all")
    res = attack(
        target,
        items.dist,
        items.ref,
        eps=[e / 255 for e in eps],
        return_images=keep,
        batch_size=batch_size,
        progress=progress,
        signs=signs,
    )
    # after an out-of-memory error the rest of the cell runs at the batch size the attack ended with
    run = _Spent(compute=res.compute_seconds, batch_size=res.batch_size_used, halved=res.oom_halved)
    convergence = convergence_check(target, attack, items, eps, run.batch_size, res, signs)
    if convergence is not None:
        res = _converge(convergence, attack, target, items, eps, signs, res, run, escalate, keep)
    other_scores = _other_scores(target, attack, items, run)
    compute, bs, halved = run.compute, run.batch_size, run.halved
    rows = make_rows(res, items, eps, other_scores)
    summary = summarise(res, items, eps, target.lower_better, other_scores, signs)
    summary["direction"] = dir_info
    if items.kind == "pairs":
        summary["clean_scale"] = clean_scale(target, res, items)
    flags = cell_flags(res, summary, attack)
    if convergence is not None:
        flags["convergence"] = convergence
        flags["not_converged"] = convergence["not_converged"]
        if convergence.get("escalated"):
            flags["escalated"] = convergence["escalated"]  # shown with the cell: it ran past its profile's budget
    # the batch sizes are provenance (not in the key): asked for, and in use at the end
    probes = {**res.probes, "batch_size": int(batch_size), "batch_size_used": int(bs), "oom_halved": int(halved)}
    if halved:
        flags["oom_halved"] = int(halved)  # shown with the cell: it ran out of memory and went on smaller
    record = {
        "summary": summary,
        "probes": probes,
        "flags": flags,
        "n_items": len(items),
        "attack_seconds": compute,
        "seconds": time.perf_counter() - t0,
    }
    if keep:
        record["images"] = res.images  # of the run the rows come from (the last rung when escalated)
    return record, rows


#: the convergence rule: the full budget's gain may exceed the half budget's by at
#: most this fraction of the full gain
CONVERGENCE_TOL = 0.05


#: the half-budget re-run and the plateau probe attack a seeded subset of the cell's items: a
#: quarter of them, at least CHECK_MIN_ITEMS (all when fewer) and at most CHECK_MAX_ITEMS. The
#: rule compares mean gains of the same items at two budgets — per-item gaps are strongly
#: correlated, so a quarter decides as the whole did on every committed cell (README "Speed"),
#: and the check costs 1/8 of the cell instead of 1/2.
CHECK_FRACTION = 0.25
CHECK_MIN_ITEMS = 16
CHECK_MAX_ITEMS = 128


@dataclass
class _Spent:
    """A cell's running account: attack compute seconds, the batch size in use (after an
    out-of-memory error the rest of the cell runs at the size the last run ended with), and how
    many times a batch was halved."""

    compute: float
    batch_size: int
    halved: int

    def add(self, res) -> None:
        self.compute += res.compute_seconds
        self.batch_size, self.halved = res.batch_size_used, self.halved + res.oom_halved


def _converge(convergence, attack, target, items, eps, signs, res, run: _Spent, escalate: int, keep: bool):
    """The cell's convergence evidence beyond the half-budget check (filled into ``convergence``):
    ``escalate`` budget doublings while it is short, the plateau probe, another start. Returns
    the result the cell keeps (the largest budget's)."""
    run.compute += convergence.pop("seconds")
    run.batch_size, more = convergence.pop("batch_size_used"), convergence.pop("oom_halved")
    run.halved += more
    ladder = [
        {"params": convergence["half_params"], "gain": convergence["half_gain"], "items": convergence["items"]},
        {"params": _budget(attack, attack.params), "gain": directed_gains(res, target.lower_better, signs)},
    ]
    k = 0
    while convergence["not_converged"] and k < int(escalate):
        k += 1
        params = attack.scaled_budget(2**k)
        res = _run_at(attack, params, target, items, eps, run.batch_size, signs, keep_images=keep)
        run.add(res)
        full, prev = directed_gains(res, target.lower_better, signs), ladder[-1]["gain"]
        ladder.append({"params": _budget(attack, params), "gain": full})
        gap = _rel_gap(full, prev)
        # rungs above the first compare all items' gains
        convergence.update(
            half_params=ladder[-2]["params"],
            full_gain=full,
            half_gain=prev,
            rel_gap=gap,
            not_converged=_short(gap),
            items=len(items),
            item_index=None,
        )
    if escalate:
        # the run's cap and what it used: a later run with a larger cap re-opens a flagged cell
        convergence.update(escalate=int(escalate), escalated=k, budget_used=ladder[-1]["params"], ladder=ladder)
    if not convergence["not_converged"] and attack.plateau_probe:
        run.add(_plateau_probe(convergence, attack, 2**k, target, items, eps, run.batch_size, signs))
    if attack.another_start is not None:
        params = attack.scaled_budget(2**k) if k else attack.params
        run.add(_another_start(convergence, attack, params, target, items, eps, run.batch_size, signs, res))
    return res


def _other_scores(target, attack, items, run: _Spent):
    """The scores of each 2AFC triplet's unattacked image (None for pairs)."""
    if items.other is None:
        return None
    t1 = time.perf_counter()
    # seeded like the attack: a randomised defence's draws for the unattacked image must be
    # the same in every run (2AFC accuracy reproducible, a resumed store identical)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(attack.seed + 1)
        # the unattacked image of a 2AFC triplet: like every reported score, a mean over
        # the EOT draws when the target is randomised
        eot = int(attack.params["eot"])
        dev = target.device  # items stay on the CPU; batches go to the target
        out = torch.empty(len(items))

        def score_other(i: int, j: int) -> None:
            out[i:j] = target.expected_score(items.other[i:j].to(dev), items.ref[i:j].to(dev), eot).cpu()

        run.batch_size, more = halving_batches(
            len(items), run.batch_size, score_other, dev, what=f"2AFC scores of {target.card.name}"
        )
        run.halved += more
    run.compute += time.perf_counter() - t1
    return out


def check_items(n: int, seed: int, attack: Attack | None = None) -> torch.Tensor:
    """Indices (sorted) of the items the convergence check re-attacks (all of them for an
    attack that declares ``check_all_items``)."""
    m = min(n, max(CHECK_MIN_ITEMS, min(CHECK_MAX_ITEMS, math.ceil(CHECK_FRACTION * n))))
    if m == n or (attack is not None and attack.check_all_items):
        return torch.arange(n)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return torch.randperm(n, generator=g)[:m].sort().values


def _rows(signs: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    """The signs of the items ``idx`` (all when None; None stays None: every item up)."""
    return signs if signs is None or idx is None else signs[idx]


def _gather(images, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of a tensor or of streamed images (which slice only)."""
    if isinstance(images, torch.Tensor):
        return images[idx]
    return torch.cat([images[int(i) : int(i) + 1] for i in idx])


def _run_at(
    attack: Attack,
    params: dict[str, Any],
    target: Target,
    items: Items,
    eps: list[float],
    batch_size: int,
    signs: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    keep_images: bool = False,
    seed: int | None = None,
) -> AttackResult:
    """The same attack (profile, seed unless given, direction) at other parameters, on the
    cell's items (those of ``idx`` when given)."""
    other = type(attack)(profile=attack.profile, seed=attack.seed if seed is None else seed, **params)
    dist, ref = (items.dist, items.ref) if idx is None else (_gather(items.dist, idx), _gather(items.ref, idx))
    return other(
        target,
        dist,
        ref,
        eps=[e / 255 for e in eps],
        return_images=keep_images,
        batch_size=batch_size,
        signs=_rows(signs, idx),
    )


def _check_index(convergence: dict[str, Any]) -> torch.Tensor | None:
    """The items the convergence check attacked (None: all of them)."""
    idx = convergence.get("item_index")
    return None if idx is None else torch.tensor(idx)


def _plateau_probe(
    convergence: dict[str, Any],
    attack: Attack,
    scale: int,
    target: Target,
    items: Items,
    eps: list[float],
    batch_size: int,
    signs: torch.Tensor | None = None,
) -> AttackResult:
    """The half-budget rule passed at ``scale`` × the profile's budget; an attack that declares
    ``plateau_probe = m`` (its gain can stall, then rise again: FACPA's generator gained 0.113 at
    120 steps, 0.110 at 240, 0.226 at 1 920) is run once more at m × that budget on the same
    items and seed. More than 5 % more gain there flags the cell not converged: the rule passed
    on a plateau. The cell keeps the accepted budget's rows; the probe is recorded. Returns the
    probe's run (its seconds and batch sizes count like the ladder's)."""
    params = attack.scaled_budget(scale * int(attack.plateau_probe))
    idx = _check_index(convergence)
    res = _run_at(attack, params, target, items, eps, batch_size, signs, idx)
    probe = directed_gains(res, target.lower_better, _rows(signs, idx))
    accepted = convergence["full_gain"]
    gap = _rel_gap(probe, accepted)
    flagged = _short(gap)
    convergence.update(
        plateau_probe={
            "params": _budget(attack, params),
            "gain": probe,
            "rel_gap": gap,
            "factor": int(attack.plateau_probe),
            "not_converged": flagged,
        },
        not_converged=flagged,
    )
    return res


#: the another-start run's seed offset from the cell's (a start the cell's own run never drew)
ANOTHER_START_SEED = 7717


def _another_start(
    convergence: dict[str, Any],
    attack: Attack,
    params: dict[str, Any],
    target: Target,
    items: Items,
    eps: list[float],
    batch_size: int,
    signs: torch.Tensor | None,
    full: AttackResult,
) -> AttackResult:
    """The attack once more from another start (``Attack.another_start``: a random first point,
    another seed) at the accepted budget on the check's items. Per item the better of the two
    runs is what a second start would have found; when its mean directed gain exceeds the cell's
    own on those items by > 5 % at some ε, the cell is flagged not converged: its single start
    stopped short (a worse basin), which a half budget from the same start cannot show. Returns
    the run (its seconds and batch sizes count like the ladder's)."""
    idx = _check_index(convergence)
    res = _run_at(
        attack,
        {**params, **attack.another_start},
        target,
        items,
        eps,
        batch_size,
        signs,
        idx,
        seed=attack.seed + ANOTHER_START_SEED,
    )
    own = item_gains(full, target.lower_better, signs, idx)
    again = item_gains(res, target.lower_better, _rows(signs, idx))
    own_mean = [float(g.mean()) for g in own]
    best_mean = [float(np.maximum(a, b).mean()) for a, b in zip(own, again)]
    gap = _rel_gap(best_mean, own_mean)
    flagged = _short(gap)
    convergence.update(
        another_start={
            "params": dict(attack.another_start),
            "seed": attack.seed + ANOTHER_START_SEED,
            "gain": [float(g.mean()) for g in again],
            "own_gain": own_mean,
            "best_of_both": best_mean,
            "rel_gap": gap,
            "not_converged": flagged,
        },
        not_converged=bool(convergence["not_converged"] or flagged),
    )
    return res


def item_gains(
    res: AttackResult, lower_better: bool, signs: torch.Tensor | None = None, idx: torch.Tensor | None = None
) -> list[np.ndarray]:
    """Per ε the directed gain ``sign · (q_adv − q_clean)`` of every item (of ``idx`` when given)."""
    q0, q = (t.numpy() for t in res.oriented(lower_better))
    s = np.ones(len(q0)) if signs is None else signs.numpy()
    if idx is not None:
        i = idx.numpy()
        q0, q, s = q0[i], q[:, i], s[i]
    return [directed_gain(q0, qk, s) for qk in q]


def directed_gains(
    res: AttackResult, lower_better: bool, signs: torch.Tensor | None = None, idx: torch.Tensor | None = None
) -> list[float]:
    """Mean directed gain ``sign · (q_adv − q_clean)`` per ε (for ``up``, the plain gain), over
    the items ``idx`` when given."""
    return [float(g.mean()) for g in item_gains(res, lower_better, signs, idx)]


def _rel_gap(full: list[float], half: list[float]) -> list[float]:
    return [(f - h) / f if f > 0 else 0.0 for f, h in zip(full, half)]


def _short(gap: list[float]) -> bool:
    """The convergence rule: at some ε the larger budget gained > CONVERGENCE_TOL more."""
    return bool(any(g > CONVERGENCE_TOL for g in gap))


def _budget(attack: Attack, params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in attack.budget_params if k in params}


def convergence_check(
    target: Target,
    attack: Attack,
    items: Items,
    eps: list[float],
    batch_size: int,
    full: AttackResult,
    signs: torch.Tensor | None = None,
) -> dict[str, Any] | None:
    """Re-run the attack at half its budget (``Attack.half_budget``) with the same seed on the
    check's items (:func:`check_items`); ``not_converged`` when, at any ε, their mean full gain −
    half gain > 5 % of the full gain: doubling the budget still moved the score, so the reported
    gain is a lower bound of an unfinished attack. ``full_gain``/``half_gain`` are the check
    items' means (``items`` of ``n``). None for single-step attacks (nothing to halve)."""
    params = attack.half_budget()
    if not params:
        return None
    t0 = time.perf_counter()
    n = len(items)
    idx = check_items(n, attack.seed, attack)
    sub = None if len(idx) == n else idx
    res = _run_at(attack, params, target, items, eps, batch_size, signs, sub)
    half_gain = directed_gains(res, target.lower_better, _rows(signs, sub))
    full_gain = directed_gains(full, target.lower_better, signs, sub)
    gap = _rel_gap(full_gain, half_gain)
    return {
        "half_params": _budget(attack, params),
        "items": len(idx),
        "of": n,
        "item_index": None if sub is None else [int(i) for i in sub],
        "full_gain": [float(g) for g in full_gain],
        "half_gain": half_gain,
        "rel_gap": gap,
        "tolerance": CONVERGENCE_TOL,
        "not_converged": _short(gap),
        "seconds": time.perf_counter() - t0,
        "batch_size_used": res.batch_size_used,
        "oom_halved": res.oom_halved,
    }


def make_rows(res: AttackResult, items: Items, eps: list[float], other_scores) -> list[dict[str, Any]]:
    L = items.labels
    rows = []
    for k, e in enumerate(eps):
        for i in range(len(items)):
            rows.append(
                {
                    "item": i,
                    "eps": float(e),
                    "item_id": L["item_id"][i],
                    "ref_id": L["ref_id"][i],
                    "source": L["source"][i] if "source" in L else None,
                    "distortion": L["distortion"][i],
                    "level": L["level"][i] if "level" in L else None,
                    "mos": L["mos"][i] if "mos" in L else None,
                    "judge": L["judge"][i] if "judge" in L else None,
                    "attacked_side": L["attacked_side"][i] if "attacked_side" in L else None,
                    "other_score": float(other_scores[i]) if other_scores is not None else None,
                    "clean_score": float(res.clean_scores[i]),
                    "score": float(res.scores[k, i]),
                    "linf": float(res.linf[k, i]),
                    "l2": float(res.l2[k, i]),
                    "queries": int(res.queries[k, i]),
                    "psnr": _finite_or_none(res.psnr[k, i]) if res.psnr is not None else None,
                    "ssim": _finite_or_none(res.ssim[k, i]) if res.ssim is not None else None,
                }
            )
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


def summarise(
    res: AttackResult,
    items: Items,
    eps: list[float],
    lower_better: bool,
    other_scores,
    signs: torch.Tensor | None = None,
) -> dict[str, Any]:
    q0, q = (t.numpy() for t in res.oriented(lower_better))
    per = [mean_perceptibility(res, k) for k in range(len(eps))]
    out: dict[str, Any] = {
        "eps": list(eps),
        "mean_gain": directed_gains(res, lower_better, signs),
        "mean_queries": [float(res.queries[k].float().mean()) for k in range(len(eps))],
        "mean_psnr": [p["psnr"] for p in per],
        "mean_ssim": [p["ssim"] for p in per],
        "kept_clean": list(res.probes.get("kept_clean", [])),
    }
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


def clean_scale(target: Target, res: AttackResult, items: Items) -> dict[str, float]:
    """The clean scores' spread and fit on the MOS scale (the scale check, core.flags ``scale``):
    SD of oriented ``q``, and SD, MSE and R² = 1 − MSE/Var(MOS) of the target's calibrated
    prediction (its own map ``a·q + b``; BiRQA's is the identity: it regresses MOS)."""
    q0 = res.oriented(target.lower_better)[0].double()
    mos = torch.as_tensor(np.asarray(items.labels["mos"], dtype=float))
    with torch.no_grad():
        pred = target.calibration(q0.float().to(target.device)).double().cpu()
    mse = float(((pred - mos) ** 2).mean())
    var = float(mos.var(unbiased=False))
    return {
        "sd_q": float(q0.std()),
        "sd_pred": float(pred.std()),
        "mse": mse,
        "r2": 1.0 - mse / var if var > 0 else float("nan"),
        "sd_mos": float(mos.std()),
    }


def cell_flags(res: AttackResult, summary: dict[str, Any], attack: Attack) -> dict[str, Any]:
    """Per-cell sanity checks (docs/method.md §4 end); a flag is a warning recorded with the
    result, not a failure."""
    gains = summary["mean_gain"]
    scale = max(abs(g) for g in gains) or 1.0
    flags: dict[str, Any] = {
        "gain_monotone_in_eps": all(b >= a - CHECK_TOL * scale for a, b in zip(gains, gains[1:])),
        "moves_target": bool(max(gains) > 0),
        "zero_grad": res.probes.get("zero_grad", 0),
        "nan_grad": res.probes.get("nan_grad", 0),
        "randomised": res.probes.get("randomised", False),
    }
    if flags["randomised"] and int(attack.params.get("eot", 1) or 1) <= 1:
        flags["eot_required"] = True  # a randomised target attacked without EOT is not a valid result
    measured = strength_of(attack, summary.get("direction"))
    if measured is not None:
        flags["strength"] = measured
        flags["below_reference"] = measured["fraction"] < STRENGTH_FLOOR
    return flags


def strength_of(attack: Attack, direction: dict[str, Any] | None) -> dict[str, Any] | None:
    """The attack's declared measured strength (``Attack.strength``) for the directions the cell's
    items move in (the lower of up and down for a mixed direction), or None when not measured."""
    table = attack.strength.get(attack.profile, {})
    d = direction or {"n_up": 1, "n_down": 0}
    ways = [w for w, k in (("up", "n_up"), ("down", "n_down")) if d.get(k)]
    vals = [table[w] for w in ways if w in table]
    if not vals:
        return None
    return {
        "fraction": float(min(vals)),
        "directions": ways,
        "floor": STRENGTH_FLOOR,
        "measured_by": "robench bench attack-strength (reports/bench/attack-strength.json)",
    }


def cell_result(
    key: str,
    target: Target,
    attack: Attack,
    items: Items,
    eps: list[float],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    escalate: int = 0,
    direction: str = UP,
    keep_images: str = "none",
) -> dict[str, Any]:
    """What an executor hands back for one cell: record and rows, or the budget violation that
    stopped it (an out-of-budget result must never reach the store as data)."""
    try:
        record, rows = run_cell(target, attack, items, eps, batch_size, progress, escalate, direction, keep_images)
    except (BudgetViolation, OutOfMemory) as exc:  # out of memory even at batch size 1: a failed cell
        return {"key": key, "failed": str(exc)}
    return {"key": key, "record": record, "rows": rows}


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
    cells = cells.assign(
        amp=cells["config"].map(lambda c: c.get("amp") or "fp32"),  # bf16 cells compare among themselves
        direction=cells["config"].map(lambda c: c.get("direction") or UP),
    )  # and each direction
    for _, grp in cells.groupby(
        ["target", "weights_sha256", "defense", "dataset", "split", "seed", "profile", "amp", "direction"]
    ):
        by_attack = {r["attack"]: r for _, r in grp.iterrows()}
        for name, row in by_attack.items():
            # an attack declares the attacks it must match or beat (PGD: FGSM); flag key kept
            # from the first such check (iterative ≥ single-step)
            weaker = [by_attack[w] for w in getattr(ATTACKS.get(name), "at_least_as_strong_as", ()) if w in by_attack]
            for w in weaker:
                gp, gf = row["summary"]["mean_gain"], w["summary"]["mean_gain"]
                if len(gp) == len(gf):
                    scale = max(map(abs, gp + gf)) or 1.0
                    ok = all(p >= f - 0.05 * scale for p, f in zip(gp, gf))
                    store.update_flags(row["key"], {"iterative_ge_single_step": ok})
        white = [r for r in by_attack.values() if r["config"]["attack"]["needs"] == "gradients"]
        black = [r for r in by_attack.values() if r["config"]["attack"]["needs"] == "scores"]
        if white and black:

            def gains(r):  # directed: sign · (score − clean) per item, raw-score sign below
                df = res[r["key"]]
                first = df[np.isclose(df["eps"], df["eps"].iloc[0])].sort_values("item")
                s = item_signs(
                    r["config"].get("direction"),
                    first["mos"].to_numpy(float) if r["config"]["dataset"]["kind"] == "pairs" else None,
                    len(first),
                )
                sign_of = dict(zip(first["item"].to_numpy(), s))
                g = directed_gain(df["clean_score"].to_numpy(), df["score"].to_numpy(), df["item"].map(sign_of))
                return df.assign(g=g).pivot(index="item", columns="eps", values="g")

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
                store.update_flags(
                    r["key"], {"black_box_beats_white_box": frac, "suspect_gradient_masking": frac > 0.1}
                )
