"""The paper side by side (issue 17.9): the paper's Tables 3, 7, 9 as data, and the claims
classification (reproduced / contradicted / inconclusive / not measured) on synthetic rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from robench.results import paper as P

# --------------------------------------------------------------------------------------------
# the data files


def test_paper_tables_load_finite_with_sources():
    tables = P.paper_tables()
    assert [t["table"] for t in tables] == [3, 7, 9]
    counts = {t["table"]: len(t["cells"]) for t in tables}
    # Table 3: 12 rows × 10 columns less the 12 base-row IR-Scores printed '—'; 7: 12 × 8; 9: 5 × 8
    assert counts == {3: 108, 7: 96, 9: 40}
    for t in tables:
        assert t["unreadable"] and all(u["what"] and u["where"] and u["why"] for u in t["unreadable"])
        keys = set()
        for c in t["cells"]:
            assert isinstance(c["value"], float) and math.isfinite(c["value"]), c
            assert c["source"].startswith(f"Table {t['table']}; birqa-paper.txt line "), c
            assert c["model"] in P.MODEL_TARGETS and c["defence"] in P.DEFENCE_NAMES and c["metric"] in P.METRIC_KIND
            assert c["attack"] is None or c["attack"] in P.ATTACK_NAMES
            key = (c["model"], c["defence"], c["metric"], c["attack"])
            assert key not in keys  # one value per cell
            keys.add(key)
        for c in t.get("not_reported", []):
            assert c["printed"] == "—" and c["why"] and "value" not in c
    t3, t7, t9 = tables
    # spot checks against the text (lines 88, 99, 249, 284)
    assert P.paper_value(t3, "LPIPS", "base", "SROCC", "clean") == 0.893
    assert P.paper_value(t3, "BiRQA", "AAT", "IR-Score", "FACPA") == 0.650
    assert P.paper_value(t3, "BiRQA", "AAT", "train time (min)", None) == 259
    assert P.paper_value(t7, "LPIPS", "base", "2AFC accuracy", "C&W") == 0.102
    assert P.paper_value(t9, "BiRQA", "DiffPure", "2AFC accuracy", "SquareAttack") == 0.712
    # Table 9's base and AAT rows repeat Table 7's (the reason its metric is read as BAPPS 2AFC accuracy)
    for d in ("base", "AAT"):
        for a in ("clean", "FGSM", "Parsimonious"):
            assert P.paper_value(t9, "BiRQA", d, "2AFC accuracy", a) == P.paper_value(
                t7, "BiRQA", d, "2AFC accuracy", a
            )


def test_claims_follow_the_papers_own_numbers():
    """Every claim instance's direction is the sign of the paper's values (the text's claims and
    its tables agree, the DiffPure-on-Square exception included); untestable claims say why."""
    n = 0
    for t in P.paper_tables():
        ids = [c["id"] for c in t["claims"]]
        assert len(ids) == len(set(ids)) and all(c["source"] for c in t["claims"])
        for inst in P.claim_instances(t):
            n += 1
            if not inst["testable"]:
                assert inst["why_untestable"]
            if inst["paper_delta"] is None:
                assert not inst["testable"]  # only the IR-Score claim on base rows has no printed values
                continue
            assert np.sign(inst["paper_delta"]) == inst["direction"], inst
    assert n > 150
    t9 = P.load_table(9)
    ex = [i for i in P.claim_instances(t9) if i["b"]["defence"] == "DiffPure" and i["attack"] == "SquareAttack"]
    assert len(ex) == 1 and ex[0]["direction"] == -1 and "exception" in ex[0]["source"]


# --------------------------------------------------------------------------------------------
# a synthetic Analysis: hand-checkable cases


def _twoafc_cell(target, arch, defense, training, inference, attack, needs, gain, rng_seed=0, n=80):
    """A 2AFC cell built directly: the less-preferred image attacked, its quality raised by
    ``gain`` per triplet (the same triplets and clean scores for every cell)."""
    from robench.results.cells import CellData

    rng = np.random.default_rng(rng_seed)
    t0, t1 = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    judge = sps.norm.cdf((t1 - t0) / 0.15)  # fraction preferring p1
    q0, q1 = t0 + rng.normal(0, 0.05, n), t1 + rng.normal(0, 0.05, n)
    side = np.where(judge > 0.5, 0, 1)  # attack the less-preferred image
    q_att = np.where(side == 0, q0, q1)
    q_oth = np.where(side == 0, q1, q0)
    ids = np.array([f"t{i}" for i in range(n)])
    return CellData(
        key=f"{target}-{defense}-{attack}",
        target=target,
        arch=arch,
        defense=defense,
        training=training,
        inference=inference,
        attack=attack,
        needs=needs,
        kind="2afc",
        dataset="synthetic-2afc",
        split="test",
        profile="quick",
        seed=0,
        items_sha="t",
        weights_sha=f"sha-{target}",
        eps=[8.0],
        item_ids=ids,
        ref_ids=ids,
        sources=None,
        mos=None,
        judge=judge,
        side=side,
        q_other=q_oth,
        q_clean=q_att,
        q_adv=(q_att + gain)[None],
    )


@pytest.fixture(scope="module")
def reporter(tmp_path_factory):
    """Pairs (Table 3) from a store written with ``add_cell``: BiRQA base / R / AAT where AAT
    quarters the base's gains under FGSM (→ reproduced), doubles them under C&W (→ contradicted)
    and keeps them under AutoAttack (Δ = 0 → inconclusive); no FACPA, no AT, no LPIPS/TOPIQ
    (→ not measured). 2AFC (Tables 7, 9) built directly: AAT / flip / DiffPure / base BiRQA and base
    LPIPS, whose comparisons lie partly outside the report's family."""
    from test_report import add_cell

    from robench.engine.store import Store
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells

    path = tmp_path_factory.mktemp("paper") / "s.sqlite"
    rng = np.random.default_rng(0)
    n = 60
    mos = rng.uniform(1, 5, n)
    refs = np.arange(n) // 3
    q = mos / 5 + rng.normal(0, 0.08, n)
    with Store(path) as st:
        for attack, factor in (("fgsm", 0.25), ("cw", 2.0), ("autoattack", 1.0)):
            gain = rng.uniform(0.0, 0.6, (2, n))
            for target, defense, training, g in (
                ("birqa", "none", None, gain),
                ("birqa.r", "r", "r", gain),
                ("birqa.aat", "aat", "aat", gain * factor),
            ):
                add_cell(
                    st,
                    target=target,
                    defense=defense,
                    training=training,
                    attack=attack,
                    needs="gradients",
                    eps=[4, 8],
                    mos=mos,
                    q_clean=q,
                    q_adv=q + g,
                    ref_ids=refs,
                    train_seconds=60.0,
                )
    cells, weights = load_cells(path)
    g = np.random.default_rng(1).uniform(0.0, 0.8, 80)
    two = []
    for attack, needs in (("fgsm", "gradients"), ("square", "scores")):
        aat_gain = g / 5 if attack == "fgsm" else g / 2
        two += [
            _twoafc_cell("birqa", "birqa", "none", None, [], attack, needs, g),
            _twoafc_cell("birqa.aat", "birqa", "aat", "aat", [], attack, needs, aat_gain),
            _twoafc_cell("birqa+flip", "birqa", "flip", None, ["flip"], attack, needs, g),
            # DiffPure moved less than AAT under Square: the paper's exception, in its direction
            _twoafc_cell(
                "birqa+diffpure",
                "birqa",
                "diffpure",
                None,
                ["diffpure"],
                attack,
                needs,
                g if attack == "fgsm" else g / 20,
            ),
            _twoafc_cell("lpips.alex", "lpips.alex", "none", None, [], attack, needs, 2 * g),
        ]
    return Analysis(cells + two, weights, ot="exact", n_boot=200)


