"""The paper side by side: BiRQA paper Tables 3, 7 and 9 next to robench's numbers.

The paper's cells live in ``paper_data/table{3,7,9}.json``: every value the text extraction of
the paper lets one read with certainty, each with its row (model, defence), column (metric,
attack, dataset) and source (table, line of ``birqa-paper.txt``); what the extraction garbled is
listed under ``unreadable`` and never guessed. Each file also holds the qualitative claims the
paper makes in that table's context (``claims``), each with its source.

:func:`write_paper` writes ``paper.md`` and ``paper.tex`` (and ``paper.json``) from a
:class:`~robench.results.analysis.Analysis`:

1. side-by-side tables: paper value | robench value | robench's setting (target, dataset, split,
   profile, image side, n items, ε), rows matched by model, defence and attack; "not measured"
   where robench has no such cell;
2. a claims table: every claim instance marked **reproduced** (robench's paired bootstrap of the
   same pair is significant in the paper's direction after the report's multiplicity
   correction), **contradicted** (significant the other way), **inconclusive** (not significant),
   or **not measured**, with Δ, CI, adjusted p, units and the flags of the cells it rests on.

A quick-profile number is not a reproduction of the paper's number (other images, sizes, item
counts, budgets); only directions are compared, and the files say so at the top.
"""

from __future__ import annotations

import itertools
import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from robench.core import flags as FL
from robench.results.analysis import Analysis
from robench.results.cells import CellData


PAPER_TABLES = (3, 7, 9)
PAPER_FILE = "birqa-paper.txt"

_NAMES = json.loads((Path(__file__).parent / "paper_data" / "names.json").read_text())
#: paper model → robench targets (``CellData.arch``), first preferred
MODEL_TARGETS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _NAMES["MODEL_TARGETS"].items()}
#: paper defence → robench defence name (``CellData.defense``; ``none`` = no defence)
DEFENCE_NAMES: dict[str, str] = dict(_NAMES["DEFENCE_NAMES"])
#: paper column → robench attack (None: the clean column)
ATTACK_NAMES: dict[str, str | None] = dict(_NAMES["ATTACK_NAMES"])
#: paper metric → robench cell kind
METRIC_KIND: dict[str, str] = {
    "SROCC": "pairs",
    "IR-Score": "pairs",
    "train time (min)": "pairs",
    "2AFC accuracy": "2afc",
}
#: the datasets and profile the paper's numbers come from, in robench's names
PAPER_DATASETS = dict(_NAMES["PAPER_DATASETS"])
STATUSES = ("reproduced", "contradicted", "inconclusive", "not measured")
NOT_MEASURED = "not measured"
#: flags of a cell that concern a clean comparison too (the weights, not the attack)
CLEAN_FLAGS = ("vac", "untr", "mask")


# --------------------------------------------------------------------------------------------
# the paper's side: data files


@cache
def _load(n: int) -> str:
    return resources.files("robench.results").joinpath("paper_data", f"table{n}.json").read_text(encoding="utf-8")


def load_table(n: int) -> dict[str, Any]:
    """One paper table's data file (a fresh copy)."""
    if n not in PAPER_TABLES:
        raise KeyError(f"no data file for paper Table {n} (have {', '.join(map(str, PAPER_TABLES))})")
    return json.loads(_load(n))


def paper_tables() -> list[dict[str, Any]]:
    return [load_table(n) for n in PAPER_TABLES]


def paper_value(table: dict, model: str, defence: str, metric: str, attack: str | None) -> float | None:
    for c in table["cells"]:
        if (c["model"], c["defence"], c["metric"], c["attack"]) == (model, defence, metric, attack):
            return float(c["value"])
    return None


def claim_instances(table: dict) -> list[dict[str, Any]]:
    """Every instance of the table's claims: one (model/defence pair, attack) each, with the
    paper's direction (+1: a above b) and the paper's values and Δ where the table prints them."""
    out = []
    for cl in table.get("claims", []):
        vary = cl.get("vary", {})
        keys = list(vary)
        for combo in itertools.product(*(vary[k] for k in keys)) if keys else [()]:
            v = dict(zip(keys, combo))
            a, b = dict(cl["a"]), dict(cl["b"])
            for side, d in (("a", a), ("b", b)):
                for f in ("model", "defence"):
                    if f"{side}_{f}" in v:
                        d[f] = v[f"{side}_{f}"]
                    elif f not in d and f in v:
                        d[f] = v[f]
            for attack in cl["attacks"]:
                direction, src = cl["direction"], cl["source"]
                for ex in cl.get("exceptions", []):
                    conds = {k: x for k, x in ex.items() if k not in ("direction", "source")}
                    here = {
                        "a_model": a["model"],
                        "b_model": b["model"],
                        "a_defence": a["defence"],
                        "b_defence": b["defence"],
                        "attack": attack,
                    }
                    if all(here.get(k) == x for k, x in conds.items()):
                        direction, src = ex["direction"], f"{src}; exception: {ex['source']}"
                fmt = {
                    "model": a["model"],
                    "attack": attack,
                    "b_model": b["model"],
                    "b_defence": b["defence"],
                    "a_defence": a["defence"],
                }
                pa = paper_value(table, a["model"], a["defence"], cl["metric"], attack)
                pb = paper_value(table, b["model"], b["defence"], cl["metric"], attack)
                stmt = cl["statement"].format(**fmt)
                if direction != cl["direction"]:
                    stmt += " — the paper's exception: " + ("lower" if direction == "lower" else "higher")
                out.append(
                    {
                        "claim": cl["id"],
                        "table": table["table"],
                        "metric": cl["metric"],
                        "kind": METRIC_KIND[cl["metric"]],
                        "statement": stmt,
                        "template": cl["statement"],
                        "a": a,
                        "b": b,
                        "attack": attack,
                        "direction": 1 if direction == "higher" else -1,
                        "paper_a": pa,
                        "paper_b": pb,
                        "paper_delta": None if pa is None or pb is None else round(pa - pb, 6),
                        "testable": cl.get("testable", True),
                        "why_untestable": cl.get("why_untestable"),
                        "source": src,
                    }
                )
    return out


