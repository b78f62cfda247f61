"""``robench export --format records``: one JSON record per target × defence (a model card in the
manner of RobustBench's per-model JSON): the weights and their training provenance, the clean and
robust metrics of every stored evaluation (attack, ε, protocol) with photo-bootstrap intervals, the
cells' flags, and robench's version and commit. Each record validates against the JSON Schema
shipped as ``robench/results/record.schema.json``.

A record keeps each evaluation's per-item values (oriented quality, or 2AFC scores) and labels, so
``robench check --baseline RECORDS`` pairs a store with it exactly as with a baseline file."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from robench.core import flags as FL
from robench.core.errors import RobenchError

RECORD_FORMAT = "robench-record/1"
N_BOOT = 1000


def schema() -> dict[str, Any]:
    return json.loads(resources.files("robench.results").joinpath("record.schema.json").read_text())


def _ci(c, q: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    """95 % photo-bootstrap interval (item bootstrap under 10 photos, as the report) of the metric."""
    from robench.core.stats import bootstrap_ci, bootstrap_units, mean_weighted, srocc_weighted

    clusters, _ = bootstrap_units("auto", c.sources)
    try:
        if c.kind == "pairs":
            lo, hi = bootstrap_ci(q, c.mos, stat=srocc_weighted, n_resamples=n_boot, seed=seed, clusters=clusters)
        else:
            lo, hi = bootstrap_ci(
                c.item_values(q), stat=mean_weighted, n_resamples=n_boot, seed=seed, clusters=clusters
            )
    except (ValueError, IndexError):
        return None
    return [float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None


def _units(c) -> str:
    from robench.core.stats import bootstrap_units

    return bootstrap_units("auto", c.sources)[1]


def _evaluation(ident: str, c, r, n_boot: int, seed: int) -> dict[str, Any]:
    """One cell of a record: what was attacked how, the metric clean and per ε with its interval,
    flags and provenance (``r``: the cell's store row)."""
    from robench.results.entries import cell_entry

    entry = cell_entry(c)
    return {
        "identity": ident,
        "cell_key": c.key,
        "attack": c.attack,
        "attack_params": c.attack_params,
        "needs": c.needs,
        "direction": c.direction,
        "protocol": c.protocol,
        "dataset": {
            "name": c.dataset,
            "split": c.split,
            "kind": c.kind,
            "n": c.n,
            "photos": int(len(np.unique(c.sources))) if c.sources is not None else None,
        },
        "profile": c.profile,
        "seed": c.seed,
        "metric": c.metric_name,
        "clean": {"value": entry["clean"], "ci": _ci(c, c.q_clean, n_boot, seed)},
        "attacked": [
            {
                "eps": float(e),
                "units": "/255",
                "value": entry["attacked"][k],
                "ci": _ci(c, c.q_adv[k], n_boot, seed),
            }
            for k, e in enumerate(c.eps)
        ],
        "interval": f"95 % {_units(c)}",
        "flags": c.active_flags,
        "flag_details": c.flags,
        "versions": r["versions"] or {},
        "git_commit": r["git_commit"],
        "device": r["device"] or {},
        # what `robench check` pairs on: per-item values and labels
        "baseline": entry,
    }


def make_records(
    store: str | Path, n_boot: int = N_BOOT, seed: int = 0, loaded: tuple | None = None
) -> list[dict[str, Any]]:
    """``loaded``: ``(cells, weights, raw cells frame)`` already read from ``store`` (the report
    reads the store once and hands them on); None reads them here."""
    from robench.results.entries import latest

    if loaded is None:
        from robench.results.cells import load_store

        cells, weights, raw = load_store(store)
    else:
        cells, weights, raw = loaded
    if not cells:
        raise RobenchError(f"{store} has no finished cells to export")
    raw = raw.set_index("key")
    rows: dict[tuple, list] = {}
    for ident, c in latest(cells).items():
        rows.setdefault((c.target, c.defense, c.train_seed), []).append((ident, c))
    out = []
    for (target, defense, train_seed), entries in rows.items():
        first = entries[0][1]
        w = weights.get(first.weights_sha, {})
        evals, flags = [], set()
        for ident, c in sorted(entries, key=lambda t: t[0]):
            evals.append(_evaluation(ident, c, raw.loc[c.key], n_boot, seed))
            flags |= set(c.active_flags)
        from robench.core.version import __version__
        from robench.core.provenance import git_commit

        out.append(
            {
                "format": RECORD_FORMAT,
                "model": {
                    "target": target,
                    "arch": first.arch,
                    "weights_sha256": first.weights_sha,
                    "weights_source": w.get("source") or ("none" if not first.weights_sha else "unknown"),
                    "provenance": w.get("provenance") or {},
                },
                "defense": {
                    "name": defense,
                    "training": first.training,
                    "inference": list(first.inference),
                    "train_seed": train_seed,
                },
                "evaluations": evals,
                "flags": sorted(flags),
                "flag_legend": {f: FL.LEGEND[f] for f in sorted(flags)},
                "unreliable": bool(flags),
                "robench": {"version": __version__, "git_commit": git_commit()},
            }
        )
    return out


def record_name(rec: dict[str, Any]) -> str:
    seed = rec["defense"].get("train_seed") or 0
    base = f"{rec['model']['target']}__{rec['defense']['name']}" + (f"__s{seed}" if seed else "")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", base) + ".json"


def validate(rec: dict[str, Any]) -> None:
    """Raise RobenchError when ``rec`` does not follow the shipped schema (jsonschema)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a test dependency
        raise RobenchError("validating records needs jsonschema: pip install jsonschema") from None
    try:
        jsonschema.validate(rec, schema())
    except jsonschema.ValidationError as exc:
        raise RobenchError(f"record {record_name(rec)} does not follow record.schema.json: {exc.message}") from None


def write_records(store: str | Path, out: str | Path, n_boot: int = N_BOOT, seed: int = 0) -> list[str]:
    """Write every record into ``out`` (files named target__defence.json). A folder holding other
    files than robench records is refused; each file is written atomically."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RobenchError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        for p in out.iterdir():
            if p.suffix != ".json" or not _is_record(p):
                raise RobenchError(
                    f"--out {out} holds {p.name}, which is not a robench record: give a new or empty "
                    "folder, or one of earlier records"
                )
    recs = make_records(store, n_boot=n_boot, seed=seed)
    for r in recs:
        validate(r)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for r in recs:
        path = out / record_name(r)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(r, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        names.append(str(path))
    return names


def _is_record(p: Path) -> bool:
    try:
        return json.loads(p.read_text()).get("format") == RECORD_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a folder of record files, one record file, or a JSON list of records."""
    p = Path(path)
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    recs = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RobenchError(f"{f} is not a readable JSON record ({exc})") from None
        for r in data if isinstance(data, list) else [data]:
            if not isinstance(r, dict) or r.get("format") != RECORD_FORMAT:
                raise RobenchError(f"{f} is not a robench record (format {RECORD_FORMAT})")
            recs.append(r)
    if not recs:
        raise RobenchError(f"no robench records in {p}")
    return recs


def baseline_from_records(path: str | Path) -> dict[str, Any]:
    """A ``robench check`` baseline from records: every evaluation's identity → its entry."""
    from robench.results.entries import BASELINE_FORMAT

    recs = read_records(path)
    for r in recs:
        validate(r)
    cells = {e["identity"]: e["baseline"] for r in recs for e in r["evaluations"]}
    return {
        "format": BASELINE_FORMAT,
        "robench": recs[0]["robench"]["version"],
        "git_commit": recs[0]["robench"]["git_commit"],
        "store": f"records: {path}",
        "cells": cells,
    }
