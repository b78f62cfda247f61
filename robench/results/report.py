"""``robench report``: tables (LaTeX + Markdown) and plots from a store alone.

Nothing is recomputed: every number comes from the per-image rows the runner stored (clean and
attacked raw scores, MOS or 2AFC judgements) and the weights provenance stored beside them.
Tables (paper shapes): robustness (Table 3), 2AFC (Table 7), purification (Table 9), an ε sweep,
and the paired-bootstrap significance of ΔSROCC / Δaccuracy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from robench.core import flags as FL
from robench.core.directions import DIRECTIONS, get_direction
from robench.core.errors import RobenchError
from robench.results.latex import latex_escape as _latex_escape  # noqa: F401
from robench.results.labels import BASE, attack_order, defense_label, defense_order, recipe_declares, recipes  # noqa: F401
from robench.core.stats import (
    benjamini_hochberg,
    bootstrap_units,
    holm,
    correlations,
    mean_weighted,
    msu_scores,
    paired_bootstrap,
    seeded_paired_bootstrap,
)
from robench.results.table import MARK_MD, MARK_TEX, Table, _fmt, _strings  # noqa: F401  (shared with results.html/transfer)
from robench.results.transport import MapCache, ir_interval, ir_score


from robench.results.cells import CellData, _arch, load_cells, scale_checks  # noqa: E402,F401  (re-exported)


CORRECTIONS = ("holm", "bh")


class Reporter:
    """Builds every table from a list of cells; options are the reporter's, recorded in captions."""

    def __init__(
        self,
        cells: list[CellData],
        weights: dict[str, dict],
        *,
        eps: float | None = None,
        ot: str = "neural",
        n_boot: int = 1000,
        seed: int = 0,
        cluster: bool = True,
        ot_options: dict | None = None,
        bootstrap: str = "auto",
        correction: str = "holm",
    ):
        if not cells:
            raise RobenchError("the store has no finished cells to report")
        dirs = {c.direction for c in cells}
        if len(dirs) > 1:  # one protocol per reporter: write_report builds one for each
            raise RobenchError(f"a Reporter takes the cells of one attack direction, got {sorted(dirs)}")
        self.direction = dirs.pop()
        self.protocol = cells[0].protocol
        # one weights version per row: after a retrain where only some attacks were rerun, a row
        # must not mix cells of old and new weights (the latest cell's weights win)
        # (per training seed: each seed of a recipe is its own weights version)
        latest = {(c.row, c.train_seed): c.weights_sha for c in cells}
        self.cells, self.weights = [c for c in cells if c.weights_sha == latest[(c.row, c.train_seed)]], weights
        settings = {c.row[2:] for c in self.cells}
        self.multi_setting = len(settings) > 1  # then every row label names its setting
        all_eps = sorted({e for c in cells for e in c.eps})
        self.all_eps = all_eps  # every budget of the store (paper.md evaluates its claims at each)
        self.eps = eps if eps is not None else (8.0 if 8.0 in all_eps else all_eps[-1])
        self.maps = MapCache(ot, seed, **(ot_options or {}))
        self.ot, self.n_boot, self.seed, self.cluster = ot, n_boot, seed, cluster
        # resampling unit (stats.bootstrap_units): the source photo when a comparison has ≥ 10,
        # else the item, labelled; cluster=False (--no-cluster) is the item bootstrap
        self.bootstrap = bootstrap if cluster else "item"
        if correction not in CORRECTIONS:
            raise RobenchError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
        self.correction = correction
        self._compared: dict[tuple, dict | None] = {}
        self._ir: dict[tuple, dict] = {}
        self._family: list[dict] | None = None
        if self.bootstrap == "photo":  # refuse before any table: fewer than 10 photos → exit 2
            for c in self.cells:
                bootstrap_units("photo", c.sources, f"the cells of {c.target} · {c.defense} · {c.attack}")

    # -- lookups ----------------------------------------------------------------------------
    def rows(self, kind: str, where: Callable[[CellData], bool] = lambda c: True) -> list[tuple]:
        rows = {c.row for c in self.cells if c.kind == kind and where(c)}
        archs = list(dict.fromkeys(c.arch for c in self.cells))
        return sorted(
            rows,
            key=lambda r: (
                archs.index(r[0]),
                recipes().index(r[1]) if r[1] in recipes() else len(recipes()),
                r[1],
                r[2:],
            ),
        )

    def cell(self, row: tuple, attack: str, eps: float | None = None, train_seed: int | None = None) -> CellData | None:
        """The latest cell of a row for an attack (holding ``eps`` when given), of training seed
        ``train_seed`` — by default the row's lowest (a row over several seeds: seed 0, the
        weights ``M.<recipe>``; what the tables without a seed summary show)."""
        found = [
            c
            for c in self.cells
            if c.row == row and c.attack == attack and (eps is None or c.eps_index(eps) is not None)
        ]
        if found:
            s = min(c.train_seed for c in found) if train_seed is None else train_seed
            found = [c for c in found if c.train_seed == s]
        return found[-1] if found else None

    def seed_cells(self, row: tuple, attack: str, eps: float | None = None) -> list[CellData]:
        """The latest cell of every training seed of a row for an attack, by seed (one for a
        row of one seed: the base, inference defences, a recipe run without ``--seeds``)."""
        found = [
            c
            for c in self.cells
            if c.row == row and c.attack == attack and (eps is None or c.eps_index(eps) is not None)
        ]
        return [self.cell(row, attack, eps, s) for s in sorted({c.train_seed for c in found})]

    def train_seeds(self, row: tuple) -> list[int]:
        return sorted({c.train_seed for c in self.cells if c.row == row})

    def compare_seeds(self, a: list[CellData], b: list[CellData], eps: float | None) -> dict | None:
        """:meth:`compare` over training seeds: ``a`` and ``b`` one cell per seed of each side.
        One seed each: :meth:`compare` itself (the same numbers, the same memoised record). Several:
        the two-stage bootstrap of :func:`robench.core.stats.seeded_paired_bootstrap` (photos
        once, shared by every seed, then each side's seeds with replacement) on the items all the
        cells hold."""
        if not a or not b:
            return None
        if len(a) == 1 and len(b) == 1:
            res = self.compare(a[0], b[0], eps)
            if res is not None:
                res.setdefault("train_seeds", [[a[0].train_seed], [b[0].train_seed]])
            return res
        key = (tuple(c.key for c in a), tuple(c.key for c in b), eps)
        if key in self._compared:
            return self._compared[key]
        qs = [c.q_at(eps) for c in a + b]
        if any(q is None for q in qs):
            return None
        common = a[0].item_ids
        for c in a[1:] + b:
            common = np.intersect1d(common, c.item_ids)
        if len(common) < 3:
            return None
        idx = [np.intersect1d(common, c.item_ids, return_indices=True)[2] for c in a + b]  # each cell's rows of common
        ia = idx[0]
        cl, label = self.units(a[0], ia)
        if a[0].kind == "pairs":
            va = [q[i] for q, i in zip(qs[: len(a)], idx[: len(a)])]
            vb = [q[i] for q, i in zip(qs[len(a) :], idx[len(a) :])]
            res = seeded_paired_bootstrap(va, vb, a[0].mos[ia], n_resamples=self.n_boot, seed=self.seed, clusters=cl)
        else:
            va = [c.item_values(q)[i] for c, q, i in zip(a, qs[: len(a)], idx[: len(a)])]
            vb = [c.item_values(q)[i] for c, q, i in zip(b, qs[len(a) :], idx[len(a) :])]
            res = seeded_paired_bootstrap(
                va, vb, stat=mean_weighted, n_resamples=self.n_boot, seed=self.seed, clusters=cl
            )
        res["units"] = f"{label} × training seeds (resampled)"
        res["train_seeds"] = [[c.train_seed for c in a], [c.train_seed for c in b]]
        self._compared[key] = res
        return res

    def base_row(self, row: tuple) -> tuple:
        return (row[0], BASE, *row[2:])

    def units(self, c: CellData, idx=None) -> tuple:
        """(clusters, label) of a bootstrap over ``c``'s items (``idx``: a subset)."""
        src = None if c.sources is None else (c.sources if idx is None else c.sources[idx])
        return bootstrap_units(self.bootstrap, src, f"the cells of {c.target}")

    def compare(self, a: CellData, b: CellData, eps: float | None) -> dict | None:
        """Paired bootstrap of metric(a) − metric(b) on the items both hold, at ``eps`` (None =
        clean), resampling source photos (or items, see :meth:`units`); memoised, and carrying
        the family-wise adjusted p once the report's family is built (:meth:`family`)."""
        key = (a.key, b.key, eps)
        if key in self._compared:
            return self._compared[key]
        qa, qb = a.q_at(eps), b.q_at(eps)
        if qa is None or qb is None:
            return None
        common, ia, ib = np.intersect1d(a.item_ids, b.item_ids, return_indices=True)
        if len(common) < 3:
            return None
        cl, label = self.units(a, ia)
        if a.kind == "pairs":
            res = paired_bootstrap(qa[ia], qb[ib], a.mos[ia], n_resamples=self.n_boot, seed=self.seed, clusters=cl)
        else:
            res = paired_bootstrap(
                a.item_values(qa)[ia],
                b.item_values(qb)[ib],
                stat=mean_weighted,
                n_resamples=self.n_boot,
                seed=self.seed,
                clusters=cl,
            )
        res["units"] = label
        self._compared[key] = res
        return res

    def family(self) -> list[dict]:
        """Every comparison of the report (each defence vs its base, and what recipes declare in
        ``compare_with``, clean and per attack and ε): the family the multiplicity correction
        covers. Each record: the comparison's labels, the bootstrap result, ``p_adjusted`` and
        ``significant`` after the correction (the raw CI decision is ``significant_raw``)."""
        if self._family is not None:
            return self._family
        recs, seen = [], set()
        for kind in ("pairs", "2afc"):
            rows = self.rows(kind)
            for row in rows:
                pairs = []
                if row[1] != BASE:
                    pairs.append(self.base_row(row))
                # a recipe names the recipes it is compared with (AAT: R and AT, the paper's Table 3)
                pairs += [(row[0], d, *row[2:]) for d in recipe_declares(row[1], "compare_with", ())]
                for other in pairs:
                    if other not in rows:
                        continue
                    for a in attack_order(c.attack for c in self.cells if c.row == row):
                        c, b = self.cell(row, a), self.cell(other, a)
                        if c is None or b is None:
                            continue
                        # every training seed of each side (one each without --seeds)
                        cs, bs = self.seed_cells(row, a), self.seed_cells(other, a)
                        meta = {
                            "row": row,
                            "other": other,
                            "cell": c,
                            "versus_cell": b,
                            "cells": cs,
                            "versus_cells": bs,
                        }
                        if (row, other) not in seen:
                            seen.add((row, other))
                            res = self.compare_seeds(cs, bs, None)
                            if res:
                                recs.append({**meta, "attack": "clean", "eps": None, "res": res, "flags": []})
                        codes = [f for x in cs + bs for f in FL.active(x.flags)]
                        codes = [f for f, _, _ in FL.FLAGS if f in codes]
                        for e in [e for e in c.eps if all(x.eps_index(e) is not None for x in cs + bs)]:
                            res = self.compare_seeds(cs, bs, e)
                            if res:
                                recs.append({**meta, "attack": a, "eps": e, "res": res, "flags": codes})
        adjust = holm if self.correction == "holm" else benjamini_hochberg
        p_adj = adjust([r["res"]["p"] for r in recs]) if recs else []
        for r, pa in zip(recs, p_adj):
            # after correction: significant when the adjusted p is below α (5 %)
            r["res"]["p_adjusted"] = float(pa)
            r["res"]["significant_raw"] = r["res"]["significant"]
            r["res"]["significant"] = bool(np.isfinite(pa) and pa < 0.05)
        self._family = recs
        return recs

    def comparisons(self) -> list[dict]:
        """report.json's comparison rows (schema in docs/statistics.md)."""
        out = []
        for r in self.family():
            c, res = r["cell"], r["res"]
            out.append(
                {
                    "target": c.target,
                    "defense": r["row"][1],
                    "versus": r["other"][1],
                    "attack": r["attack"],
                    "eps": r["eps"],
                    "metric": c.metric_name,
                    "delta": res["delta"],
                    "effect": res["effect"],
                    "ci_low": res["ci"][0],
                    "ci_high": res["ci"][1],
                    "p": res["p"],
                    "p_adjusted": res["p_adjusted"],
                    "correction": self.correction,
                    "significant": res["significant"],
                    "significant_uncorrected": res["significant_raw"],
                    "n_items": res["n_items"],
                    "n_clusters": res["n_clusters"],
                    "units": res["units"],
                    # the training seeds the bootstrap pooled (--seeds; [0] for a single run), of
                    # the defence and of the row it is compared with; split_seed: the items' seed
                    "seeds": [x.train_seed for x in r["cells"]],
                    "versus_seeds": [x.train_seed for x in r["versus_cells"]],
                    "split_seed": c.seed,
                    "dataset": c.dataset,
                    "split": c.split,
                    "profile": c.profile,
                    "flags": {f: True for f in r["flags"]},
                    "direction": self.direction,
                    "protocol": self.protocol,
                    "not_converged": "nc" in r["flags"],
                    "masking": "gm" in r["flags"],
                    "vacuous_bound": "vac" in r["flags"],
                }
            )
        return out

    def ir(self, d: CellData, b: CellData) -> float:
        res = self.ir_full(d, b)
        return res["ir"] if res else float("nan")

    def ir_full(self, d: CellData, b: CellData, maps: MapCache | None = None) -> dict | None:
        """IR-Score of ``d`` vs its base ``b`` over every ε both hold, with its bootstrap CI
        (the report's resampling unit) — with the report's OT back end, or ``maps``."""
        eps = [e for e in d.eps if b.eps_index(e) is not None]
        common, i_d, i_b = np.intersect1d(d.item_ids, b.item_ids, return_indices=True)
        if not eps or len(common) < 3 or d.kind != "pairs":
            return None
        maps = maps or self.maps
        key = (d.key, b.key, maps.backend)
        if key not in self._ir:
            kd = [d.eps_index(e) for e in eps]
            kb = [b.eps_index(e) for e in eps]
            res = ir_score(
                (b.q_clean[i_b], b.q_adv[kb][:, i_b]), (d.q_clean[i_d], d.q_adv[kd][:, i_d]), d.mos[i_d], maps
            )
            cl, label = self.units(d, i_d)
            res["ci"] = list(ir_interval(res, cl, n_resamples=self.n_boot, seed=self.seed))
            res["units"] = label
            self._ir[key] = res
        return self._ir[key]

    def ir_table(self) -> Table | None:
        """IR-Score per defended row and attack with its 95 % bootstrap CI, by both OT back ends
        (neural, the paper's; exact, the monotone quantile map): where they disagree beyond the
        interval the OT fit, not the defence, decides the number."""
        rows = [r for r in self.rows("pairs", lambda c: not c.inference) if r[1] != BASE]
        if not rows:
            return None
        other = MapCache("exact" if self.ot == "neural" else "neural", self.seed)
        recs, index = [], []
        for row in rows:
            for a in attack_order(c.attack for c in self.cells if c.row == row):
                d, b = self.cell(row, a), self.cell(self.base_row(row), a)
                if d is None or b is None:
                    continue
                mine, alt = self.ir_full(d, b), self.ir_full(d, b, other)
                if mine is None:
                    continue
                index.append((*self.label(row), a))
                recs.append(
                    {
                        f"IR ({self.ot})": mine["ir"],
                        "CI low": mine["ci"][0],
                        "CI high": mine["ci"][1],
                        f"IR ({other.backend})": alt["ir"],
                        "agree": "yes" if mine["ci"][0] <= alt["ir"] <= mine["ci"][1] else "no",
                        "units": mine["units"],
                    }
                )
        if not recs:
            return None
        df = pd.DataFrame(recs, index=pd.MultiIndex.from_tuples(index, names=[*self.label_names(), "attack"]))
        return Table(
            "ir",
            "IR-Score with bootstrap intervals, neural and exact OT",
            df,
            caption=(
                f"IR-Score of each defended row vs its base over every stored ε (0.5 = as movable as "
                f"base, 1 = never moved more); 95 % percentile CI from {self.n_boot} bootstrap resamples "
                f"of the per-image wins, conditional on the OT maps fitted once; 'agree': the "
                f"{other.backend} estimate lies inside the {self.ot} interval. Where they disagree ('no') "
                f"the OT fit, not the defence, moves the number: read the exact (monotone quantile) value "
                f"as the reference, and treat the difference as the OT uncertainty (more items per cell "
                f"narrow it). " + self.setting(self.cells, "all ε")
            ),
            footnote=self.provenance(self.cells),
        )

    def train_minutes(self, c: CellData) -> float:
        w = self.weights.get(c.weights_sha)
        if not w or "train_seconds" not in w["provenance"]:
            return float("nan")
        total = float(w["provenance"]["train_seconds"])
        clean = self.weights.get(w["provenance"].get("clean_sha256", ""))
        if clean and "train_seconds" in clean["provenance"]:
            total += float(clean["provenance"]["train_seconds"])
        return total / 60

    # -- captions ---------------------------------------------------------------------------
    def setting(self, cells: list[CellData], eps: str) -> str:
        ds = sorted({f"{c.dataset} ({c.split} split, {c.n} items)" for c in cells})
        prof = sorted({c.profile for c in cells})
        seeds = sorted({c.seed for c in cells})
        return f"Dataset {', '.join(ds)}; profile {', '.join(prof)}; {eps}; seed {', '.join(map(str, seeds))}."

    def provenance(self, cells: list[CellData]) -> str:
        parts = []
        for sha in dict.fromkeys(c.weights_sha for c in cells):
            target = next(c.target for c in cells if c.weights_sha == sha)
            w = self.weights.get(sha)
            if w is None:
                parts.append(f"{target}: weights sha256 {sha[:12]} (provenance not in this store)")
                continue
            p = w["provenance"]
            how = w["source"]
            if w["source"] == "trained-here":
                how = f"trained here on {p.get('dataset', '?')} ({p.get('profile', '?')} profile"
                how += f", {p['recipe'].upper()} recipe)" if p.get("recipe") else ")"
            parts.append(f"{target}: {how}, sha256 {sha[:12]}")
        return "Weights: " + "; ".join(parts) + "."

    # -- the tables -------------------------------------------------------------------------
    def robustness(self) -> Table | None:
        """Paper Table 3: rows model × training defence; clean SROCC, SROCC per attack at the table
        ε (plus the per-image worst case over attacks), IR-Score per attack over all ε, train time."""
        rows = self.rows("pairs", lambda c: not c.inference)
        if not rows:
            return None
        attacks = attack_order(c.attack for c in self.cells if c.row in rows)
        ir = self.direction == "up"  # IR-Score is a score-inflation measure (the reference gain script)
        cols = (
            [("SROCC", "clean")]
            + [("SROCC", a) for a in attacks]
            + ([("SROCC", "worst")] if len(attacks) > 1 else [])
            + ([("IR-Score", a) for a in attacks] if ir else [])
            + [("Train time (min)", "")]
        )
        seeds_of = {row: self.train_seeds(row) for row in rows}
        multi = any(len(v) > 1 for v in seeds_of.values())  # a row over several training seeds (--seeds)
        if multi:
            cols.append(("Seeds", ""))
        data, marks, used, flags, spread = [], {}, [], {}, {}
        index = [self.label(r) for r in rows]
        for row, idx in zip(rows, index):
            base = None if row[1] == BASE else {a: self.cell(self.base_row(row), a, self.eps) for a in attacks}
            per_seed, cells_of, any_cs = [], {a: [] for a in attacks}, []
            for s in seeds_of[row]:  # one pass for a row of one seed: the single-run numbers
                vals = {}
                cs = {a: self.cell(row, a, self.eps, s) for a in attacks}
                any_c = next((c for c in cs.values() if c is not None), None) or self.cell(
                    row, attacks[0], train_seed=s
                )
                used += [c for c in cs.values() if c is not None]
                vals[("SROCC", "clean")] = any_c.clean_metric() if any_c else np.nan
                for a, c in cs.items():
                    vals[("SROCC", a)] = c.metric(self.eps) if c else np.nan
                    vals[("IR-Score", a)] = (
                        self.ir(c, base[a]) if ir and c is not None and base and base[a] is not None else np.nan
                    )
                    if c is not None:
                        cells_of[a].append(c)
                if any_c is not None:
                    any_cs.append(any_c)
                if ("SROCC", "worst") in cols:
                    vals[("SROCC", "worst")] = self.worst(list(cs.values()))
                vals[("Train time (min)", "")] = self.train_minutes(any_c) if any_c else np.nan
                per_seed.append(vals)
            for a in attacks:
                cs_a = cells_of[a]
                self._flag(flags, idx, ("SROCC", a), *(cs_a or [None]))
                if cs_a and base and base[a] is not None and ir:
                    self._flag(flags, idx, ("IR-Score", a), *cs_a, base[a])
                if cs_a and base and base[a] is not None:
                    # over every seed of the row: the seed-and-photo bootstrap (one seed: the photo bootstrap)
                    self._mark(marks, idx, ("SROCC", a), self.compare_seeds(cs_a, [base[a]], self.eps))
            if any_cs and base:
                b = next((x for x in base.values() if x is not None), None)
                if b is not None:
                    self._mark(marks, idx, ("SROCC", "clean"), self.compare_seeds(any_cs, [b], None))
            if len(per_seed) == 1:
                vals = per_seed[0]
            else:  # mean ± sample s.d. over the seeds that hold the value
                vals = {}
                for col in cols:
                    v = np.array([x.get(col, np.nan) for x in per_seed], dtype=float)
                    v = v[np.isfinite(v)]
                    vals[col] = float(v.mean()) if v.size else np.nan
                    if v.size > 1:
                        spread[(idx, col)] = float(v.std(ddof=1))
            if multi:
                vals[("Seeds", "")] = len(per_seed)
                spread.pop((idx, ("Seeds", "")), None)
            data.append([vals.get(c, np.nan) for c in cols])
        df = pd.DataFrame(
            data,
            index=pd.MultiIndex.from_tuples(index, names=self.label_names()),
            columns=pd.MultiIndex.from_tuples(cols),
        )
        bold = self.best(df, exclude=[("Train time (min)", ""), ("Seeds", "")])
        seeds_note = ""
        if multi:
            several = sorted({s for r in rows if len(seeds_of[r]) > 1 for s in seeds_of[r]})
            seeds_note = (
                f" Rows over several training seeds ({', '.join(map(str, several))}; 'Seeds': how many): "
                f"mean ± sample standard deviation over the seeds, each seed a separate fine-tuning of the "
                f"same clean model; their †/‡ from the two-stage bootstrap that resamples the seeds "
                f"and the photos."
            )
        return Table(
            "robustness",
            "Robustness of trained defences (paper Table 3 shape)",
            df,
            caption=(
                f"SROCC of oriented quality vs MOS, clean and under each attack at ε = {self.eps:g}/255 "
                f"('worst': per image the attack that moved it most, on the items all the row's attacks "
                f"share)"
                + (
                    f"; IR-Score over every stored ε ({self.ot} OT; 0.5 = as movable as base, 1 = never moved more)"
                    if ir
                    else ""
                )
                + ". "
                + self.setting(used, f"ε = {self.eps:g}/255" + (" (IR: all stored ε)" if ir else ""))
                + seeds_note
            ),
            footnote=self.sig_note("SROCC") + " Train time: clean training; for R/AT/AAT the clean "
            "training plus the fine-tuning. "
            + self.items_note(rows, attacks, df)
            + self.flag_note(flags)
            + self.provenance(used),
            bold=bold,
            marks=marks,
            flags=flags,
            spread=spread,
            col_precision={("Train time (min)", ""): 1, **({("Seeds", ""): 0} if multi else {})},
        )

    def accuracy_table(self, name: str, title: str, rows: list[tuple], shape: str) -> Table | None:
        """Clean + per-attack metric, grouped white-box / black-box (paper Tables 7 and 9)."""
        if not rows:
            return None
        attacks = attack_order(c.attack for c in self.cells if c.row in rows)
        needs = {c.attack: c.needs for c in self.cells if c.row in rows}
        cols = (
            [("", "clean")]
            + [("white-box", a) for a in attacks if needs[a] == "gradients"]
            + [("black-box", a) for a in attacks if needs[a] != "gradients"]
        )
        data, marks, used, flags = [], {}, [], {}
        index = [self.label(r) for r in rows]
        for row, idx in zip(rows, index):
            base_row = self.base_row(row)
            vals = {}
            for grp, a in cols[1:]:
                c = self.cell(row, a, self.eps)
                vals[(grp, a)] = c.metric(self.eps) if c else np.nan
                self._flag(flags, idx, (grp, a), c)
                if c is not None:
                    used.append(c)
                    b = self.cell(base_row, a, self.eps) if row[1] != BASE else None
                    if b is not None:
                        self._mark(marks, idx, (grp, a), self.compare(c, b, self.eps))
            c0 = next((self.cell(row, a) for a in attacks if self.cell(row, a) is not None), None)
            vals[("", "clean")] = c0.clean_metric() if c0 else np.nan
            data.append([vals.get(c, np.nan) for c in cols])
        df = pd.DataFrame(
            data,
            index=pd.MultiIndex.from_tuples(index, names=self.label_names()),
            columns=pd.MultiIndex.from_tuples(cols),
        )
        metric = used[0].metric_name if used else "metric"
        what = (
            "2AFC accuracy (BAPPS formula; the less-preferred image attacked)" if metric != "SROCC" else "SROCC vs MOS"
        )
        return Table(
            name,
            title,
            df,
            caption=(
                f"{what}, clean and under each attack at ε = {self.eps:g}/255 ({shape}). "
                + self.setting(used, f"ε = {self.eps:g}/255")
            ),
            footnote=self.sig_note(metric) + " " + self.flag_note(flags) + self.provenance(used),
            bold=self.best(df),
            marks=marks,
            flags=flags,
        )

    def flips(self) -> Table | None:
        """2AFC decision flips per row × attack and ε: all triplets and those people agree on."""
        rows = self.rows("2afc")
        if not rows:
            return None
        all_eps = sorted({e for c in self.cells if c.kind == "2afc" for e in c.eps})
        data, index, flags, used = [], [], {}, []
        for row in rows:
            for a in attack_order(c.attack for c in self.cells if c.row == row):
                c = self.cell(row, a)
                idx = (*self.label(row), a)
                index.append(idx)
                used.append(c)
                vals = [c.clean_metric()]
                for e in all_eps:
                    k = c.eps_index(e)
                    vals += [
                        c.flip_rate(k) if k is not None else np.nan,
                        c.flip_rate(k, True) if k is not None else np.nan,
                    ]
                    if k is not None:
                        self._flag(flags, idx, (f"{e:g}/255", "all"), c)
                data.append(vals)
        cols = [("2AFC acc.", "clean")] + [(f"{e:g}/255", s) for e in all_eps for s in ("all", "strong")]
        df = pd.DataFrame(
            data,
            index=pd.MultiIndex.from_tuples(index, names=[*self.label_names(), "attack"]),
            columns=pd.MultiIndex.from_tuples(cols),
        )
        n_strong = sorted({int(((c.judge <= CellData.STRONG) | (c.judge >= 1 - CellData.STRONG)).sum()) for c in used})
        return Table(
            "flips",
            "2AFC decision flips under attack (Ghildyal & Liu)",
            df,
            caption=(
                "Fraction of 2AFC triplets whose metric decision (which distorted image is closer to the "
                "reference) changes when the less-preferred image is attacked, per ε: over all triplets "
                "and over those people agree on strongly (judge ≤ 0.2 or ≥ 0.8; "
                f"{'/'.join(map(str, n_strong))} triplets). " + self.setting(used, "every stored ε")
            ),
            footnote=self.flag_note(flags) + self.provenance(used),
            flags=flags,
        )

    def twoafc(self) -> Table | None:
        return self.accuracy_table(
            "twoafc",
            "2AFC accuracy under attack (paper Table 7 shape)",
            self.rows("2afc", lambda c: not c.inference),
            "paper Table 7 shape",
        )

    def purification(self) -> Table | None:
        """Paper Table 9: per model, base, each inference-time defence, and AAT."""
        for kind in ("2afc", "pairs"):
            purified = self.rows(kind, lambda c: bool(c.inference))
            if purified:
                archs = {r[0] for r in purified}
                rows = self.rows(
                    kind,
                    lambda c: (
                        c.arch in archs
                        and (
                            bool(c.inference)
                            or c.defense == BASE
                            or bool(recipe_declares(c.defense, "purification_reference", False))
                        )
                    ),
                )
                return self.accuracy_table(
                    "purification",
                    "Purification defences against AAT (paper Table 9 shape)",
                    rows,
                    "paper Table 9 shape",
                )
        return None

    def sweep(self) -> Table | None:
        """Metric per ε for every row × attack (clean = ε 0)."""
        all_eps = sorted({e for c in self.cells for e in c.eps})
        data, index, flags = [], [], {}
        for kind in ("pairs", "2afc"):
            for row in self.rows(kind):
                for a in attack_order(c.attack for c in self.cells if c.row == row):
                    c = self.cell(row, a)
                    idx = (c.metric_name, *self.label(row), a)
                    index.append(idx)
                    q = c.q_at(self.eps)
                    msu = msu_scores(c.q_clean, q) if q is not None else {"abs_gain": np.nan, "R": np.nan}
                    psnr, ssim = c.perceptibility(self.eps)
                    k = c.eps_index(self.eps)
                    gain = float(np.mean(c.directed_gain(k))) if k is not None else np.nan
                    sd = c.clean_sd
                    data.append(
                        [c.clean_metric()]
                        + [c.metric(e) for e in all_eps]
                        + [gain, gain / sd if sd > 0 else np.nan, msu["abs_gain"], msu["R"], psnr, ssim]
                    )
                    for e in all_eps:
                        if c.eps_index(e) is not None:  # no marker on a budget the cell does not hold
                            self._flag(flags, idx, f"{e:g}/255", c)
        if not data:
            return None
        cols = (
            ["clean"]
            + [f"{e:g}/255" for e in all_eps]
            + [
                f"gain@{self.eps:g}",
                f"gain/SD@{self.eps:g}",
                f"MSU gain@{self.eps:g}",
                f"MSU R@{self.eps:g}",
                f"PSNR@{self.eps:g}",
                f"SSIM@{self.eps:g}",
            ]
        )
        df = pd.DataFrame(
            data, index=pd.MultiIndex.from_tuples(index, names=["metric", *self.label_names(), "attack"]), columns=cols
        )
        return Table(
            "sweep",
            "Metric against the attack budget ε",
            df,
            caption=(
                f"SROCC (or 2AFC accuracy) clean and at every stored ε; gain@ε: mean directed gain "
                f"sign·(q_adv − q_clean) in the target's units (MOS for BiRQA), gain/SD@ε: the same in "
                f"units of the row's own clean-score SD (comparable across a model that shrinks its "
                f"scores); MSU-benchmark scores at ε = "
                f"{self.eps:g}/255 on min-max scaled scores: mean absolute gain and robustness "
                f"R = log10(max(1−s, s)/(|s − s_adv| + 1e-6)) (higher R = moved less); perceptibility "
                f"at ε = {self.eps:g}/255: mean PSNR (dB, over the images the attack changed) and SSIM "
                f"of the adversarial against the unattacked distorted image. "
            )
            + self.setting(self.cells, "ε in /255 as columns"),
            footnote=self.flag_note(flags) + self.provenance(self.cells),
            flags=flags,
            col_precision={f"PSNR@{self.eps:g}": 1},
        )

    def significance(self) -> Table | None:
        """Paired bootstrap of Δmetric over the report's family of comparisons (every defence vs
        base, and what recipes declare: AAT vs R and vs AT), with the multiplicity correction."""
        fam = self.family()
        if not fam:
            return None
        index = []
        for r in fam:
            c = r["cell"]
            who = (*self.label(r["row"])[:-1], f"{defense_label(r['row'][1])} vs {defense_label(r['other'][1])}")
            index.append((c.metric_name, *who, r["attack"], "—" if r["eps"] is None else f"{r['eps']:g}"))
        res = [r["res"] for r in fam]
        df = pd.DataFrame(
            {
                "Δ": [x["delta"] for x in res],
                "median Δ": [x["effect"] for x in res],
                "CI low": [x["ci"][0] for x in res],
                "CI high": [x["ci"][1] for x in res],
                "p": [x["p"] for x in res],
                f"p ({self.correction_name})": [x["p_adjusted"] for x in res],
                "significant": ["yes" if x["significant"] else "no" for x in res],
                "units": [
                    f"{x['n_clusters']} {'photos' if x['cluster'] else 'items'}"
                    + (f" × {x['n_seeds'][0]}/{x['n_seeds'][1]} seeds" if "n_seeds" in x else "")
                    for x in res
                ],
                "flags": [" ".join(r["flags"]) or "—" for r in fam],
            },
            index=pd.MultiIndex.from_tuples(
                index, names=["metric", *self.label_names()[:-1], "comparison", "attack", "ε /255"]
            ),
        )
        labels = sorted({x["units"] for x in res})
        return Table(
            "significance",
            "Paired bootstrap of the metric difference",
            df,
            caption=(
                f"Δ = metric(first) − metric(second) on the same items; median over {self.n_boot} paired "
                f"bootstrap resamples, seed {self.seed}; resampling: {'; '.join(labels)}; 95 % percentile "
                f"CI; p two-sided bootstrap p; significant when the {self.correction_name}-adjusted p "
                f"< 0.05 across all {len(fam)} comparisons of this report. " + self.setting(self.cells, "ε per row")
            ),
            footnote=FL.legend({f for r in fam for f in r["flags"]}) + " " + self.provenance(self.cells),
        )

    @property
    def correction_name(self) -> str:
        return {"holm": "Holm", "bh": "Benjamini–Hochberg"}[self.correction]

    # -- helpers ----------------------------------------------------------------------------
    def label(self, row: tuple) -> tuple:
        """A row's printed label: (target, defence), with its setting when the store mixes several."""
        if self.multi_setting:
            dataset, split, kind, profile, seed, amp = row[2:]
            return (
                row[0],
                f"{dataset}/{split}/{profile}/seed {seed}" + ("" if amp == "fp32" else f"/{amp}"),
                defense_label(row[1]),
            )
        return (row[0], defense_label(row[1]))

    def label_names(self) -> list[str]:
        return ["target", "setting", "defence"] if self.multi_setting else ["target", "defence"]

    def worst(self, cells: list[CellData | None]) -> float:
        """Per image the attack that moved it furthest its way, on the items every cell holds
        (cells of 192 and 96 items: their 96 shared items); NaN below 3 shared items."""
        cs = [c for c in cells if c is not None and c.q_at(self.eps) is not None]
        if len(cs) < 2:
            return float("nan")
        common = cs[0].item_ids
        for c in cs[1:]:
            common = np.intersect1d(common, c.item_ids)
        if len(common) < 3:
            return float("nan")
        idx = [np.intersect1d(common, c.item_ids, return_indices=True)[2] for c in cs]
        k = [c.eps_index(self.eps) for c in cs]
        moved = np.stack([c.directed_gain(kk)[i] for c, kk, i in zip(cs, k, idx)])
        pick = moved.argmax(axis=0)
        q = np.stack([c.q_adv[kk][i] for c, kk, i in zip(cs, k, idx)])[pick, np.arange(len(common))]
        return cs[0].metric_of(q, idx[0])

    def _flag(self, flags: dict, idx, col, *cells: CellData | None) -> None:
        """Attach the active flags of the cell(s) behind a value (a defence's IR-Score depends on
        its base cell too)."""
        shown = FL.ordered(f for c in cells if c is not None for f in FL.labels(c.flags))
        if shown:
            flags[(idx, col)] = shown

    def items_note(self, rows: list[tuple], attacks: list[str], df: pd.DataFrame) -> str:
        """What a reader needs when the row's cells differ in items, and when an attack raised SROCC."""
        notes = []
        for row in rows:
            cs = {a: self.cell(row, a, self.eps) for a in attacks}
            sizes = {a: c.n for a, c in cs.items() if c is not None}
            if len(set(sizes.values())) > 1:
                per = ", ".join(f"{a} {n} items (clean {cs[a].clean_metric():.3f})" for a, n in sizes.items())
                notes.append(
                    f"{row[0]} {defense_label(row[1])}: the attacks ran on different item sets — {per}; the "
                    f"clean column is the first's, so compare each attack with its own clean value."
                )
        rose = []
        for idx, r in zip(df.index, df.to_numpy(dtype=float)):
            cols = list(df.columns)
            clean = r[cols.index(("SROCC", "clean"))]
            for a in attacks:
                v = r[cols.index(("SROCC", a))]
                if np.isfinite(v) and np.isfinite(clean) and v > clean:
                    rose.append(f"{' '.join(map(str, idx))} × {a}")
        if rose:
            notes.append(
                f"An attack raised SROCC ({'; '.join(rose)}): under score inflation every score moves the "
                f"same way, so the ranking can improve by chance while every score is wrong; the ranking "
                f"attack (mos-split) measures ranking damage."
            )
        return " ".join(notes) + (" " if notes else "")

    def flag_note(self, flags: dict) -> str:
        text = FL.legend({c for v in flags.values() for c in v})
        return text + " " if text else ""

    def _mark(self, marks: dict, idx, col, res: dict | None) -> None:
        self.family()  # significance after the multiplicity correction of the whole report
        if res and res["significant"]:
            marks[(idx, col)] = "+" if res["effect"] > 0 else "-"

    def sig_note(self, metric: str) -> str:
        units = sorted({r["res"]["units"] for r in self.family()}) or ["—"]
        return (
            f"† significantly higher, ‡ significantly lower {metric} than the same model's base row (paired "
            f"bootstrap, {self.n_boot} resamples, {'; '.join(units)}; {self.correction_name}-adjusted p < 0.05 "
            f"across the report's comparisons). Bold: best in the column for each model."
        )

    def best(self, df: pd.DataFrame, exclude=()) -> pd.DataFrame:
        bold = np.zeros(df.shape, dtype=bool)
        groups = [tuple(i[:-1]) for i in df.index]  # one model (and setting): all levels but the defence
        for g in dict.fromkeys(groups):
            rows = [k for k, h in enumerate(groups) if h == g]
            if len(rows) < 2:
                continue
            for j, col in enumerate(df.columns):
                v = df.iloc[rows, j].to_numpy(dtype=float)
                if col in exclude or np.isnan(v).all():
                    continue
                bold[[r for r, x in zip(rows, v) if x == np.nanmax(v)], j] = True
        return pd.DataFrame(bold, index=df.index, columns=df.columns)

    def builders(self) -> list[Callable[[], Table | None]]:
        """This protocol's table builders in report order: the one list (IR-Score on score
        inflation only, as the reference gain script measures gains)."""
        out = [self.robustness, self.twoafc, self.flips, self.purification, self.sweep, self.significance]
        return out + ([self.ir_table] if self.direction == "up" else [])

    def named(self, t: Table | None) -> Table | None:
        """A table of this reporter's protocol: named (``robustness-mos-split``), titled and
        captioned with it, and carrying it into report.json."""
        if t is None or t.protocol is not None:
            return t
        t.direction, t.protocol = self.direction, self.protocol
        if self.direction != "up":
            t.name = f"{t.name}-{self.direction}"
        t.title = f"{t.title} — {self.protocol}"
        t.caption = f"Protocol: {self.protocol}: {get_direction(self.direction).summary}. " + t.caption
        return t


