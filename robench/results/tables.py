"""The report's tables (paper shapes): robustness (Table 3), 2AFC (Table 7), purification
(Table 9), decision flips, an ε sweep, the significance of every comparison and IR-Score — each
laid out from one protocol's :class:`~robench.results.analysis.Analysis`."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from robench.core import flags as FL
from robench.core.directions import get_direction
from robench.core.stats import msu_scores
from robench.results.analysis import Analysis
from robench.results.cells import CellData
from robench.results.labels import BASE, attack_order, defense_label, recipe_declares
from robench.results.table import Table
from robench.results.transport import MapCache


def robustness(an: Analysis) -> Table | None:
    """Paper Table 3: rows model × training defence; clean SROCC, SROCC per attack at the table
    ε (plus the per-image worst case over attacks), IR-Score per attack over all ε, train time."""
    rows = an.rows("pairs", lambda c: not c.inference)
    if not rows:
        return None
    attacks = attack_order(c.attack for c in an.cells if c.row in rows)
    ir = an.direction == "up"  # IR-Score is a score-inflation measure (the reference gain script)
    cols = (
        [("SROCC", "clean")]
        + [("SROCC", a) for a in attacks]
        + ([("SROCC", "worst")] if len(attacks) > 1 else [])
        + ([("IR-Score", a) for a in attacks] if ir else [])
        + [("Train time (min)", "")]
    )
    seeds_of = {row: an.train_seeds(row) for row in rows}
    multi = any(len(v) > 1 for v in seeds_of.values())  # a row over several training seeds (--seeds)
    if multi:
        cols.append(("Seeds", ""))
    data, marks, used, flags, spread = [], {}, [], {}, {}
    index = [an.label(r) for r in rows]
    for row, idx in zip(rows, index):
        base = None if row[1] == BASE else {a: an.cell(an.base_row(row), a, an.eps) for a in attacks}
        per_seed, cells_of, any_cs = [], {a: [] for a in attacks}, []
        for s in seeds_of[row]:  # one pass for a row of one seed: the single-run numbers
            vals, cs, any_c = _seed_values(an, row, s, attacks, base, ir, ("SROCC", "worst") in cols)
            used += [c for c in cs.values() if c is not None]
            for a, c in cs.items():
                if c is not None:
                    cells_of[a].append(c)
            if any_c is not None:
                any_cs.append(any_c)
            per_seed.append(vals)
        _row_marks(an, idx, attacks, cells_of, any_cs, base, ir, flags, marks)
        vals = per_seed[0] if len(per_seed) == 1 else _over_seeds(per_seed, cols, idx, spread)
        if multi:
            vals[("Seeds", "")] = len(per_seed)
            spread.pop((idx, ("Seeds", "")), None)
        data.append([vals.get(c, np.nan) for c in cols])
    df = pd.DataFrame(
        data,
        index=pd.MultiIndex.from_tuples(index, names=an.label_names()),
        columns=pd.MultiIndex.from_tuples(cols),
    )
    bold = best(df, exclude=[("Train time (min)", ""), ("Seeds", "")])
    several = sorted({s for r in rows if len(seeds_of[r]) > 1 for s in seeds_of[r]})
    return Table(
        "robustness",
        "Robustness of trained defences (paper Table 3 shape)",
        df,
        caption=_robustness_caption(an, used, ir, several),
        footnote=sig_note(an, "SROCC") + " Train time: clean training; for R/AT/AAT the clean "
        "training plus the fine-tuning. " + items_note(an, rows, attacks, df) + flag_note(flags) + an.provenance(used),
        bold=bold,
        marks=marks,
        flags=flags,
        spread=spread,
        col_precision={("Train time (min)", ""): 1, **({("Seeds", ""): 0} if multi else {})},
    )


def _robustness_caption(an: Analysis, used: list, ir: bool, several: list[int]) -> str:
    seeds_note = (
        f" Rows over several training seeds ({', '.join(map(str, several))}; 'Seeds': how many): "
        f"mean ± sample standard deviation over the seeds, each seed a separate fine-tuning of the "
        f"same clean model; their †/‡ from the two-stage bootstrap that resamples the seeds "
        f"and the photos."
        if several
        else ""
    )
    return (
        f"SROCC of oriented quality vs MOS, clean and under each attack at ε = {an.eps:g}/255 "
        f"('worst': per image the attack that moved it most, on the items all the row's attacks "
        f"share)"
        + (f"; IR-Score over every stored ε ({an.ot} OT; 0.5 = as movable as base, 1 = never moved more)" if ir else "")
        + ". "
        + an.setting(used, f"ε = {an.eps:g}/255" + (" (IR: all stored ε)" if ir else ""))
        + seeds_note
    )


def _seed_values(an: Analysis, row: tuple, s: int, attacks: list[str], base, ir: bool, worst: bool):
    """One training seed's robustness-table values of a row; its cells per attack; any one cell."""
    vals = {}
    cs = {a: an.cell(row, a, an.eps, s) for a in attacks}
    any_c = next((c for c in cs.values() if c is not None), None) or an.cell(row, attacks[0], train_seed=s)
    vals[("SROCC", "clean")] = any_c.clean_metric() if any_c else np.nan
    for a, c in cs.items():
        vals[("SROCC", a)] = c.metric(an.eps) if c else np.nan
        vals[("IR-Score", a)] = an.ir(c, base[a]) if ir and c is not None and base and base[a] is not None else np.nan
    if worst:
        vals[("SROCC", "worst")] = an.worst(list(cs.values()))
    vals[("Train time (min)", "")] = an.train_minutes(any_c) if any_c else np.nan
    return vals, cs, any_c


