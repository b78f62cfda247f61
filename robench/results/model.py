"""The results model: everything a report shows, computed once from one read of a store.

``ResultsModel.load`` opens the store once (read-only) and keeps its finished cells, per-image
rows, weights provenance, transfer rows and certificates; from them it builds one
:class:`~robench.results.analysis.Analysis` per protocol, the tables, the Theorem-1 evidence, the
records and the report.json document. The writers (Markdown, LaTeX, paper.md, index.html, plots)
only render it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from robench.core import flags as FL
from robench.core.directions import DIRECTIONS
from robench.core.errors import RobenchError
from robench.results import tables as T
from robench.results.analysis import Analysis, cell_stats
from robench.results.cells import CellData, existing_store, read_store
from robench.results.labels import recipe_declares
from robench.results.table import Table


@dataclass(frozen=True)
class ReportOptions:
    """The reporter's choices, recorded in report.json and the captions."""

    eps: float | None = None
    ot: str = "neural"
    n_boot: int = 1000
    seed: int = 0
    cluster: bool = True
    ot_options: dict | None = None
    bootstrap: str = "auto"
    correction: str = "holm"


@dataclass
class ResultsModel:
    store: Path
    cells: list[CellData]
    weights: dict[str, dict]
    raw: pd.DataFrame  # the store's finished cell rows (config, flags, device, versions)
    rows: dict[str, pd.DataFrame]  # per-image rows by cell key
    transfer: list[dict[str, Any]]
    certified: list[dict[str, Any]]
    options: ReportOptions = field(default_factory=ReportOptions)

    @classmethod
    def load(cls, store: str | Path, options: ReportOptions | None = None) -> ResultsModel:
        from robench.engine.store import Store
        from robench.results.transfer import certified_data, transfer_data

        path = existing_store(store)
        opts = options or ReportOptions()
        with Store(path, readonly=True) as st:
            cells, weights, raw, rows = read_store(st)
            transfer = transfer_data(st, n_boot=opts.n_boot, seed=opts.seed)
            certified = certified_data(st)
        return cls(path, cells, weights, raw, rows, transfer, certified, opts)

    @cached_property
    def analyses(self) -> dict[str, Analysis]:
        """One analysis per attack direction (protocol): tables, comparisons and their corrections
        never mix the ranking attack with score inflation."""
        o = self.options
        return {
            d: Analysis(
                [c for c in self.cells if c.direction == d],
                self.weights,
                eps=o.eps,
                ot=o.ot,
                n_boot=o.n_boot,
                seed=o.seed,
                cluster=o.cluster,
                ot_options=o.ot_options,
                bootstrap=o.bootstrap,
                correction=o.correction,
            )
            for d in DIRECTIONS
            if any(c.direction == d for c in self.cells)
        }

    @property
    def primary(self) -> Analysis:
        """The protocol of IR-Score, the plots and the Theorem-1 evidence: score inflation when stored."""
        reps = self.analyses
        if not reps:
            raise RobenchError("the store has no finished cells to report")
        return reps.get("up") or next(iter(reps.values()))

    @cached_property
    def built(self) -> tuple[list[Table], list[str]]:
        """Every table per protocol in report order, then the transfer and certificate tables;
        and the builders that had nothing to show."""
        from robench.results.transfer import certified_table, transfer_tables

        tables, skipped = [], []
        for an in self.analyses.values():
            for build in T.builders(an):
                t = T.named(an, build(an))
                if t is None:
                    skipped.append(build.__name__ + ("" if an.direction == "up" else f"-{an.direction}"))
                else:
                    tables.append(t)
        tables += transfer_tables(self.transfer)
        ct = certified_table(self.certified)
        return tables + ([ct] if ct is not None else []), skipped

    @property
    def tables(self) -> list[Table]:
        return self.built[0]

    @cached_property
    def bounds(self) -> list[dict[str, Any]]:
        return aat_bounds(self.weights)

    def records(self) -> list[dict[str, Any]]:
        from robench.results.records import make_records

        o = self.options
        return make_records(self.store, n_boot=o.n_boot, seed=o.seed, loaded=(self.cells, self.weights, self.raw))

    @cached_property
    def document(self) -> dict[str, Any]:
        """report.json's content as JSON values (what the page shows is exactly what the file holds)."""
        rep, o = self.primary, self.options
        doc = {
            "store": str(self.store),
            "eps": rep.eps,
            "ot": o.ot,
            "n_boot": o.n_boot,
            "seed": o.seed,
            "tables": [t.to_dict() for t in self.tables],
            "aat_bounds": self.bounds,
            "bootstrap": rep.bootstrap,
            "correction": rep.correction,
            "protocols": {d: r.protocol for d, r in self.analyses.items()},
            # one row per comparison (schema: docs/statistics.md), each family corrected within its protocol
            "comparisons": [x for r in self.analyses.values() for x in r.comparisons()],
            "flag_legend": FL.LEGEND,
            "flagged_cells": [
                {
                    "key": c.key,
                    "target": c.target,
                    "defense": c.defense,
                    "attack": c.attack,
                    "direction": c.direction,
                    "flags": c.active_flags,
                    # an attack below its measured strength: the fraction and what measured it
                    **({"strength": c.flags["strength"]} if c.flags.get("below_reference") else {}),
                }
                for c in self.cells
                if c.active_flags
            ],
            "cells": [cell_stats(c) for c in self.cells],
            "transfer": json.loads(json.dumps(self.transfer, default=float)),
            "certified": self.certified,
        }
        return json.loads(json.dumps(doc, default=str))


def aat_bounds(weights: dict[str, dict]) -> list[dict[str, Any]]:
    """Theorem-1 evidence of every AAT weights version whose training recorded it (or whose
    training log, ``steps.json`` in the provenance's ``run`` folder, still exists): batches where
    the bound held and where it was non-vacuous (bound < batch MOS range). Only non-vacuous
    batches are evidence."""
    from robench.results import plots as P

    out = []
    for sha, w in weights.items():
        prov = w["provenance"]
        run = prov.get("run")
        if not recipe_declares(prov.get("recipe"), "logs_bound", False):
            continue
        if prov.get("theorem1"):  # recorded with the weights at training time
            out.append({"weights": w["name"], "sha256": sha, "run": run, **prov["theorem1"]})
        elif run and (Path(run) / "steps.json").is_file():
            out.append({"weights": w["name"], "sha256": sha, "run": run, **P.bound_summary(P.read_steps(run))})
    return out