def cell_stats(c: CellData) -> dict[str, Any]:
    """Every per-cell statistic (report.json): SROCC/PLCC/KROCC or 2AFC accuracy clean and per ε,
    mean gain of oriented quality and the MSU scores per ε."""
    per_eps = []
    sd = c.clean_sd
    for k, e in enumerate(c.eps):
        q = c.q_adv[k]
        g = float(np.mean(c.directed_gain(k)))
        # the directed gain in the target's units and in units of its own clean-score SD (a model
        # that shrinks every score looks robust in MOS units alone)
        d = {"eps": e, "mean_gain": g, "mean_gain_per_sd": g / sd if sd > 0 else None, **msu_scores(c.q_clean, q)}
        d.update(
            correlations(q, c.mos)
            if c.kind == "pairs"
            else {
                "2afc": c.metric_of(q),
                "flip_rate": c.flip_rate(k),
                "flip_rate_strong": _none_nan(c.flip_rate(k, True)),
            }
        )
        per_eps.append(d)
    for d in per_eps:
        d["mean_psnr"], d["mean_ssim"] = (None if v != v else v for v in c.perceptibility(d["eps"]))
    clean = correlations(c.q_clean, c.mos) if c.kind == "pairs" else {"2afc": c.clean_metric()}
    return {
        "flags": c.flags,
        "active_flags": c.active_flags,
        "key": c.key,
        "target": c.target,
        "defense": c.defense,
        "attack": c.attack,
        "direction": c.direction,
        "protocol": c.protocol,
        "clean_sd": sd,
        "kind": c.kind,
        "dataset": c.dataset,
        "split": c.split,
        "profile": c.profile,
        "seed": c.seed,
        "n": c.n,
        "weights_sha256": c.weights_sha,
        "clean": clean,
        "attacked": per_eps,
    }