def _row_marks(an: Analysis, idx, attacks, cells_of, any_cs, base, ir: bool, flags: dict, marks: dict) -> None:
    """A row's flags and its †/‡ against the base row, over every seed of the row (the
    seed-and-photo bootstrap; one seed: the photo bootstrap)."""
    for a in attacks:
        cs_a = cells_of[a]
        _flag(flags, idx, ("SROCC", a), *(cs_a or [None]))
        if cs_a and base and base[a] is not None and ir:
            _flag(flags, idx, ("IR-Score", a), *cs_a, base[a])
        if cs_a and base and base[a] is not None:
            _mark(an, marks, idx, ("SROCC", a), an.compare_seeds(cs_a, [base[a]], an.eps))
    if any_cs and base:
        b = next((x for x in base.values() if x is not None), None)
        if b is not None:
            _mark(an, marks, idx, ("SROCC", "clean"), an.compare_seeds(any_cs, [b], None))


def _over_seeds(per_seed: list[dict], cols, idx, spread: dict) -> dict:
    """Mean ± sample s.d. over the seeds that hold each value (the s.d. into ``spread``)."""
    vals = {}
    for col in cols:
        v = np.array([x.get(col, np.nan) for x in per_seed], dtype=float)
        v = v[np.isfinite(v)]
        vals[col] = float(v.mean()) if v.size else np.nan
        if v.size > 1:
            spread[(idx, col)] = float(v.std(ddof=1))
    return vals


def accuracy_table(an: Analysis, name: str, title: str, rows: list[tuple], shape: str) -> Table | None:
    """Clean + per-attack metric, grouped white-box / black-box (paper Tables 7 and 9)."""
    if not rows:
        return None
    attacks = attack_order(c.attack for c in an.cells if c.row in rows)
    needs = {c.attack: c.needs for c in an.cells if c.row in rows}
    cols = (
        [("", "clean")]
        + [("white-box", a) for a in attacks if needs[a] == "gradients"]
        + [("black-box", a) for a in attacks if needs[a] != "gradients"]
    )
    data, marks, used, flags = [], {}, [], {}
    index = [an.label(r) for r in rows]
    for row, idx in zip(rows, index):
        base_row = an.base_row(row)
        vals = {}
        for grp, a in cols[1:]:
            c = an.cell(row, a, an.eps)
            vals[(grp, a)] = c.metric(an.eps) if c else np.nan
            _flag(flags, idx, (grp, a), c)
            if c is not None:
                used.append(c)
                b = an.cell(base_row, a, an.eps) if row[1] != BASE else None
                if b is not None:
                    _mark(an, marks, idx, (grp, a), an.compare(c, b, an.eps))
        c0 = next((an.cell(row, a) for a in attacks if an.cell(row, a) is not None), None)
        vals[("", "clean")] = c0.clean_metric() if c0 else np.nan
        data.append([vals.get(c, np.nan) for c in cols])
    df = pd.DataFrame(
        data,
        index=pd.MultiIndex.from_tuples(index, names=an.label_names()),
        columns=pd.MultiIndex.from_tuples(cols),
    )
    metric = used[0].metric_name if used else "metric"
    what = "2AFC accuracy (BAPPS formula; the less-preferred image attacked)" if metric != "SROCC" else "SROCC vs MOS"
    return Table(
        name,
        title,
        df,
        caption=(
            f"{what}, clean and under each attack at ε = {an.eps:g}/255 ({shape}). "
            + an.setting(used, f"ε = {an.eps:g}/255")
        ),
        footnote=sig_note(an, metric) + " " + flag_note(flags) + an.provenance(used),
        bold=best(df),
        marks=marks,
        flags=flags,
    )