def _status(records, claim, attack, b=None, a=None):
    got = [
        r
        for r in records
        if r["claim"] == claim and r["attack"] == attack and (b is None or r["b"] == b) and (a is None or r["a"] == a)
    ]
    assert got, (claim, attack, b)
    return {r["status"] for r in got}, got


def test_claims_classification_on_synthetic_rows(reporter):
    recs = P.evaluate_claims(reporter)
    assert {r["status"] for r in recs} == set(P.STATUSES)
    # Table 3, AAT vs base BiRQA: quartered gains → reproduced, doubled → contradicted, equal → inconclusive
    s, got = _status(recs, "T3-aat-vs-base", "FGSM", a="AAT BiRQA")
    assert s == {"reproduced"} and got[0]["delta"] > 0.1 and got[0]["p_adjusted"] < 0.05 and got[0]["in_family"]
    assert "significant in the paper's direction" in got[0]["reason"] and "60 items" in got[0]["reason"]
    s, got = _status(recs, "T3-aat-vs-base", "C&W", a="AAT BiRQA")
    assert s == {"contradicted"} and got[0]["delta"] < -0.05 and got[0]["ci"][1] < 0
    s, got = _status(recs, "T3-aat-vs-base", "AutoAttack", a="AAT BiRQA")
    assert s == {"inconclusive"} and got[0]["delta"] == 0 and "covers 0" in got[0]["reason"]
    NM = P.NOT_MEASURED
    assert _status(recs, "T3-aat-vs-base", "FACPA", a="AAT BiRQA")[0] == {NM}
    # AAT vs R: R's gains are the base's, so the same verdicts; AT and LPIPS/TOPIQ were never run
    assert _status(recs, "T3-aat-vs-defences", "FGSM", b="R BiRQA", a="AAT BiRQA")[0] == {"reproduced"}
    assert _status(recs, "T3-aat-vs-defences", "C&W", b="R BiRQA", a="AAT BiRQA")[0] == {"contradicted"}
    s, got = _status(recs, "T3-aat-vs-defences", "FGSM", b="AT BiRQA")
    assert s == {NM} and "no AT BiRQA row" in got[0]["reason"]
    assert _status(recs, "T3-aat-vs-base", "FGSM", a="AAT LPIPS")[0] == {NM}
    # identical clean scores: the clean claims are inconclusive; IR claims are not testable
    assert _status(recs, "T3-aat-clean-drop", "clean", a="AAT BiRQA")[0] == {"inconclusive"}
    assert {r["status"] for r in recs if r["claim"].startswith("T3-") and "ir" in r["claim"]} == {NM}
    # Table 9 (outside the family: AAT vs a purification defence), adjusted together with the family
    s, got = _status(recs, "T9-aat-vs-purification", "FGSM", b="Random Flip BiRQA")
    assert s == {"reproduced"} and not got[0]["in_family"] and "outside the report's family" in got[0]["reason"]
    fam = reporter.family()
    assert got[0]["p_adjusted"] >= got[0]["p"]
    # the paper's exception: DiffPure beats AAT on SquareAttack — robench's DiffPure moved less: reproduced
    s, got = _status(recs, "T9-aat-vs-purification", "SquareAttack", b="DiffPure BiRQA")
    assert s == {"reproduced"} and got[0]["direction"] == -1 and got[0]["delta"] < 0
    assert _status(recs, "T9-aat-vs-purification", "C&W", b="Random Flip BiRQA")[0] == {NM}
    assert _status(recs, "T9-aat-vs-purification", "FGSM", b="Random Rotate BiRQA")[0] == {NM}
    # Table 7, cross-model (base BiRQA vs base LPIPS, LPIPS moved twice as much)
    s, got = _status(recs, "T7-birqa-base-most-robust", "FGSM", b="base LPIPS")
    assert s == {"reproduced"} and got[0]["robench_b"] == "lpips.alex none"
    assert _status(recs, "T7-birqa-base-most-robust", "FGSM", b="base TOPIQ")[0] == {NM}
    # the family's own records are untouched (no adjusted p rewritten by the extra comparisons)
    assert all(r["res"]["p_adjusted"] >= r["res"]["p"] - 1e-12 for r in fam)