def _none_nan(v: float) -> float | None:
    return None if v != v else v


# --------------------------------------------------------------------------------------------
# writers


def to_latex(t: Table) -> str:
    """booktabs table through pandas Styler; best values bold, significance marked."""
    s = _strings(t, MARK_TEX, "--", r" $\pm$ ")
    names = [_latex_escape(str(n)) if n is not None else None for n in s.index.names]
    s.index = (
        s.index.set_levels([[_latex_escape(str(v)) for v in lvl] for lvl in s.index.levels])
        if isinstance(s.index, pd.MultiIndex)
        else pd.Index([_latex_escape(str(v)) for v in s.index])
    )
    s.index.names = names
    if isinstance(s.columns, pd.MultiIndex):
        s.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(str(x)) for x in c) for c in s.columns])
    else:
        s.columns = [_latex_escape(str(c)) for c in s.columns]
    bold = t.bold if t.bold is not None else pd.DataFrame(False, index=t.df.index, columns=t.df.columns)
    props = np.where(bold.to_numpy(), "textbf:--rwrap;", "")
    sty = s.style.apply(lambda _: props, axis=None)
    tex = sty.to_latex(
        hrules=True,
        caption=_latex_escape(t.caption),
        label=f"tab:{t.name}",
        position_float="centering",
        multicol_align="c",
        multirow_align="t",
        column_format="l" * s.index.nlevels + "r" * s.shape[1],
        environment="table",
    )
    if s.shape[1] + s.index.nlevels > 10:  # wide tables (Table 3 has 19 columns): scale to the line
        tex = tex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}", 1)
        tex = tex.replace("\\end{tabular}", "\\end{tabular}}", 1)
    if t.footnote:
        tex = tex.replace(
            "\\end{table}", "\\par\\smallskip{\\footnotesize " + _latex_escape(t.footnote) + "}\n\\end{table}"
        )
    return tex