# --------------------------------------------------------------------------------------------
# robench's side: rows, values, comparisons


def _matching_rows(rep: Analysis, kind: str, model: str, defence: str) -> list[tuple]:
    """Analysis rows of ``kind`` for a paper (model, defence), preferred target first."""
    archs, dname = MODEL_TARGETS.get(model, ()), DEFENCE_NAMES.get(defence)
    rows = [r for r in rep.rows(kind) if r[0] in archs and r[1] == dname]
    return sorted(rows, key=lambda r: (archs.index(r[0]), r[2:]))


def _any_cell(rep: Analysis, row: tuple) -> CellData | None:
    from robench.results.labels import attack_order

    for a in attack_order(c.attack for c in rep.cells if c.row == row):
        c = rep.cell(row, a)
        if c is not None:
            return c
    return None


def _image_side(dataset: str, profile: str) -> int | None:
    try:
        from robench.core.profiles import get_profile
        from robench.core.registry import DATASETS

        return DATASETS.get(dataset).profile_options(get_profile(profile)).get("size")
    except (KeyError, AttributeError):  # an unregistered (synthetic) dataset or profile: nothing to say
        return None


def setting_of(rep: Analysis, c: CellData | None, row: tuple, eps: str) -> str:
    """robench's setting of a value: target, dataset/split, profile (image side), seed, n, ε."""
    dataset, split, _kind, profile, seed, amp = row[2:]
    side = _image_side(dataset, profile)
    prof = f"{profile} profile" + (f", {side} px" if side else "") + ("" if amp == "fp32" else f", {amp}")
    if c is None:
        return f"{row[0]} · {dataset}/{split} · {prof} · seed {seed}: no such cell"
    return f"{row[0]} · {dataset}/{split} · {prof} · seed {seed} · n = {c.n} · {eps}"


def _codes(*cells: CellData | None, only: tuple[str, ...] | None = None) -> list[str]:
    got = {f for c in cells if c is not None for f in c.active_flags}
    if only is not None:
        got &= set(only)
    return [c for c, _, _ in FL.FLAGS if c in got]


def robench_value(rep: Analysis, row: tuple, metric: str, attack: str | None) -> dict[str, Any]:
    """robench's number for one paper cell on one row: value (NaN: not measured), setting, flags."""
    eps_txt = f"ε = {rep.eps:g}/255"
    atk = ATTACK_NAMES.get(attack) if attack is not None else None
    if metric == "train time (min)":
        c = _any_cell(rep, row)
        v = rep.train_minutes(c) if c is not None else float("nan")
        return {"value": v, "setting": setting_of(rep, c, row, "training"), "flags": [], "note": ""}
    if metric == "IR-Score":
        c = rep.cell(row, atk, rep.eps) if atk else None
        b = rep.cell(rep.base_row(row), atk, rep.eps) if atk else None
        if c is None or b is None or row[1] == DEFENCE_NAMES["base"]:
            return {"value": float("nan"), "setting": setting_of(rep, c, row, "all stored ε"), "flags": [], "note": ""}
        full = getattr(rep, "ir_full", None)
        res = full(c, b) if full is not None else None
        v = res["ir"] if res else rep.ir(c, b)
        note = f"CI [{res['ci'][0]:.3f}, {res['ci'][1]:.3f}]" if res and "ci" in res else ""
        eps_all = ", ".join(f"{e:g}" for e in c.eps if b.eps_index(e) is not None)
        return {
            "value": float(v),
            "setting": setting_of(rep, c, row, f"ε ∈ {{{eps_all}}}/255, {rep.ot} OT"),
            "flags": _codes(c, b),
            "note": note,
        }
    if atk is None and attack == "clean":
        c = _any_cell(rep, row)
        v = c.clean_metric() if c is not None else float("nan")
        return {
            "value": v,
            "setting": setting_of(rep, c, row, "clean"),
            "flags": _codes(c, only=CLEAN_FLAGS),
            "note": "",
        }
    c = rep.cell(row, atk, rep.eps) if atk else None
    v = c.metric(rep.eps) if c is not None else float("nan")
    return {"value": v, "setting": setting_of(rep, c, row, eps_txt), "flags": _codes(c), "note": ""}


