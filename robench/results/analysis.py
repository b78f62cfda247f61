"""The computed results of one protocol: lookups over a store's cells, the paired-bootstrap
comparisons with their multiplicity correction, IR-Score, and per-cell statistics (report.json).

Nothing is recomputed from images: every number comes from the per-image rows the runner stored
(clean and attacked raw scores, MOS or 2AFC judgements) and the weights provenance beside them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from robench.core import flags as FL
from robench.core.errors import RobenchError
from robench.core.stats import (
    benjamini_hochberg,
    bootstrap_units,
    correlations,
    holm,
    mean_weighted,
    msu_scores,
    paired_bootstrap,
    seeded_paired_bootstrap,
)
from robench.results.cells import CellData
from robench.results.labels import BASE, attack_order, defense_label, recipe_declares, recipes
from robench.results.transport import MapCache, ir_interval, ir_score

CORRECTIONS = ("holm", "bh")


class Analysis:
    """The computed results of one protocol (attack direction): its cells' lookups, the paired
    bootstrap comparisons and their multiplicity family, IR-Score, row labels and the settings
    captions name. Tables (results.tables) and every other output render it; options are recorded
    in the captions."""

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
        if len(dirs) > 1:  # one protocol per analysis: the results model builds one for each
            raise RobenchError(f"an Analysis takes the cells of one attack direction, got {sorted(dirs)}")
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
                        for e in self.row_eps(row, a):
                            rec = self._compared_at(row, other, a, e, (len(cs), len(bs)))
                            if rec:
                                recs.append(rec)
        adjust = holm if self.correction == "holm" else benjamini_hochberg
        p_adj = adjust([r["res"]["p"] for r in recs]) if recs else []
        for r, pa in zip(recs, p_adj):
            # after correction: significant when the adjusted p is below α (5 %)
            r["res"]["p_adjusted"] = float(pa)
            r["res"]["significant_raw"] = r["res"]["significant"]
            r["res"]["significant"] = bool(np.isfinite(pa) and pa < 0.05)
        self._family = recs
        return recs

    def row_eps(self, row: tuple, attack: str) -> list[float]:
        """Every ε of the store a row holds for an attack, in any of its cells (a grid run in
        slices stores ε 8 in another cell than ε 1, 2, 4)."""
        return [e for e in self.all_eps if self.cell(row, attack, e) is not None]

    def _compared_at(self, row: tuple, other: tuple, attack: str, eps: float, seeds: tuple[int, int]) -> dict | None:
        """The comparison of two rows at one ε, on the latest cells of each side that hold it;
        None unless all ``seeds`` (each side's number of training seeds) hold it. Its flags are
        those cells' flags."""
        cs, bs = self.seed_cells(row, attack, eps), self.seed_cells(other, attack, eps)
        if not cs or not bs or (len(cs), len(bs)) != seeds:
            return None
        res = self.compare_seeds(cs, bs, eps)
        if not res:
            return None
        codes = [f for x in cs + bs for f in FL.active(x.flags)]
        codes = [f for f, _, _ in FL.FLAGS if f in codes]
        meta = {"row": row, "other": other, "cell": cs[0], "versus_cell": bs[0], "cells": cs, "versus_cells": bs}
        return {**meta, "attack": attack, "eps": eps, "res": res, "flags": codes}

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
