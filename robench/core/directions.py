"""Attack directions: which way each item's oriented quality ``q`` is pushed (part of the threat
model, keyed with every cell).

* ``up`` — score inflation: raise ``q`` of every item (robench's gains and IR-Score; the
  reference gain script of the AT- authors, test_kadid_gain.py, raises every image).
* ``down`` — score deflation: lower ``q`` of every item.
* ``mos-split`` — the ranking attack of the AT- authors' KADID-10k evaluation
  (wianluna/metrics_at, test_kadid.py: ``direction = (mos > mean_mos) * -2 + 1``): items whose MOS
  is above the mean MOS of the evaluated items are pushed **down**, the others **up**, then SROCC
  is taken against MOS. This is the protocol behind the paper's SROCC-under-attack columns; it
  reorders scores where ``up`` mostly shifts them together.

A direction is data: a per-item sign ``s_i ∈ {+1, −1}`` computed from the items' labels. The
attack harness hands attacks the objective ``s_i · q_i`` (:class:`robench.core.target.BoundTarget`
``sign``), so every attack supports every direction without code of its own; the harness's
invariants (budget, never ending against the item's direction, the convergence rule on the
*directed* gain ``s_i · (q_adv − q_clean)``) hold per item.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from robench.core.errors import RobenchError, UnknownNameError


@dataclass(frozen=True)
class Direction:
    name: str
    protocol: str  # what tables and JSON call it
    summary: str
    needs_mos: bool
    rule: Callable[[np.ndarray | None, int], tuple[np.ndarray, dict[str, Any]]]

    def signs(self, mos: Any, n: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-item signs (float ±1, length ``n``) and what the cell records about them."""
        m = None if mos is None else np.asarray(mos, dtype=float)
        if self.needs_mos and (m is None or len(m) != n or not np.isfinite(m).all()):
            raise RobenchError(
                f"direction {self.name!r} needs a MOS for every item (a pairs dataset); "
                "use --direction up or down on 2AFC data"
            )
        s, info = self.rule(m, n)
        return s.astype(float), {
            "name": self.name,
            "protocol": self.protocol,
            **info,
            "n_up": int((s > 0).sum()),
            "n_down": int((s < 0).sum()),
        }


def _mos_split(mos: np.ndarray, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    threshold = float(mos.mean())  # of the evaluated items, as the reference code's mean over its test set
    return np.where(mos > threshold, -1.0, 1.0), {"threshold": threshold}


DIRECTIONS: dict[str, Direction] = {
    d.name: d
    for d in (
        Direction("up", "score inflation (up)", "raise q of every item", False, lambda m, n: (np.ones(n), {})),
        Direction("down", "score deflation (down)", "lower q of every item", False, lambda m, n: (-np.ones(n), {})),
        Direction(
            "mos-split",
            "ranking attack (mos-split)",
            "items with MOS above the evaluated items' mean pushed down, the rest up (the AT- authors' KADID-10k "
            "protocol)",
            True,
            _mos_split,
        ),
    )
}
DEFAULT = "up"
#: what a run measures when no direction is given (the main job): score inflation for gains and
#: IR-Score, and the ranking attack for SROCC under attack — the protocol of the paper's headline.
#: Data without a MOS (2AFC) cannot take the ranking attack and runs ``up`` alone.
RUN_DEFAULT = ("up", "mos-split")


def run_default(kind: str) -> list[str]:
    """The directions of a run that names none, for items of ``kind`` (pairs | 2afc)."""
    return [d for d in RUN_DEFAULT if kind == "pairs" or not DIRECTIONS[d].needs_mos]


def get_direction(name: str) -> Direction:
    if name not in DIRECTIONS:
        close = difflib.get_close_matches(str(name), list(DIRECTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown attack direction {name!r}{hint} (directions: {', '.join(DIRECTIONS)})")
    return DIRECTIONS[name]


def parse_directions(v: Any, where: str = "--direction") -> list[str]:
    """``"up,mos-split"`` / ``["mos-split"]`` → the directions in declaration order, unique."""
    items = v.split(",") if isinstance(v, str) else list(v or [])
    names = [str(x).strip() for x in items if str(x).strip()]
    if not names:
        raise RobenchError(f"{where}: give at least one direction ({', '.join(DIRECTIONS)})")
    for n in names:
        get_direction(n)
    return [d for d in DIRECTIONS if d in names]


def protocol_of(name: str | None) -> str:
    return get_direction(name or DEFAULT).protocol


def item_signs(direction: str | None, mos: Any, n: int) -> np.ndarray:
    """The signs of a stored cell's items (recomputed from its rows' MOS: the same items give the
    same threshold)."""
    return get_direction(direction or DEFAULT).signs(mos, n)[0]


def directed_gain(q_clean, q_adv, signs=None):
    """The one directed gain: ``sign · (q_adv − q_clean)`` per item, in oriented quality (a
    leading ε axis of ``q_adv`` broadcasts). ≥ 0 for every item the harness kept; ``signs``
    None is the ``up`` direction. The dtype of the inputs is kept (no silent float64 cast)."""
    q_clean, q_adv = np.asarray(q_clean), np.asarray(q_adv)
    return (1.0 if signs is None else np.asarray(signs)) * (q_adv - q_clean)