def side_by_side(rep: Analysis, table: dict) -> list[dict[str, Any]]:
    """One line per paper cell and matching robench row ("not measured" when none matches)."""
    out = []
    for cell in table["cells"]:
        kind = METRIC_KIND[cell["metric"]]
        rows = _matching_rows(rep, kind, cell["model"], cell["defence"])
        base = {
            "model": cell["model"],
            "defence": cell["defence"],
            "metric": cell["metric"],
            "attack": cell["attack"],
            "paper": cell["value"],
            "source": cell["source"],
        }
        if not rows:
            out.append({**base, "robench": None, "setting": NOT_MEASURED, "flags": [], "note": ""})
            continue
        for row in rows:
            r = robench_value(rep, row, cell["metric"], cell["attack"])
            v = r["value"]
            out.append(
                {
                    **base,
                    "robench": None if v is None or not math.isfinite(v) else float(v),
                    "setting": r["setting"],
                    "flags": r["flags"],
                    "note": r["note"],
                }
            )
    return out


def _row_pairs(rep: Analysis, inst: dict) -> list[tuple[tuple, tuple]]:
    ra = _matching_rows(rep, inst["kind"], inst["a"]["model"], inst["a"]["defence"])
    rb = _matching_rows(rep, inst["kind"], inst["b"]["model"], inst["b"]["defence"])
    same_model = inst["a"]["model"] == inst["b"]["model"]
    return [(x, y) for x in ra for y in rb if x[2:] == y[2:] and (not same_model or x[0] == y[0])]


def _descriptive(rep: Analysis, inst: dict) -> str:
    """robench's own values of an untested claim's two sides, for the reader (no verdict)."""
    parts = []
    for ra, rb in _row_pairs(rep, inst):
        va, vb = (robench_value(rep, r, inst["metric"], inst["attack"]) for r in (ra, rb))
        if all(v["value"] is not None and math.isfinite(v["value"]) for v in (va, vb)):
            parts.append(
                f"{ra[0]} {ra[1]} {va['value']:.3f}{(' ' + va['note']) if va['note'] else ''} vs "
                f"{rb[0]} {rb[1]} {vb['value']:.3f}{(' ' + vb['note']) if vb['note'] else ''} ({ra[2]}/{ra[3]})"
            )
    return "; robench's values (descriptive, no test): " + "; ".join(parts) if parts else ""


def _family_lookup(rep: Analysis) -> dict[tuple, dict]:
    out = {}
    for rec in rep.family():
        key = (rec["row"], rec["other"], rec["attack"], None if rec["eps"] is None else round(float(rec["eps"]), 9))
        out[key] = rec
    return out


def _flip(res: dict) -> dict:
    lo, hi = res["ci"]
    return {**res, "delta": -res["delta"], "effect": -res["effect"], "ci": [-hi, -lo]}


def evaluate_claims(rep: Analysis) -> list[dict[str, Any]]:
    """Every claim instance of Tables 3, 7, 9 against robench: one record per instance and
    matching robench row pair, with its status and reason (module docstring)."""
    fam = rep.family()
    lookup = _family_lookup(rep)
    records, extras = [], {}
    for table in paper_tables():
        for inst in claim_instances(table):
            records += _instance_records(rep, inst, lookup, extras)
    _adjust_extras(rep, fam, extras)
    for rec in records:
        if "res" in rec:
            _classify(rep, rec, len(fam))
    budget_agreement(records)  # each record's "across_eps"
    return records


_INSTANCE_FIELDS = (
    "claim",
    "table",
    "metric",
    "statement",
    "attack",
    "direction",
    "paper_a",
    "paper_b",
    "paper_delta",
    "source",
)


def _instance_records(rep: Analysis, inst: dict, lookup: dict, extras: dict) -> list[dict[str, Any]]:
    """One claim instance's records: one per matching robench row pair and budget, or one
    "not measured" record saying why."""
    base = {k: inst[k] for k in _INSTANCE_FIELDS}
    base["a"] = f"{inst['a']['defence']} {inst['a']['model']}"
    base["b"] = f"{inst['b']['defence']} {inst['b']['model']}"
    if not inst["testable"]:
        why = inst["why_untestable"] + _descriptive(rep, inst)
        return [{**base, "setting": "—", "status": NOT_MEASURED, "flags": [], "reason": why}]
    pairs = _row_pairs(rep, inst)
    if not pairs:
        missing = [
            f"{s['defence']} {s['model']}"
            for s in (inst["a"], inst["b"])
            if not _matching_rows(rep, inst["kind"], s["model"], s["defence"])
        ]
        why = (
            f"robench has no {' and no '.join(missing)} row on {inst['kind']} data"
            if missing
            else "robench's rows of the two sides share no setting (dataset, split, profile, seed)"
        )
        return [{**base, "setting": "—", "status": NOT_MEASURED, "reason": why, "flags": []}]
    atk = ATTACK_NAMES[inst["attack"]]
    records = []
    for ra, rb in pairs:
        budgets = [None] if atk is None else rep.all_eps
        got = [_claim_at(rep, base, ra, rb, atk, e, lookup, extras) for e in budgets]
        measured = [r for r in got if "res" in r]
        # every budget the pair was compared at; "not measured" once when it was at none
        records += measured or [next((r for r in got if r["eps"] in (None, rep.eps)), got[0])]
    return records


