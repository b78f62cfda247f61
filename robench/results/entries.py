"""What identifies an evaluation across stores and what a baseline keeps of it: shared by
``robench check`` (results.checks) and the exported records (results.records)."""

from __future__ import annotations

from typing import Any

import numpy as np

from robench.results.cells import CellData

BASELINE_FORMAT = 1


def identity(c: CellData) -> str:
    return _identity(c.target, c.defense, c.attack, c.dataset, c.split, c.kind, c.profile, c.seed, c.n, c.direction)


def _identity(target, defense, attack, dataset, split, kind, profile, seed, n, direction=None) -> str:
    # the attack direction (the protocol) only when it is not the default ``up``: baselines written
    # before directions existed keep matching their cells
    return "|".join(
        [target, defense, attack, dataset, split, kind, profile, f"seed={seed}", f"n={n}"]
        + ([f"direction={direction}"] if direction and direction != "up" else [])
    )


def _values(c: CellData, q: np.ndarray) -> np.ndarray:
    """What the bootstrap resamples: oriented quality (pairs, vs MOS) or per-triplet 2AFC scores."""
    return q if c.kind == "pairs" else c.item_values(q)


def cell_entry(c: CellData) -> dict[str, Any]:
    r6 = lambda a: [round(float(v), 6) for v in a]  # noqa: E731  (bytes, not precision, are the limit)
    return {
        "metric": c.metric_name,
        "kind": c.kind,
        "eps": c.eps,
        "weights_sha256": c.weights_sha,
        "direction": c.direction,
        "protocol": c.protocol,
        "clean": c.clean_metric(),
        "attacked": [c.metric(e) for e in c.eps],
        "items": [str(i) for i in c.item_ids],
        "ref_ids": [str(i) for i in c.ref_ids],
        "mos": r6(c.mos) if c.kind == "pairs" else None,
        "values": {
            "clean": r6(_values(c, c.q_clean)),
            **{f"{e:g}": r6(_values(c, c.q_adv[k])) for k, e in enumerate(c.eps)},
        },
    }


def latest(cells: list[CellData]) -> dict[str, CellData]:
    out: dict[str, CellData] = {}
    for c in cells:  # load_cells orders by finish time: the last one wins
        out[identity(c)] = c
    return out