def to_markdown(t: Table) -> str:
    s = _strings(t, MARK_MD, "—")
    if t.bold is not None:
        s = s.mask(t.bold.to_numpy(), "**" + s + "**")
    names = list(s.index.names) if isinstance(s.index, pd.MultiIndex) else [s.index.name or ""]
    cols = [" ".join(x for x in c if x) if isinstance(c, tuple) else str(c) for c in s.columns]
    lines = [
        f"### {t.title}",
        "",
        t.caption,
        "",
        "| " + " | ".join([n or "" for n in names] + cols) + " |",
        "|" + "---|" * (len(names) + len(cols)),
    ]
    for idx, r in zip(s.index, s.to_numpy()):
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([str(i) for i in idx] + list(r)) + " |")
    if t.footnote:
        lines += ["", t.footnote]
    return "\n".join(lines) + "\n"


STANDALONE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\usepackage{multirow}
\usepackage{graphicx}
\usepackage[landscape,margin=1.2cm]{geometry}
\begin{document}
%s
\end{document}
"""


def compile_pdf(tex: Path) -> Path | None:
    """pdflatex the standalone wrapper when pdflatex is installed (None when it is not)."""
    exe = shutil.which("pdflatex")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tex.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RobenchError(f"pdflatex failed on {tex}:\n{proc.stdout[-2000:]}")
    return tex.with_suffix(".pdf")


def write_report(
    store: str | Path,
    out: str | Path,
    *,
    eps: float | None = None,
    ot: str = "neural",
    n_boot: int = 1000,
    seed: int = 0,
    cluster: bool = True,
    plots: bool = True,
    pdf: bool = True,
    bench: str | Path | None = None,
    ot_options: dict | None = None,
    progress: bool = False,
    bootstrap: str = "auto",
    correction: str = "holm",
) -> dict[str, Any]:
    """Every table (.tex, .md), the standalone ``report.tex`` (and PDF when pdflatex exists), the
    plots, and ``report.json`` with all numbers, under ``out``. Written to a temporary folder and
    moved into place, so a failure leaves no half report."""
    out = Path(out)
    check_report_folder(out)  # before any work: a folder of someone else's files is refused
    cells, weights = load_cells(store)
    # one reporter per attack direction (protocol): tables, comparisons and their corrections never
    # mix the ranking attack with score inflation
    reps = {
        d: Reporter(
            [c for c in cells if c.direction == d],
            weights,
            eps=eps,
            ot=ot,
            n_boot=n_boot,
            seed=seed,
            cluster=cluster,
            ot_options=ot_options,
            bootstrap=bootstrap,
            correction=correction,
        )
        for d in DIRECTIONS
        if any(c.direction == d for c in cells)
    }
    # the primary reporter (IR-Score, plots, Theorem-1 evidence): score inflation when stored
    rep = reps.get("up") or next(iter(reps.values()))
    out.parent.mkdir(parents=True, exist_ok=True)
    # a private temporary folder beside the target: concurrent reports cannot delete each other's
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would become the report's permissions
    try:
        written = _write(reps, rep, cells, store, out, tmp, ot, n_boot, seed, plots, pdf, bench)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({"robench_report": 1, "files": files}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # swap: the old report moves aside, the new one in, then the old one goes (a kill in between
    # leaves a complete report under one of the two names, never half of one)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / "report")
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return written


#: written into every report folder: the files robench wrote there (what a rerun may replace)
MANIFEST = ".robench-report.json"
#: what a report folder written before the manifest holds (a rerun may replace such a folder)
_REPORT_SUFFIXES = {".md", ".tex", ".json", ".pdf", ".png", ".aux", ".log", ".out", ".html"}


def check_report_folder(out: Path) -> None:
    """``robench report --out`` replaces its folder as a whole, so it never touches a folder holding
    anything robench did not write there: a missing or empty folder is fine; so is a previous
    report whose manifest lists every file in it (or, written before the manifest, whose
    report.json is robench's and whose files are all report files). Anything else is refused,
    naming a foreign file."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RobenchError(f"--out {out} is a file, not a folder")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink())
    if not files and not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    listed: set[str] | None = None
    if manifest.is_file():
        try:
            listed = set(json.loads(manifest.read_text())["files"]) | {MANIFEST}
        except (json.JSONDecodeError, KeyError, TypeError):
            listed = None
    else:  # a report written before the manifest: robench's report.json and report files only
        try:
            legacy = {"tables", "cells"} <= set(json.loads((out / "report.json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            legacy = False
        if legacy:
            listed = {f for f in files if Path(f).suffix in _REPORT_SUFFIXES}
    foreign = [f for f in files if listed is None or f not in listed]
    if foreign:
        raise RobenchError(
            f"--out {out} holds files robench did not write (e.g. {foreign[0]!r}); a report replaces its "
            "folder as a whole, so give a new or empty folder, or a previous report's"
        )


def aat_bounds(rep: Reporter) -> list[dict[str, Any]]:
    """Theorem-1 evidence of every AAT weights version in the store whose training log
    (``steps.json`` in the provenance's ``run`` folder) still exists: batches where the bound held
    and where it was non-vacuous (bound < batch MOS range). Only non-vacuous batches are evidence."""
    from robench.results import plots as P

    out = []
    for sha, w in rep.weights.items():
        prov = w["provenance"]
        run = prov.get("run")
        if not recipe_declares(prov.get("recipe"), "logs_bound", False):
            continue
        if prov.get("theorem1"):  # recorded with the weights at training time
            out.append({"weights": w["name"], "sha256": sha, "run": run, **prov["theorem1"]})
        elif run and (Path(run) / "steps.json").is_file():
            out.append({"weights": w["name"], "sha256": sha, "run": run, **P.bound_summary(P.read_steps(run))})
    return out


def aat_bounds_markdown(bounds: list[dict[str, Any]]) -> str:
    if not bounds:
        return ""
    lines = [
        "### Theorem 1 during AAT training",
        "",
        "A batch is *vacuous* when its bound δ + Δ + η·R is at least its MOS range R: such a bound allows errors "
        "as large as the labels' whole spread and holds regardless of training, so it is not evidence. "
        "Only the non-vacuous batches support the bound.",
        "",
    ]
    for b in bounds:
        lines.append(
            f"- `{b['weights']}` ({b['sha256'][:12]}): bound held on {b['held']}/{b['n_batches']} batches; "
            f"non-vacuous on {b['non_vacuous']}/{b['n_batches']} "
            f"({100 * b['non_vacuous_fraction']:.0f} %), held there on {b['held_non_vacuous']}; "
            f"median bound/R {b['median_bound_rel']:.2f}"
        )
    return "\n".join(lines) + "\n"


def _write(
    reps: dict[str, Reporter],
    rep: Reporter,
    cells,
    store,
    out: Path,
    tmp: Path,
    ot: str,
    n_boot: int,
    seed: int,
    plots: bool,
    pdf: bool,
    bench,
) -> dict[str, Any]:
    written: dict[str, Any] = {
        "store": str(store),
        "out": str(out),
        "tables": [],
        "plots": [],
        "skipped": [],
        "protocols": {d: r.protocol for d, r in reps.items()},
    }
    tables = []
    # every table per protocol; gains and IR-Score on score inflation only (as the reference gain script)
    builds = [(r, b) for r in reps.values() for b in r.builders()]
    for r, build in builds:
        t = r.named(build())
        if t is None:
            written["skipped"].append(build.__name__ + ("" if r.direction == "up" else f"-{r.direction}"))
            continue
        tables.append(t)
    # the store's transfer matrices and certificates (results.transfer): their own tables, figures, JSON
    from robench.results.transfer import write_sections

    extra_tables, extra_json, extra_figures = write_sections(store, tmp, n_boot, seed, plots)
    tables += extra_tables
    for t in tables:
        (tmp / f"{t.name}.tex").write_text(to_latex(t))
        (tmp / f"{t.name}.md").write_text(to_markdown(t))
        written["tables"].append(t.name)
    (tmp / "report.tex").write_text(STANDALONE % "\n\\clearpage\n".join(f"\\input{{{t.name}.tex}}" for t in tables))
    bounds = aat_bounds(rep)  # Theorem-1 evidence from the AAT training logs (the bound plots' source)
    (tmp / "report.md").write_text(
        f"# robench report\n\nStore: `{store}`\n\n"
        + "\n".join(to_markdown(t) for t in tables)
        + ("\n" + aat_bounds_markdown(bounds) if bounds else "")
    )
    report_json = json.dumps(
        {
            "store": str(store),
            "eps": rep.eps,
            "ot": ot,
            "n_boot": n_boot,
            "seed": seed,
            "tables": [t.to_dict() for t in tables],
            "aat_bounds": bounds,
            "bootstrap": rep.bootstrap,
            "correction": rep.correction,
            "protocols": written["protocols"],
            # one row per comparison (schema: docs/statistics.md),
            # each family corrected within its protocol
            "comparisons": [x for r in reps.values() for x in r.comparisons()],
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
                for c in cells
                if c.active_flags
            ],
            "cells": [cell_stats(c) for c in cells],
            **extra_json,
        },
        indent=1,
        default=str,
    )
    (tmp / "report.json").write_text(report_json)
    from robench.results.paper import write_paper

    # the paper's Tables 3, 7, 9 beside robench's measurements, with the claims table
    written["paper"] = write_paper(rep, tmp, ranking=reps.get("mos-split"))
    if plots:
        from robench.results import plots as P

        written["plots"] = P.draw_all(rep, tmp / "plots", bench=bench, rename_to=out / "plots")
        for d, r in reps.items():  # the ε figure of every other protocol, named by it
            if r is not rep:
                written["plots"] += [
                    str(out / "plots" / n) for n in P.plot_sweep(r, tmp / "plots" / f"sweep-pairs-{d}")
                ]
    written["plots"] = written.get("plots", []) + [str(out / "plots" / n) for n in extra_figures]
    # index.html: the browsable, self-contained report (results.html) over the same numbers
    from robench.engine.store import Store
    from robench.results.html import write_index
    from robench.results.records import make_records

    with Store(store, readonly=True) as st:
        raw = st.cells()
    write_index(
        tmp,
        Path(store),
        tables,
        json.loads(report_json),  # the page shows exactly what report.json holds
        make_records(store, n_boot=n_boot, seed=seed, loaded=(cells, rep.weights, raw)),
        extra_json["certified"],
        rep.weights,
        raw,
    )
    written["html"] = str(out / "index.html")
    if pdf:
        try:
            pdf_path = compile_pdf(tmp / "report.tex")
        except subprocess.TimeoutExpired as exc:
            raise RobenchError(f"pdflatex timed out: {exc}") from None
        written["pdf"] = str(out / pdf_path.name) if pdf_path else None
    return written