def _adjust_extras(rep: Analysis, fam: list[dict], extras: dict) -> None:
    """Comparisons outside the report's family, corrected together with it (a larger family can
    only raise the adjusted p of Holm / BH, never lower it)."""
    from robench.core.stats import benjamini_hochberg, holm

    if not extras:
        return
    adjust = holm if rep.correction == "holm" else benjamini_hochberg
    keys = [k for k, v in extras.items() if v is not None]
    p = [r["res"]["p"] for r in fam] + [extras[k]["p"] for k in keys]
    adj = adjust(p)[len(fam) :]
    for k, pa in zip(keys, adj):
        extras[k]["p_adjusted"] = float(pa)
        extras[k]["significant"] = bool(np.isfinite(pa) and pa < 0.05)
        extras[k]["family_size"] = len(p)


def _claim_at(
    rep: Analysis, base: dict, ra: tuple, rb: tuple, atk: str | None, e: float | None, lookup: dict, extras: dict
) -> dict:
    """One claim instance on one robench row pair at one ε (None: clean): the family's
    comparison when it holds it, else a comparison outside it (``extras``, corrected later), else
    a "not measured" record saying why."""
    clean = atk is None
    rec = {
        **base,
        "row_a": ra,
        "row_b": rb,
        "robench_a": f"{ra[0]} {ra[1]}",
        "robench_b": f"{rb[0]} {rb[1]}",
        "eps": e,
        "readings": None if clean else eps_readings(e),
    }
    eps_key = None if clean else round(float(e), 9)
    fam_key = (ra, rb, "clean", None) if clean else (ra, rb, atk, eps_key)
    rev_key = (rb, ra, "clean", None) if clean else (rb, ra, atk, eps_key)
    if fam_key in lookup or rev_key in lookup:
        f = lookup.get(fam_key) or lookup[rev_key]
        res = f["res"] if fam_key in lookup else _flip(f["res"])
        ca, cb = (f["cell"], f["versus_cell"]) if fam_key in lookup else (f["versus_cell"], f["cell"])
        rec.update(res=res, in_family=True)
    else:
        if clean:
            ca, cb = _any_cell(rep, ra), _any_cell(rep, rb)
            shared = [c for c in rep.cells if c.row == ra and rep.cell(rb, c.attack) is not None]
            if shared:  # the same attack's cells: the same items
                ca, cb = shared[-1], rep.cell(rb, shared[-1].attack)
        else:
            ca, cb = rep.cell(ra, atk, e), rep.cell(rb, atk, e)
        if ca is None or cb is None:
            who = " and ".join(f"{r[0]} {r[1]}" for r, c in ((ra, ca), (rb, cb)) if c is None)
            rec.update(
                setting=setting_of(rep, None, ra, "—"),
                status=NOT_MEASURED,
                flags=[],
                reason=f"robench has no cell of {who} under {atk} at any ε of the store",
            )
            return rec
        key = (ca.key, cb.key, e)
        if key not in extras:
            got = rep.compare(ca, cb, e)
            extras[key] = None if got is None else dict(got)
        if extras[key] is None:
            rec.update(
                setting=setting_of(rep, ca, ra, "—"),
                status=NOT_MEASURED,
                flags=[],
                reason="robench's two cells share fewer than 3 items: no comparison",
            )
            return rec
        rec.update(res=extras[key], in_family=False)
    rec["setting"] = setting_of(rep, ca, ra, "clean" if clean else f"ε = {e:g}/255")
    rec["flags"] = _codes(ca, cb, only=CLEAN_FLAGS if clean else None)
    return rec


#: the paper's "ε k/255" read two ways (its budget is lost in the text extraction): in [0, 1]
#: pixel units, robench's own (the BiRQA author's attack code, the AT- authors' training code), or
#: in [−1, 1] (the AT- authors' LPIPS KADID-10k script), which is robench's k/510
EPS_READINGS = (("[0, 1]", 1.0), ("[−1, 1]", 2.0))


def eps_readings(e: float) -> str:
    """What robench's ε = e/255 is in the paper's units under each reading."""
    return "; ".join(f"paper {e * f:g}/255 in {name}" for name, f in EPS_READINGS)


