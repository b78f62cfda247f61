"""Cell flags a reader must see: one definition, used by the report tables, report.json and
``robench check``.

The runner stores each cell's sanity flags (docs/method.md §4 end: a flag computed
and never shown is a defect). A flag is *active* when it says the cell's number may not measure what
its label says; every table marks the affected value with the flag's code and explains the codes
present in a legend under the table.
"""

from __future__ import annotations

from typing import Any, Callable

#: the scale check's thresholds: clean-score SD ratio to the base model, and clean R²
SCALE_RATIO = 0.5
SCALE_R2 = 0.1

#: an attack whose measured mean move (robench bench attack-strength, per direction) is below this
#: fraction of a converged reference's is a weak attack: its cells carry [nc] and the fraction
STRENGTH_FLOOR = 0.97

#: (code, legend, active?) — order is the order codes are printed in
FLAGS: tuple[tuple[str, str, Callable[[dict[str, Any]], bool]], ...] = (
    (
        "nc",
        "not converged: the full budget's gain exceeds the half budget's by > 5 % of the gain, a run from "
        "another (random) start finds > 5 % more (the better of the two per item), or, for an attack that "
        "declares a plateau probe, a run at m× the budget gains > 5 % more; or the attack's measured strength "
        f"at this profile is below {STRENGTH_FLOOR:g} of a converged reference (robench bench attack-strength; "
        "the number beside it is that fraction)",
        lambda f: bool(f.get("not_converged")) or bool(f.get("below_reference")),
    ),
    (
        "gm",
        "suspect gradient masking: a score-only attack beats every gradient attack on > 10 % of images",
        lambda f: bool(f.get("suspect_gradient_masking")),
    ),
    ("eot", "randomised target attacked without EOT (not a valid result)", lambda f: bool(f.get("eot_required"))),
    ("0", "the attack did not move the target (zero mean gain)", lambda f: f.get("moves_target") is False),
    ("mono", "gain not monotone in ε", lambda f: f.get("gain_monotone_in_eps") is False),
    ("it", "iterative attack gained less than single-step FGSM", lambda f: f.get("iterative_ge_single_step") is False),
    (
        "vac",
        "AAT weights whose Theorem-1 bound was vacuous (≥ the batch MOS range) on more than half of the "
        "training batches: the bound is no evidence for them",
        lambda f: f.get("bound_non_vacuous_fraction") is not None and f["bound_non_vacuous_fraction"] < 0.5,
    ),
    (
        "untr",
        "the defence's fine-tune did not train: its held-out objective never fell by the stopping rule's margin "
        "below its step-0 value, or its collapse guard restored the step-0 weights — the row is its clean model "
        "(plus noise), not a trained defence",
        lambda f: bool(f.get("untrained")),
    ),
    (
        "mask",
        "gradient masking: zero or NaN input gradients at the clean image, so a gradient attack's figure is no "
        "evidence of robustness (the leaderboard ranks such a target by its score-only attacks: Square, "
        "Parsimonious)",
        lambda f: bool(f.get("zero_grad", 0)) or bool(f.get("nan_grad", 0)),
    ),
    # the budget it needed (robench run --escalate): the cell's convergence record holds the ladder
    (
        "esc",
        "the half-budget check flagged the profile's budget, so the attack ran again at 2×, 4×, … its budget "
        "(--escalate) until the rule held or the cap was spent (then [nc] too): the number is the largest "
        "budget's",
        lambda f: bool(f.get("escalated", 0)),
    ),
    # how the cell ran: shown because an attack that draws per batch gives the
    # numbers of the smaller batch, and a re-run is the record of a lost worker
    (
        "oom",
        "ran out of device memory and finished at a smaller batch (the cell's probes say which): an attack "
        "that draws random numbers per batch gives that batch size's numbers",
        lambda f: bool(f.get("oom_halved", 0)),
    ),
    (
        "re",
        "re-run after its worker or node was lost (the stored numbers are the re-run's)",
        lambda f: bool(f.get("retried", 0)),
    ),
    # the scale check (results.report.scale_checks): a defence that shrinks every prediction looks
    # robust in MOS units without being so
    (
        "scale",
        f"scale check failed: the defended model's clean-score SD is < {SCALE_RATIO:g} × its base model's on "
        f"the same items (a collapsed score range: gains in MOS units understate how far an attack moves it; "
        f"see gain/SD), or its clean R² after its calibration is ≤ {SCALE_R2:g} (its scores are off the MOS "
        "scale)",
        lambda f: bool((f.get("scale") or {}).get("collapsed")),
    ),
)
LEGEND = {code: text for code, text, _ in FLAGS}


def fine_tune_untrained(provenance: dict[str, Any] | None) -> bool:
    """Whether recipe weights' provenance says the fine-tune did not train ([untr]): the collapse
    guard kept the step-0 weights, or the best held-out EMA is not ``min_delta`` (relative) below
    the step-0 one. False where the provenance predates these records."""
    p = provenance or {}
    if ((p.get("scale_guard") or {}).get("collapsed") or {}).get("kept_step") == 0:
        return True
    start, best, tol = p.get("heldout_start"), p.get("best_heldout_ema"), p.get("min_delta")
    return None not in (start, best, tol) and best > start * (1 - tol)


def active(flags: dict[str, Any] | None) -> list[str]:
    """Codes of the active flags of one cell, in :data:`FLAGS` order."""
    f = flags or {}
    return [code for code, _, test in FLAGS if test(f)]


def labels(flags: dict[str, Any] | None) -> list[str]:
    """What a table shows for one cell's flags: the active codes, and beside ``nc`` the attack's
    measured strength when that is what flags it (``nc 0.93``: 0.93 of a converged reference)."""
    f = flags or {}
    out = active(f)
    frac = (f.get("strength") or {}).get("fraction")
    if "nc" in out and f.get("below_reference") and frac is not None:
        out[out.index("nc")] = f"nc {float(frac):.2f}"
    return out


def code_of(label: str) -> str:
    """The code of a shown label (``nc 0.93`` → ``nc``)."""
    return label.split(" ", 1)[0]


_RANK = {code: i for i, (code, _, _) in enumerate(FLAGS)}


def ordered(shown) -> list[str]:
    """Labels of one or more cells (a value may rest on several), in :data:`FLAGS` order."""
    return sorted(set(shown), key=lambda x: (_RANK[code_of(x)], x))


def legend(codes) -> str:
    """One sentence explaining the given codes or labels (empty when none)."""
    used = [c for c, _, _ in FLAGS if c in {code_of(x) for x in codes}]
    if not used:
        return ""
    return "Flags: " + "; ".join(f"[{c}] {LEGEND[c]}" for c in used) + "."