def flips(an: Analysis) -> Table | None:
    """2AFC decision flips per row × attack and ε: all triplets and those people agree on."""
    rows = an.rows("2afc")
    if not rows:
        return None
    all_eps = sorted({e for c in an.cells if c.kind == "2afc" for e in c.eps})
    data, index, flags, used = [], [], {}, []
    for row in rows:
        for a in attack_order(c.attack for c in an.cells if c.row == row):
            c = an.cell(row, a)
            idx = (*an.label(row), a)
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
                    _flag(flags, idx, (f"{e:g}/255", "all"), c)
            data.append(vals)
    cols = [("2AFC acc.", "clean")] + [(f"{e:g}/255", s) for e in all_eps for s in ("all", "strong")]
    df = pd.DataFrame(
        data,
        index=pd.MultiIndex.from_tuples(index, names=[*an.label_names(), "attack"]),
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
            f"{'/'.join(map(str, n_strong))} triplets). " + an.setting(used, "every stored ε")
        ),
        footnote=flag_note(flags) + an.provenance(used),
        flags=flags,
    )


def twoafc(an: Analysis) -> Table | None:
    return accuracy_table(
        an,
        "twoafc",
        "2AFC accuracy under attack (paper Table 7 shape)",
        an.rows("2afc", lambda c: not c.inference),
        "paper Table 7 shape",
    )


def purification(an: Analysis) -> Table | None:
    """Paper Table 9: per model, base, each inference-time defence, and AAT."""
    for kind in ("2afc", "pairs"):
        purified = an.rows(kind, lambda c: bool(c.inference))
        if purified:
            archs = {r[0] for r in purified}
            rows = an.rows(
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
            return accuracy_table(
                an,
                "purification",
                "Purification defences against AAT (paper Table 9 shape)",
                rows,
                "paper Table 9 shape",
            )
    return None


def sweep(an: Analysis) -> Table | None:
    """Metric per ε for every row × attack (clean = ε 0)."""
    all_eps = sorted({e for c in an.cells for e in c.eps})
    data, index, flags = [], [], {}
    for kind in ("pairs", "2afc"):
        for row in an.rows(kind):
            for a in attack_order(c.attack for c in an.cells if c.row == row):
                c = an.cell(row, a)
                # each ε from the latest cell that holds it: a grid run in slices stores ε 1, 2, 4
                # and ε 8 of one row × attack in two cells
                at = {e: an.cell(row, a, e) or c for e in all_eps}
                idx = (c.metric_name, *an.label(row), a)
                index.append(idx)
                ce = an.cell(row, a, an.eps) or c
                q = ce.q_at(an.eps)
                msu = msu_scores(ce.q_clean, q) if q is not None else {"abs_gain": np.nan, "R": np.nan}
                psnr, ssim = ce.perceptibility(an.eps)
                k = ce.eps_index(an.eps)
                gain = float(np.mean(ce.directed_gain(k))) if k is not None else np.nan
                sd = ce.clean_sd
                data.append(
                    [c.clean_metric()]
                    + [at[e].metric(e) for e in all_eps]
                    + [gain, gain / sd if sd > 0 else np.nan, msu["abs_gain"], msu["R"], psnr, ssim]
                )
                for e in all_eps:
                    if at[e].eps_index(e) is not None:  # no marker on a budget the cell does not hold
                        _flag(flags, idx, f"{e:g}/255", at[e])
    if not data:
        return None
    at_eps = [f"{m}@{an.eps:g}" for m in ("gain", "gain/SD", "MSU gain", "MSU R", "PSNR", "SSIM")]
    cols = ["clean"] + [f"{e:g}/255" for e in all_eps] + at_eps
    df = pd.DataFrame(
        data, index=pd.MultiIndex.from_tuples(index, names=["metric", *an.label_names(), "attack"]), columns=cols
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
            f"{an.eps:g}/255 on min-max scaled scores: mean absolute gain and robustness "
            f"R = log10(max(1−s, s)/(|s − s_adv| + 1e-6)) (higher R = moved less); perceptibility "
            f"at ε = {an.eps:g}/255: mean PSNR (dB, over the images the attack changed) and SSIM "
            f"of the adversarial against the unattacked distorted image. "
        )
        + an.setting(an.cells, "ε in /255 as columns"),
        footnote=flag_note(flags) + an.provenance(an.cells),
        flags=flags,
        col_precision={f"PSNR@{an.eps:g}": 1},
    )