def budget_agreement(records: list[dict]) -> list[dict]:
    """Per claim instance and robench row pair measured at more than one ε: whether its verdict
    is the same at every budget, and the verdict per ε. Sets ``across_eps`` on each record."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("eps") is not None and r["status"] != NOT_MEASURED:
            groups.setdefault(
                (r["claim"], r["a"], r["b"], r["attack"], r.get("robench_a"), r.get("robench_b")), []
            ).append(r)
    out = []
    for (claim, a, b, attack, _ra, _rb), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["eps"])
        same = len({r["status"] for r in rs}) == 1
        per = ", ".join(f"ε {r['eps']:g}: {r['status']}" for r in rs)
        for r in rs:
            r["across_eps"] = ("same at every ε measured" if same else "differs across ε") + f" ({per})"
        if len(rs) > 1:
            out.append(
                {
                    "claim": claim,
                    "instance": f"{a} vs {b} · {attack}",
                    "same": same,
                    "per_eps": per,
                    "robench": f"{rs[0].get('robench_a')} vs {rs[0].get('robench_b')}",
                }
            )
    return out


def _num(x: float, fmt: str = "+.3f") -> str:
    return "nan" if x is None or not np.isfinite(x) else format(x, fmt)


def _classify(rep: Analysis, rec: dict, n_family: int) -> None:
    res = rec["res"]
    delta, effect, (lo, hi) = res["delta"], res["effect"], res["ci"]
    pa = res.get("p_adjusted", float("nan"))
    units = res.get("units") or f"{res.get('n_clusters', '?')} units"
    stats = (
        f"Δ {_num(delta)} (median {_num(effect)}), 95 % CI [{_num(lo)}, {_num(hi)}], "
        f"{rep.correction_name}-adjusted p {_num(pa, '.3g')}; {res['n_items']} items, {units}"
    )
    where = (
        "in the report's family"
        if rec.get("in_family")
        else f"outside the report's family: adjusted together with its {n_family} comparisons "
        f"(m = {res.get('family_size', n_family)})"
    )
    want, pd_ = rec["direction"], rec["paper_delta"]
    sign = 0 if not np.isfinite(effect) or effect == 0 else (1 if effect > 0 else -1)
    covers_paper = pd_ is not None and np.isfinite(lo) and lo <= pd_ <= hi
    paper_txt = (
        ""
        if pd_ is None
        else (
            f"; the paper's Δ {pd_:+.3f} is {'inside' if covers_paper else 'outside'} "
            "robench's CI (magnitudes are not comparable across scales)"
        )
    )
    if res.get("significant") and sign == want:
        status, why = "reproduced", "significant in the paper's direction"
    elif res.get("significant") and sign == -want:
        status, why = "contradicted", "significant in the opposite direction"
    else:
        covers0 = np.isfinite(lo) and lo <= 0 <= hi
        why = (
            "not significant after the correction"
            + ("; the CI covers 0" if covers0 else "")
            + (" and the paper's Δ" if covers0 and covers_paper else "")
        )
        status = "inconclusive"
    flag_txt = ""
    if rec["flags"]:
        flag_txt = "; rests on flagged cell(s): " + ", ".join(f"[{c}] {FL.LEGEND[c]}" for c in rec["flags"])
    rec.update(
        status=status,
        reason=f"{why}: {stats} ({where}){paper_txt}{flag_txt}",
        delta=delta,
        effect=effect,
        ci=[lo, hi],
        p=res.get("p"),
        p_adjusted=pa,
        significant=bool(res.get("significant")),
        n_items=res["n_items"],
        n_clusters=res.get("n_clusters"),
        units=units,
    )


# --------------------------------------------------------------------------------------------
# writers


def scale_note(rep: Analysis) -> str:
    """What the paper measured against what robench measured: the honest header of both files."""
    settings = {}
    for c in rep.cells:
        dataset, split, kind, profile, seed, _amp = c.row[2:]
        side = _image_side(dataset, profile)
        k = (dataset, split, kind, profile)
        s = settings.setdefault(k, {"n": set(), "side": side, "seeds": set()})
        s["n"].add(c.n)
        s["seeds"].add(seed)
    parts = []
    for (dataset, split, kind, profile), s in sorted(settings.items()):
        n = "/".join(str(x) for x in sorted(s["n"]))
        px = f", {s['side']} px images" if s["side"] else ""
        parts.append(
            f"{dataset} ({kind}, {split} split, {profile} profile{px}, {n} items per cell, "
            f"seed {', '.join(map(str, sorted(s['seeds'])))})"
        )
    paper_like = all(
        profile == "paper" and dataset == PAPER_DATASETS.get(kind) for (dataset, _split, kind, profile) in settings
    )
    text = (
        "The paper measures Table 3 on KADID-10k's test split (512×384 images, not cropped) and Tables 7 and 9 "
        "on the BAPPS 2AFC test set, with its own trained weights, its attack budgets (lost in the text "
        "extraction) and a 1k-resample bootstrap. robench measured here: "
        + "; ".join(parts)
        + f"; attacks at ε = {', '.join(f'{e:g}' for e in rep.all_eps)}/255 (the side-by-side tables at "
        f"{rep.eps:g}/255); {rep.n_boot} bootstrap resamples "
        f"({rep.bootstrap} units), {rep.correction_name} correction. "
        "Protocol: the paper's SROCC-under-attack columns come from the ranking attack (mos-split: every image "
        "rated above the mean MOS pushed down, the rest up, as in the AT- authors' KADID-10k code); robench "
        "compares them with its mos-split cells where the store has them (each row names its protocol), and "
        "IR-Score with score inflation (up), as the reference gain script. ε convention: robench's ε is in "
        "[0, 1] pixel units. The paper's budget is lost in the text extraction, and its authors' code uses "
        "both conventions (the AT- authors' LPIPS KADID-10k script normalises images to [−1, 1], where "
        "'ε k/255' is robench's k/510; their AT training code and the BiRQA author's attack code work in "
        "[0, 1]): every claim instance is evaluated at every ε of the store and names the paper's ε under "
        "both readings. "
    )
    if paper_like:
        text += (
            "Even at the paper profile, robench trains its own weights and implements the attacks from their "
            "descriptions: a robench number is compared with the paper's by direction, not by value."
        )
    else:
        text += (
            "These are not the paper's settings: a robench number here is NOT a reproduction of the paper's "
            "number (other images, image size, item counts and budgets). Only the direction of each claim is "
            "compared, and only where robench's paired bootstrap says the sign is not noise."
        )
    return text


def _fmt(v: Any, metric: str = "", robench: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return NOT_MEASURED if robench else "—"
    if metric == "train time (min)":
        return f"{v:.1f}" if robench else f"{v:g}"
    return f"{v:.3f}"


def _summary(records: list[dict]) -> list[dict]:
    """Per claim: its statement (with placeholders), source and the count of instances per status."""
    out = {
        cl["id"]: {
            "claim": cl["id"],
            "table": t["table"],
            "template": cl["statement"],
            "source": cl["source"],
            **{k: 0 for k in STATUSES},
        }
        for t in paper_tables()
        for cl in t["claims"]
    }
    for r in records:
        out[r["claim"]][r["status"]] += 1
    return list(out.values())


def _instance(r: dict) -> str:
    return f"{r['a']} vs {r['b']} · {r['attack']}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(esc(x) for x in r) + " |" for r in rows
    ]


def to_markdown(rep: Analysis, tables: list[dict], sides: dict[int, list[dict]], records: list[dict]) -> str:
    lines = [
        "# The paper side by side",
        "",
        f"**Scale.** {scale_note(rep)}",
        "",
        (
            "Paper cells are read from the text extraction of the paper (`birqa-paper.txt`); a cell the extraction "
            "garbled is listed under *unreadable*, never guessed. Claim statuses: **reproduced** — robench's paired "
            "bootstrap of the same pair is significant in the paper's direction after the report's "
            f"{rep.correction_name} correction; **contradicted** — significant in the opposite direction; "
            "**inconclusive** — not significant; **not measured** — robench has no such comparison."
        ),
        "",
        "## Claims",
        "",
    ]
    summ = _summary(records)
    lines += _md_table(
        ["claim", "table", "statement", "source", *STATUSES],
        [[s["claim"], str(s["table"]), s["template"], s["source"], *(str(s[k]) for k in STATUSES)] for s in summ],
    )
    lines += _md_budgets(records)
    lines += _md_instances(rep, records)
    for t in tables:
        lines += _md_side_table(t, sides[t["table"]])
    return "\n".join(lines) + "\n"


def _md_budgets(records: list[dict]) -> list[str]:
    """Whether each claim's verdict is the same at every ε (both readings of the paper's units)."""
    lines: list[str] = []
    agree = budget_agreement(records)
    if agree:
        per_claim: dict[str, list[bool]] = {}
        for g in agree:
            per_claim.setdefault(g["claim"], []).append(g["same"])
        lines += [
            "",
            "### The same verdict at every budget?",
            "",
            "Claim instances measured at more than one ε: whether robench's verdict is the same at each. "
            "robench's ε = e/255 is the paper's e/255 if the paper's pixels are in [0, 1] and its 2e/255 if "
            "they are in [−1, 1] (the paper's budget is lost in the text; both conventions occur in its "
            "authors' code).",
            "",
        ]
        lines += _md_table(
            ["claim", "instances at ≥ 2 ε", "same verdict at every ε", "differs"],
            [[c, str(len(v)), str(sum(v)), str(len(v) - sum(v))] for c, v in per_claim.items()],
        )
        differ = [g for g in agree if not g["same"]]
        if differ:
            lines += ["", "Instances whose verdict changes with the budget:", ""]
            lines += _md_table(
                ["claim", "instance", "robench rows", "verdict per ε"],
                [[g["claim"], g["instance"], g["robench"], g["per_eps"]] for g in differ],
            )
    return lines


def _md_instances(rep: Analysis, records: list[dict]) -> list[str]:
    """Every claim instance with its ε, both readings, robench's Δ and status."""
    lines: list[str] = []
    lines += ["", "### Every claim instance", ""]
    lines += _md_table(
        [
            "claim",
            "instance",
            "ε (paper's units, both readings)",
            "paper (a, b, Δ)",
            "robench setting",
            "robench Δ [95 % CI]",
            f"p ({rep.correction_name})",
            "n",
            "flags",
            "status",
            "reason",
        ],
        [
            [
                r["claim"],
                _instance(r),
                "clean"
                if r.get("eps") is None and r.get("attack") == "clean"
                else (f"{r['eps']:g}/255 ({r['readings']})" if r.get("eps") is not None else "—"),
                (
                    "—"
                    if r["paper_delta"] is None
                    else f"{r['paper_a']:.3f}, {r['paper_b']:.3f}, {r['paper_delta']:+.3f}"
                ),
                r.get("setting", "—"),
                (f"{_num(r['delta'])} [{_num(r['ci'][0])}, {_num(r['ci'][1])}]" if "delta" in r else "—"),
                _num(r["p_adjusted"], ".3g") if "p_adjusted" in r else "—",
                (f"{r['n_items']} items, {r['units']}" if "n_items" in r else "—"),
                " ".join(r["flags"]) or "—",
                f"**{r['status']}**",
                r["reason"],
            ]
            for r in records
        ],
    )
    legend = FL.legend({f for r in records for f in r["flags"]})
    if legend:
        lines += ["", legend]
    return lines


