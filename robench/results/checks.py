"""``robench check``: a CI regression gate on a store against a committed baseline.

A cell is matched to the baseline by what it measures — target (with its variant tag), defence,
attack, dataset, split, kind, profile, seed and item count — not by its weights digest, so a
retrained or changed model is compared with the numbers it has to keep. For the clean metric and
each ε both hold, the gate fails only when the metric (SROCC, or 2AFC accuracy) drops by more
than the tolerance **and**, where both sides carry per-image rows for the same items, the paired
bootstrap of the difference says the drop is significant (95 % CI below 0). A cell without a
baseline is reported as new and passes; a baseline cell that failed in the store, or is missing
from it, fails the gate (``allow_missing`` accepts missing cells when checking a subset).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from robench.core.errors import RobenchError
from robench.results.cells import CellData, load_cells, load_store
from robench.core.stats import bootstrap_units, mean_weighted, paired_bootstrap, srocc_weighted

from robench.results.entries import (
    BASELINE_FORMAT,
    _identity,
    _values,
    cell_entry,
    identity,  # noqa: F401
    latest,
)


def failed_identities(allc) -> dict[str, str]:
    """Cells whose latest record in the store is a failure (identity → error; ``allc``: every
    cell row, by finish time): a baseline cell that now fails must fail the gate, not pass as
    'missing'."""
    latest: dict[str, tuple[str, str]] = {}
    for _, c in allc.iterrows():  # ordered by finish time
        cfg = c["config"]
        d = cfg["dataset"]
        ident = _identity(
            cfg["target"]["name"],
            cfg["defense"]["name"],
            cfg["attack"]["name"],
            d["name"],
            d["split"],
            d["kind"],
            cfg["profile"],
            cfg["seed"],
            d["n"],
            cfg.get("direction"),
        )
        latest[ident] = (c["status"], c["error"] or "")
    return {k: err for k, (status, err) in latest.items() if status == "failed"}


def make_baseline(store: str | Path) -> dict[str, Any]:
    cells, _ = load_cells(store)
    if not cells:
        raise RobenchError(f"{store} has no finished cells to make a baseline from")
    from robench.core.version import __version__
    from robench.core.provenance import git_commit

    return {
        "format": BASELINE_FORMAT,
        "robench": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "store": str(store),
        "cells": {k: cell_entry(c) for k, c in sorted(latest(cells).items())},
    }


def write_baseline(baseline: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a crash leaves the old baseline, never half a file


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline file (``check --update``), or records (``robench export --format records``: a
    folder of record files, one record file, or a list of records)."""
    from robench.results.records import RECORD_FORMAT, baseline_from_records

    p = Path(path)
    if p.is_dir():
        return baseline_from_records(p)
    if p.is_file():
        try:
            head = json.loads(p.read_text())
        except json.JSONDecodeError:
            head = None
        first = head[0] if isinstance(head, list) and head else head
        if isinstance(first, dict) and first.get("format") == RECORD_FORMAT:
            return baseline_from_records(p)
    if not p.is_file():
        raise RobenchError(
            f"no baseline at {p} (create one with `robench check --store STORE --baseline {p} --update`)"
        )
    try:
        data = json.loads(p.read_text())
        if data.get("format") != BASELINE_FORMAT or not isinstance(data.get("cells"), dict):
            raise ValueError(f"format {data.get('format')!r}, expected {BASELINE_FORMAT}")
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise RobenchError(f"{p} is not a robench baseline ({exc})") from None
    return data


def _paired(cur: CellData, base: dict[str, Any], key: str, q: np.ndarray, n_boot: int, seed: int) -> dict | None:
    """Bootstrap Δ = current − baseline on the items both hold (None when not pairable)."""
    vals = base["values"].get(key)
    if vals is None:
        return None
    pos = {item: i for i, item in enumerate(base["items"])}
    ic = np.array([i for i, item in enumerate(cur.item_ids) if item in pos], dtype=int)
    if len(ic) < 3:
        return None
    ib = np.array([pos[cur.item_ids[i]] for i in ic], dtype=int)
    cur_vals, base_vals = _values(cur, q)[ic], np.asarray(vals, dtype=float)[ib]
    # the independent unit is the source photo (crops of one photo share a reference each but are
    # not independent); under 10 photos the item bootstrap, labelled — as the report does
    clusters, units = bootstrap_units("auto", None if cur.sources is None else cur.sources[ic])
    if cur.kind == "pairs":
        mos = cur.mos[ic]
        if base.get("mos") is None or not np.allclose(np.asarray(base["mos"], dtype=float)[ib], mos, atol=1e-5):
            return None  # the labels changed: the items are not the same measurement
        out = paired_bootstrap(
            cur_vals, base_vals, mos, stat=srocc_weighted, n_resamples=n_boot, seed=seed, clusters=clusters
        )
    else:
        out = paired_bootstrap(
            cur_vals, base_vals, stat=mean_weighted, n_resamples=n_boot, seed=seed, clusters=clusters
        )
    return {**out, "units": units}