def test_flagged_cells_are_named_in_the_claim(reporter):
    cell = next(c for c in reporter.cells if c.target == "birqa.aat" and c.attack == "fgsm" and c.kind == "pairs")
    old = cell.flags
    cell.flags = {**old, "not_converged": True}
    try:
        _, got = _status(P.evaluate_claims(reporter), "T3-aat-vs-base", "FGSM", a="AAT BiRQA")
        assert got[0]["flags"] == ["nc"] and "rests on flagged cell(s): [nc] not converged" in got[0]["reason"]
    finally:
        cell.flags = old


def test_write_paper_writes_md_and_tex(reporter, tmp_path):
    names = P.write_paper(reporter, tmp_path / "out")
    assert names[:2] == ["paper.md", "paper.tex"] and all((tmp_path / "out" / n).is_file() for n in names)
    md = (tmp_path / "out" / "paper.md").read_text()
    assert "**Scale.**" in md and "NOT a reproduction" in md and "quick profile" in md
    assert "## Claims" in md and "| claim | table | statement |" in md and "**reproduced**" in md
    assert "**contradicted**" in md and "**inconclusive**" in md and "not measured" in md
    assert "## Table 3" in md and "## Table 7" in md and "## Table 9" in md and "Unreadable in the extraction" in md
    # side by side: the paper's base BiRQA FGSM SROCC beside robench's value on the same row
    want = next(c for c in reporter.cells if c.target == "birqa" and c.attack == "fgsm" and c.kind == "pairs")
    line = next(x for x in md.splitlines() if x.startswith("| BiRQA | base | SROCC | FGSM | 0.568 |"))
    assert f"| {want.metric(8.0):.3f} |" in line and "synthetic/test" in line and "n = 60" in line
    assert "| LPIPS | R | SROCC | FGSM | 0.570 | not measured |" in md
    tex = (tmp_path / "out" / "paper.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") > 4
    assert tex.count("\\toprule") == tex.count("\\bottomrule") == tex.count("\\begin{table}")
    body = tex.replace("\\_", "").replace("\\&", "").replace("\\%", "").replace("\\#", "")
    assert "_" not in body and "95 \\% CI" in tex and " % " not in tex  # escaped
    assert "AAT-\\{model\\}" in tex and all(ord(ch) < 128 for ch in tex)  # braces escaped; pdflatex-safe ASCII
    assert "\\caption{Paper Table 3" in tex and "\\label{tab:paper-claims}" in tex