def _md_side_table(t: dict, sides: list[dict]) -> list[str]:
    """One paper table beside robench's values."""
    lines: list[str] = []
    n = t["table"]
    lines += [
        "",
        f"## Table {n}: {t['title']}",
        "",
        f"Paper: {t['dataset']}. Identified: {t['identified_by']}.",
        "",
    ]
    lines += _md_table(
        ["model", "defence", "metric", "attack", "paper", "robench", "robench setting"],
        [
            [
                s["model"],
                s["defence"],
                s["metric"],
                s["attack"] or "—",
                _fmt(s["paper"], s["metric"]),
                _fmt(s["robench"], s["metric"], robench=True)
                + (f" {s['note']}" if s["note"] else "")
                + (f" [{','.join(s['flags'])}]" if s["flags"] else ""),
                s["setting"],
            ]
            for s in sides
        ],
    )
    legend = FL.legend({f for s in sides for f in s["flags"]})
    if legend:
        lines += ["", legend]
    lines += ["", "Notes: " + " ".join(t.get("notes", [])) if t.get("notes") else ""]
    if t.get("not_reported"):
        lines += [
            "",
            "Not reported in the paper (printed '—'): "
            + "; ".join(f"{x['defence']} {x['model']} {x['metric']} {x['attack']}" for x in t["not_reported"])
            + f" — {t['not_reported'][0]['why']}.",
        ]
    lines += ["", "Unreadable in the extraction:"] + [
        f"- {u['what']} ({u['where']}): {u['why']}" for u in t["unreadable"]
    ]
    return lines