def _point_row(ident, c, b, key, e, old, new, codes, tolerance: float, n_boot: int, seed: int) -> dict[str, Any]:
    """One metric point of a cell against the baseline: ok, a significant drop (fail), or a drop
    the paired bootstrap cannot tell from noise."""
    row = {
        "cell": ident,
        "point": key,
        "metric": c.metric_name,
        "baseline": old,
        "current": new,
        "flags": codes,
    }
    if old is None or new is None or not (np.isfinite(old) and np.isfinite(new)):
        row.update(
            status="fail" if (old is not None and np.isfinite(old)) else "ok",
            delta=None,
            reason="metric is NaN now" if (old is not None and np.isfinite(old)) else "NaN in both",
        )
        return row
    delta = new - old
    row["delta"] = delta
    if -delta <= tolerance:
        row["status"] = "ok"
    else:
        boot = _paired(c, b, key, c.q_at(e), n_boot, seed)
        if boot is None:
            row.update(status="fail", reason=f"drop {-delta:.3f} > tolerance {tolerance} (no per-image pairing)")
        else:
            row["ci"], row["units"] = boot["ci"], boot["units"]
            sig = boot["ci"][1] < 0
            row.update(
                status="fail" if sig else "drop-not-significant",
                reason=(
                    f"drop {-delta:.3f} > tolerance {tolerance}, 95 % CI of Δ "
                    f"[{boot['ci'][0]:+.3f}, {boot['ci'][1]:+.3f}]"
                    + (" excludes 0" if sig else " includes 0")
                    + f"; {boot['units']}"
                ),
            )
    return row


def check(
    store: str | Path,
    baseline_path: str | Path,
    tolerance: float = 0.02,
    n_boot: int = 1000,
    seed: int = 0,
    allow_missing: bool = False,
    fail_on: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``fail_on``: flag codes (robench.core.flags) that fail a cell; every active flag is reported."""
    from robench.core import flags as FL

    unknown = [f for f in fail_on if f not in FL.LEGEND]
    if unknown:
        raise RobenchError(f"unknown flag {unknown[0]!r} for --fail-on-flag (flags: {', '.join(FL.LEGEND)})")
    if not tolerance >= 0:
        raise RobenchError(f"--tolerance must be ≥ 0, got {tolerance}")
    baseline = read_baseline(baseline_path)
    cells, _, allc = load_store(store, status=None)  # failed cells too: one read
    current = latest(cells)
    failed_now = failed_identities(allc)
    rows: list[dict[str, Any]] = []
    for ident, error in sorted(failed_now.items()):
        current.pop(ident, None)  # an older finished record must not stand in for a failed rerun
        rows.append({"cell": ident, "status": "fail", "point": "—", "reason": f"the cell failed: {error[:200]}"})
    flagged = []
    for ident, c in current.items():
        codes = c.active_flags
        if codes:
            flagged.append({"cell": ident, "flags": FL.labels(c.flags)})  # shown with the strength fraction
            bad = [f for f in codes if f in fail_on]
            if bad:
                reason = "flagged " + ", ".join(f"[{f}] {FL.LEGEND[f]}" for f in bad)
                rows.append({"cell": ident, "status": "fail", "point": "flags", "flags": codes, "reason": reason})
        b = baseline["cells"].get(ident)
        if b is None:
            rows.append({"cell": ident, "status": "new", "point": "—", "flags": codes})
            continue
        points = [("clean", None, b["clean"], c.clean_metric())]
        for k, e in enumerate(b["eps"]):
            if c.eps_index(e) is not None:
                points.append((f"{e:g}", e, b["attacked"][k], c.metric(e)))
        rows += [
            _point_row(ident, c, b, key, e, old, new, codes, tolerance, n_boot, seed) for key, e, old, new in points
        ]
    for ident in sorted(set(baseline["cells"]) - set(current) - set(failed_now)):
        # a baseline cell the store lacks fails the gate (a shrunken suite, a changed --n) unless
        # the caller checks a subset on purpose
        reason = "in the baseline, not in the store" + ("" if allow_missing else " (--allow-missing to accept)")
        rows.append({"cell": ident, "status": "missing" if allow_missing else "fail", "point": "—", "reason": reason})
    failed = [r for r in rows if r["status"] == "fail"]
    return {
        "store": str(store),
        "baseline": str(baseline_path),
        "tolerance": tolerance,
        "n_boot": n_boot,
        "passed": not failed,
        "failed": len(failed),
        "counts": {
            s: sum(r["status"] == s for r in rows) for s in ("ok", "fail", "drop-not-significant", "new", "missing")
        },
        "flagged": flagged,
        "flag_legend": {f: FL.LEGEND[f] for f in sorted({FL.code_of(x) for r in flagged for x in r["flags"]})},
        "fail_on": list(fail_on),
        "rows": rows,
    }