def significance(an: Analysis) -> Table | None:
    """Paired bootstrap of Δmetric over the report's family of comparisons (every defence vs
    base, and what recipes declare: AAT vs R and vs AT), with the multiplicity correction."""
    fam = an.family()
    if not fam:
        return None
    index = []
    for r in fam:
        c = r["cell"]
        who = (*an.label(r["row"])[:-1], f"{defense_label(r['row'][1])} vs {defense_label(r['other'][1])}")
        index.append((c.metric_name, *who, r["attack"], "—" if r["eps"] is None else f"{r['eps']:g}"))
    res = [r["res"] for r in fam]
    df = pd.DataFrame(
        {
            "Δ": [x["delta"] for x in res],
            "median Δ": [x["effect"] for x in res],
            "CI low": [x["ci"][0] for x in res],
            "CI high": [x["ci"][1] for x in res],
            "p": [x["p"] for x in res],
            f"p ({an.correction_name})": [x["p_adjusted"] for x in res],
            "significant": ["yes" if x["significant"] else "no" for x in res],
            "units": [
                f"{x['n_clusters']} {'photos' if x['cluster'] else 'items'}"
                + (f" × {x['n_seeds'][0]}/{x['n_seeds'][1]} seeds" if "n_seeds" in x else "")
                for x in res
            ],
            "flags": [" ".join(r["flags"]) or "—" for r in fam],
        },
        index=pd.MultiIndex.from_tuples(
            index, names=["metric", *an.label_names()[:-1], "comparison", "attack", "ε /255"]
        ),
    )
    labels = sorted({x["units"] for x in res})
    return Table(
        "significance",
        "Paired bootstrap of the metric difference",
        df,
        caption=(
            f"Δ = metric(first) − metric(second) on the same items; median over {an.n_boot} paired "
            f"bootstrap resamples, seed {an.seed}; resampling: {'; '.join(labels)}; 95 % percentile "
            f"CI; p two-sided bootstrap p; significant when the {an.correction_name}-adjusted p "
            f"< 0.05 across all {len(fam)} comparisons of this report. " + an.setting(an.cells, "ε per row")
        ),
        footnote=FL.legend({f for r in fam for f in r["flags"]}) + " " + an.provenance(an.cells),
    )


