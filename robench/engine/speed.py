"""Speed options of a run: ``--amp bf16`` (every evaluation of the target — scoring,
the attacks' steps and their gradients — under bf16 autocast) and ``--compile``
(``torch.compile`` of the target's score functions), and the agreement check a run passes
before it uses them.

Keys [choice]: ``amp`` enters a cell's key (its config's ``"amp"``, absent for float32 so every
stored cell keeps its key): bf16 keeps 8 bits of mantissa, so scores, gradients and the attack's
path differ — a bf16 cell is a different measurement, stored beside the float32 one, never
instead of it. ``compile`` does not: it promises eager's arithmetic up to the order of float
sums, the same class of difference as CPU vs GPU, which robench records and does not key
(robench.core.device); it is recorded with each cell (its device record's ``"speed"``) and the
check below bounds the difference.

The check [choice: refuse]: before any cell, :func:`check_speed` scores a small batch of the
run's items and runs the iterative gradient attack (the one ``robench bench attack-strength``
measures) for a few steps, once in float32 eager and once with the options, and compares clean
scores and mean attack gains. Beyond the tolerance the run is refused (RobenchError: exit 2,
one line): a target whose bf16 numbers disagree would silently store another metric's results,
and the remedy (run without the option) costs only time.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from robench.core.errors import RobenchError
from robench.core.target import Target, check_amp, set_speed, speed_of

#: items of the check batch (the run's first items) and the attack's budget there: every budget
#: parameter (steps, queries) set to this — a few steps follow the attack's path, where a
#: precision change shows, without the cost of converging
CHECK_N = 8
CHECK_BUDGET = 5

# Tolerances, as fractions of the check batch's score spread (attacks.base.observed_scale: the
# standard deviation of the float32 clean oriented scores): the unit in which a score error can
# reorder items or change a reported gain, the same for every metric whatever its range.
#: a per-item error of at most e·spread keeps the correlation with the float32 scores ≥
#: 1/√(1 + e²): 0.99955 at 3 %, under half the last digit of the SROCC the report prints (3
#: decimals). Measured with random-init weights (README): PSNR 0 (no autocast op), LPIPS-Alex
#: 0.8–1.8 %, LPIPS-VGG 2.1 % pass; SSIM and MS-SSIM (variances are differences of bf16 means:
#: ~160 % and ~100 %) and BiRQA (its score, ~35× the spread of an untrained head, rounds to
#: bf16's step) are refused
AMP_SCORE_TOL = 0.03
#: mean gains (the path follows the bf16 gradient's signs): 5 % of the spread is ≤ 5 % of every
#: gain of at least one spread (the gains the report compares), the convergence rule's 5 %
#: (engine.cell.CONVERGENCE_TOL)
AMP_GAIN_TOL = 0.05
#: compiled float32 differs from eager by the order of float sums (measured: 5e-7 of the spread
#: for PSNR, 1e-6 for LPIPS-Alex): 1e-4 is far above that and far below what a result shows
COMPILE_SCORE_TOL = 1e-4
#: a sign-gradient step flips where a gradient component is ~0, so the path may move a little
COMPILE_GAIN_TOL = 1e-3


def tolerances(amp: str | None, compile: bool) -> tuple[float, float]:
    """(score, gain) tolerances of a setting, as fractions of the score spread (bf16's when amp)."""
    if amp is not None:
        return AMP_SCORE_TOL, AMP_GAIN_TOL
    return (COMPILE_SCORE_TOL, COMPILE_GAIN_TOL) if compile else (0.0, 0.0)


def check_attack(profile: str = "quick", seed: int = 0):
    """The check's attack: the registered iterative gradient attack whose convergence curve
    ``bench attack-strength`` measures, with every budget parameter at :data:`CHECK_BUDGET`."""
    from robench.core.registry import ATTACKS

    cls = next(ATTACKS.get(a) for a in ATTACKS.names() if getattr(ATTACKS.get(a), "convergence_curve", False))
    probe = cls(profile=profile, seed=seed)
    small = {k: CHECK_BUDGET for k in cls.budget_params if isinstance(probe.params.get(k), int)}
    return cls(profile=profile, seed=seed, **small)


def _measure(
    target: Target, dist: torch.Tensor, ref: torch.Tensor, eps: list[float], attack, seed: int
) -> dict[str, Any]:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a randomised defence draws the same numbers in both settings
        clean = target(dist.to(target.device), ref.to(target.device)).float().cpu()
    gains = None
    if attack is not None:
        res = attack(target, dist, ref, eps=eps, return_images=False)
        q0, q = res.oriented(target.lower_better)
        gains = [float((q[k] - q0).mean()) for k in range(len(eps))]
    return {"clean": clean, "gains": gains}


def agreement(
    target: Target,
    dist: torch.Tensor,
    ref: torch.Tensor,
    eps: list[float],
    amp: str | None = None,
    compile: bool = False,
    profile: str = "quick",
    seed: int = 0,
) -> dict[str, Any]:
    """Clean scores and the check attack's mean gains (``eps`` in [0, 1] units) of ``target``
    on ``dist``/``ref`` in float32 eager and with the options; the max abs differences against
    the tolerances (raw score units: tolerance × spread). Leaves the target with the options set."""
    from robench.attacks import observed_scale

    amp = check_amp(amp)
    t0 = time.perf_counter()
    was = speed_of(target)
    attack = check_attack(profile, seed) if getattr(target, "differentiable", True) else None
    try:
        base = _measure(set_speed(target, None, False), dist, ref, eps, attack, seed)
        fast = _measure(set_speed(target, amp, compile), dist, ref, eps, attack, seed)
    except BaseException:
        set_speed(target, was["amp"], was["compile"])
        raise
    spread = observed_scale(target.orient(base["clean"]), target)
    score_tol, gain_tol = tolerances(amp, compile)
    d_score = float((fast["clean"] - base["clean"]).abs().max())
    d_gain = max(abs(a - b) for a, b in zip(fast["gains"], base["gains"])) if attack is not None else None
    ok = d_score <= score_tol * spread and (d_gain is None or d_gain <= gain_tol * spread)
    return {
        "amp": amp,
        "compile": bool(compile),
        "n": int(dist.shape[0]),
        "spread": spread,
        "score_max_abs_diff": d_score,
        "score_tol": score_tol * spread,
        "gain_max_abs_diff": d_gain,
        "gain_tol": gain_tol * spread,
        "gains_fp32": base["gains"],
        "gains": fast["gains"],
        "attack": None if attack is None else repr(attack),
        "ok": bool(ok),
        "seconds": time.perf_counter() - t0,
    }


def check_speed(
    target: Target,
    dist: torch.Tensor,
    ref: torch.Tensor,
    eps: list[float],
    amp: str | None,
    compile: bool,
    profile: str = "quick",
    seed: int = 0,
) -> dict[str, Any] | None:
    """Set the options on ``target`` after :func:`agreement` on the first :data:`CHECK_N` items;
    a RobenchError (one line) when they disagree beyond tolerance. None (and nothing run) for
    float32 eager."""
    amp = check_amp(amp)
    if amp is None and not compile:
        set_speed(target, None, False)
        return None
    m = min(CHECK_N, dist.shape[0])
    rec = agreement(target, dist[0:m], ref[0:m], eps, amp, compile, profile, seed)
    if not rec["ok"]:
        set_speed(target, None, False)
        what = " ".join(([f"--amp {amp}"] if amp else []) + (["--compile"] if compile else []))
        gain = (
            ""
            if rec["gain_max_abs_diff"] is None
            else f", mean attack gains by {rec['gain_max_abs_diff']:.3g} (tolerance {rec['gain_tol']:.3g})"
        )
        raise RobenchError(
            f"{what} disagrees with float32 eager on {target.card.name} ({m} items): clean scores "
            f"differ by up to {rec['score_max_abs_diff']:.3g} (tolerance {rec['score_tol']:.3g}){gain}; "
            f"run it without {what}"
        )
    return rec