def _tex(text: Any) -> str:
    """LaTeX-escaped text (the report's escaping; braces and ∈ too, which it leaves alone)."""
    from robench.results.latex import latex_escape as _latex_escape

    text = str(text).replace("{", "\x01").replace("}", "\x02").replace("∈", "\x03")
    return _latex_escape(text).replace("\x01", "\\{").replace("\x02", "\\}").replace("\x03", "$\\in$")


def _tex_tables(
    caption: str,
    label: str,
    colspec: str,
    header: list[str],
    rows: list[list[str]],
    chunk: int = 34,
    size: str = "\\scriptsize",
) -> list[str]:
    """booktabs floats of at most ``chunk`` rows each (a long table split, captions continued)."""
    out = []
    parts = [rows[i : i + chunk] for i in range(0, len(rows), chunk)] or [[]]
    for k, part in enumerate(parts):
        cap = caption if k == 0 else f"{caption} (continued, {k + 1}/{len(parts)})"
        body = [" & ".join(header) + " \\\\", "\\midrule"] + [" & ".join(r) + " \\\\" for r in part]
        out += [
            "\\begin{table}[p]",
            "\\centering",
            size,
            f"\\caption{{{_tex(cap)}}}" + (f"\\label{{{label}}}" if k == 0 else ""),
            "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
            f"\\begin{{tabular}}{{{colspec}}}",
            "\\toprule",
            *body,
            "\\bottomrule",
            "\\end{tabular}}",
            "\\end{table}",
            "",
        ]
    return out


def to_latex(rep: Analysis, tables: list[dict], sides: dict[int, list[dict]], records: list[dict]) -> str:
    out = [
        "% The paper side by side (robench.results.paper): paper Tables 3, 7, 9 against robench",
        "\\paragraph{The paper side by side.} " + _tex(scale_note(rep)),
        "",
    ]
    out += _tex_claim_summary(rep, records)
    out.append("\\clearpage")
    out += _tex_claim_instances(rep, records)
    for t in tables:
        out.append("\\clearpage")
        out += _tex_paper_table(t, sides[t["table"]])
    return "\n".join(out) + "\n"


def _tex_claim_summary(rep: Analysis, records: list[dict]) -> list[str]:
    return _tex_tables(
        f"Paper claims (Tables 3, 7, 9) against robench: instances per status. Reproduced: robench's "
        f"paired bootstrap of the same pair significant in the paper's direction after the "
        f"{rep.correction_name} correction; contradicted: significant the other way; inconclusive: "
        f"not significant; not measured: no such comparison in robench.",
        "tab:paper-claims",
        "llp{0.32\\linewidth}p{0.3\\linewidth}rrrr",
        ["claim", "table", "statement", "source", "repr.", "contr.", "inconcl.", "not meas."],
        [
            [_tex(s["claim"]), str(s["table"]), _tex(s["template"]), _tex(s["source"]), *(str(s[k]) for k in STATUSES)]
            for s in _summary(records)
        ],
        chunk=20,
    )