def ir_table(an: Analysis) -> Table | None:
    """IR-Score per defended row and attack with its 95 % bootstrap CI, by both OT back ends
    (neural, the paper's; exact, the monotone quantile map): where they disagree beyond the
    interval the OT fit, not the defence, decides the number."""
    rows = [r for r in an.rows("pairs", lambda c: not c.inference) if r[1] != BASE]
    if not rows:
        return None
    other = MapCache("exact" if an.ot == "neural" else "neural", an.seed)
    recs, index = [], []
    for row in rows:
        for a in attack_order(c.attack for c in an.cells if c.row == row):
            d, b = an.cell(row, a), an.cell(an.base_row(row), a)
            if d is None or b is None:
                continue
            mine, alt = an.ir_full(d, b), an.ir_full(d, b, other)
            if mine is None:
                continue
            index.append((*an.label(row), a))
            recs.append(
                {
                    f"IR ({an.ot})": mine["ir"],
                    "CI low": mine["ci"][0],
                    "CI high": mine["ci"][1],
                    f"IR ({other.backend})": alt["ir"],
                    "agree": "yes" if mine["ci"][0] <= alt["ir"] <= mine["ci"][1] else "no",
                    "units": mine["units"],
                }
            )
    if not recs:
        return None
    df = pd.DataFrame(recs, index=pd.MultiIndex.from_tuples(index, names=[*an.label_names(), "attack"]))
    return Table(
        "ir",
        "IR-Score with bootstrap intervals, neural and exact OT",
        df,
        caption=(
            f"IR-Score of each defended row vs its base over every stored ε (0.5 = as movable as "
            f"base, 1 = never moved more); 95 % percentile CI from {an.n_boot} bootstrap resamples "
            f"of the per-image wins, conditional on the OT maps fitted once; 'agree': the "
            f"{other.backend} estimate lies inside the {an.ot} interval. Where they disagree ('no') "
            f"the OT fit, not the defence, moves the number: read the exact (monotone quantile) value "
            f"as the reference, and treat the difference as the OT uncertainty (more items per cell "
            f"narrow it). " + an.setting(an.cells, "all ε")
        ),
        footnote=an.provenance(an.cells),
    )


def _flag(flags: dict, idx, col, *cells: CellData | None) -> None:
    """Attach the active flags of the cell(s) behind a value (a defence's IR-Score depends on
    its base cell too)."""
    shown = FL.ordered(f for c in cells if c is not None for f in FL.labels(c.flags))
    if shown:
        flags[(idx, col)] = shown


def items_note(an: Analysis, rows: list[tuple], attacks: list[str], df: pd.DataFrame) -> str:
    """What a reader needs when the row's cells differ in items, and when an attack raised SROCC."""
    notes = []
    for row in rows:
        cs = {a: an.cell(row, a, an.eps) for a in attacks}
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


def flag_note(flags: dict) -> str:
    text = FL.legend({c for v in flags.values() for c in v})
    return text + " " if text else ""


def _mark(an: Analysis, marks: dict, idx, col, res: dict | None) -> None:
    an.family()  # significance after the multiplicity correction of the whole report
    if res and res["significant"]:
        marks[(idx, col)] = "+" if res["effect"] > 0 else "-"


def sig_note(an: Analysis, metric: str) -> str:
    units = sorted({r["res"]["units"] for r in an.family()}) or ["—"]
    return (
        f"† significantly higher, ‡ significantly lower {metric} than the same model's base row (paired "
        f"bootstrap, {an.n_boot} resamples, {'; '.join(units)}; {an.correction_name}-adjusted p < 0.05 "
        f"across the report's comparisons). Bold: best in the column for each model."
    )


def best(df: pd.DataFrame, exclude=()) -> pd.DataFrame:
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


def builders(an: Analysis) -> list[Callable[[Analysis], Table | None]]:
    """This protocol's table builders in report order: the one list (IR-Score on score
    inflation only, as the reference gain script measures gains)."""
    out = [robustness, twoafc, flips, purification, sweep, significance]
    return out + ([ir_table] if an.direction == "up" else [])


def named(an: Analysis, t: Table | None) -> Table | None:
    """A table of this reporter's protocol: named (``robustness-mos-split``), titled and
    captioned with it, and carrying it into report.json."""
    if t is None or t.protocol is not None:
        return t
    t.direction, t.protocol = an.direction, an.protocol
    if an.direction != "up":
        t.name = f"{t.name}-{an.direction}"
    t.title = f"{t.title} — {an.protocol}"
    t.caption = f"Protocol: {an.protocol}: {get_direction(an.direction).summary}. " + t.caption
    return t