def test_claims_are_evaluated_at_every_budget_and_their_agreement_shown(tmp_path):
    """AAT quarters the base's gains at ε 4 and doubles them at ε 8: the same claim instance is
    reproduced at one budget and contradicted at the other, each record names its ε under both
    readings of the paper's units, and paper.md lists the instance as budget-dependent."""
    from test_report import add_cell

    from robench.engine.store import Store
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells

    path = tmp_path / "s.sqlite"
    rng = np.random.default_rng(0)
    n = 60
    mos = rng.uniform(1, 5, n)
    q = mos / 5 + rng.normal(0, 0.08, n)
    gain = rng.uniform(0.0, 0.6, (2, n))
    with Store(path) as st:
        for target, defense, training, g in (
            ("birqa", "none", None, gain),
            ("birqa.aat", "aat", "aat", gain * np.array([[0.25], [2.0]])),
        ):
            add_cell(
                st,
                target=target,
                defense=defense,
                training=training,
                attack="fgsm",
                needs="gradients",
                eps=[4, 8],
                mos=mos,
                q_clean=q,
                q_adv=q + g,
                ref_ids=np.arange(n) // 3,
                train_seconds=60.0,
            )
    cells, weights = load_cells(path)
    rep = Analysis(cells, weights, ot="exact", n_boot=200)
    got = [
        r
        for r in P.evaluate_claims(rep)
        if r["claim"] == "T3-aat-vs-base" and r["attack"] == "FGSM" and r["a"] == "AAT BiRQA"
    ]
    assert {r["eps"]: r["status"] for r in got} == {4.0: "reproduced", 8.0: "contradicted"}
    assert all(r["across_eps"].startswith("differs across ε") for r in got)
    four = next(r for r in got if r["eps"] == 4.0)
    assert "paper 4/255 in [0, 1]" in four["readings"] and "paper 8/255 in [−1, 1]" in four["readings"]
    P.write_paper(rep, tmp_path / "out")
    md = (tmp_path / "out" / "paper.md").read_text()
    assert "Instances whose verdict changes with the budget" in md and "ε 4: reproduced, ε 8: contradicted" in md
    assert "| 4/255 (paper 4/255 in [0, 1]; paper 8/255 in [−1, 1]) |" in md