def _tex_claim_instances(rep: Analysis, records: list[dict]) -> list[str]:
    legend = FL.legend({f for r in records for f in r["flags"]})
    return _tex_tables(
        "Every paper claim instance against robench's comparison of the same pair. " + (legend + " " if legend else ""),
        "tab:paper-claim-instances",
        "p{0.1\\linewidth}p{0.17\\linewidth}lrlll p{0.35\\linewidth}",
        [
            "claim",
            "instance",
            "paper $\\Delta$",
            "robench $\\Delta$ [CI]",
            f"p ({_tex(rep.correction_name)})",
            "flags",
            "status",
            "reason",
        ],
        [
            [
                _tex(r["claim"]),
                _tex(_instance(r)),
                "--" if r["paper_delta"] is None else f"{r['paper_delta']:+.3f}",
                (_tex(f"{_num(r['delta'])} [{_num(r['ci'][0])}, {_num(r['ci'][1])}]") if "delta" in r else "--"),
                _tex(_num(r["p_adjusted"], ".3g")) if "p_adjusted" in r else "--",
                _tex(" ".join(r["flags"]) or "—"),
                "\\textbf{" + _tex(r["status"]) + "}",
                _tex(r["reason"] + " Setting: " + r.get("setting", "—")),
            ]
            for r in records
        ],
        chunk=22,
    )


def _tex_paper_table(t: dict, side: list[dict]) -> list[str]:
    n = t["table"]
    legend = FL.legend({f for s in side for f in s["flags"]})
    unread = " ".join(f"{u['what']}: {u['why']}." for u in t["unreadable"])
    return _tex_tables(
        f"Paper Table {n} ({t['title']}; paper: {t['dataset']}) beside robench. "
        + (legend + " " if legend else "")
        + f"Unreadable in the extraction: {unread}",
        f"tab:paper-table{n}",
        "llllrrp{0.42\\linewidth}",
        ["model", "defence", "metric", "attack", "paper", "robench", "robench setting"],
        [
            [
                _tex(s["model"]),
                _tex(s["defence"]),
                _tex(s["metric"]),
                _tex(s["attack"] or "—"),
                _fmt(s["paper"], s["metric"]),
                _tex(
                    _fmt(s["robench"], s["metric"], robench=True) + (f" [{','.join(s['flags'])}]" if s["flags"] else "")
                ),
                _tex(s["setting"] + (f"; {s['note']}" if s["note"] else "")),
            ]
            for s in side
        ],
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if k not in ("res",)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _ranked(ranking: Analysis | None, metric: str, attack: str | None) -> bool:
    """Whether a paper number is an SROCC under attack: the paper's SROCC columns come from the
    ranking attack (mos-split), so robench compares them with its mos-split cells when it has them."""
    return ranking is not None and metric == "SROCC" and attack not in (None, "clean")


def _protocol_setting(r: Analysis, setting: str) -> str:
    return f"{r.protocol} · {setting}" if setting and setting != "—" else setting


def write_paper(rep: Analysis, folder: Path, ranking: Analysis | None = None) -> list[str]:
    """``paper.md``, ``paper.tex`` and ``paper.json`` under ``folder``: the paper's Tables 3, 7, 9
    and claims beside robench's measurements (module docstring). ``rep``: score inflation (IR-Score,
    clean numbers, 2AFC); ``ranking``: the mos-split cells, which the paper's SROCC-under-attack
    columns are compared with (every row names its protocol). Returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = paper_tables()
    sides = {}
    for t in tables:
        rows = []
        for cell in t["cells"]:
            r = ranking if _ranked(ranking, cell["metric"], cell["attack"]) else rep
            for x in side_by_side(r, {**t, "cells": [cell]}):
                rows.append({**x, "protocol": r.protocol, "setting": _protocol_setting(r, x["setting"])})
        sides[t["table"]] = rows
    records = []
    for r in [rep] + ([ranking] if ranking is not None else []):
        for x in evaluate_claims(r):
            if (r is ranking) == _ranked(ranking, x["metric"], x["attack"]):
                records.append({**x, "protocol": r.protocol, "setting": _protocol_setting(r, x.get("setting", "—"))})
    (folder / "paper.md").write_text(to_markdown(rep, tables, sides, records), encoding="utf-8")
    (folder / "paper.tex").write_text(to_latex(rep, tables, sides, records), encoding="utf-8")
    (folder / "paper.json").write_text(
        json.dumps(
            _jsonable(
                {
                    "scale": scale_note(rep),
                    "eps": rep.eps,
                    "correction": rep.correction,
                    "n_boot": rep.n_boot,
                    "claims_summary": _summary(records),
                    "claims": records,
                    "side_by_side": {str(k): v for k, v in sides.items()},
                    "unreadable": {str(t["table"]): t["unreadable"] for t in tables},
                }
            ),
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return ["paper.md", "paper.tex", "paper.json"]
