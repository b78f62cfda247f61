"""The SROCC-vs-ε figure faceted by target: panels, ≤ 6 lines, legend outside, every ε ticked,
bands only where an interval exists, files written."""

from __future__ import annotations

import numpy as np
import pytest

from robench.results import plots as P
from robench.results.analysis import Analysis
from robench.results.cells import CellData

EPS = [1.0, 2.0, 4.0, 8.0]
TARGETS = {
    "birqa": ["none", "r", "at", "aat", "flip", "diffpure", "jpeg"],  # 7 lines: split over 2 panels
    "lpips.alex": ["none", "r", "aat"],
    "topiq.fr": ["none", "at", "diffpure"],
}


def _cell(arch: str, defense: str, attack: str, n: int = 40, seed: int = 0) -> CellData:
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    clean = mos + rng.normal(0, 0.3, n)
    adv = np.stack([clean + rng.normal(0, 0.2 * e, n) for e in EPS])  # worse with ε
    return CellData(
        key=f"{arch}-{defense}-{attack}",
        target=arch,
        arch=arch,
        defense=defense,
        training=None,
        inference=[],
        attack=attack,
        needs="grad",
        kind="pairs",
        dataset="toy",
        split="test",
        profile="smoke",
        seed=0,
        items_sha="i" * 8,
        weights_sha=f"w-{arch}-{defense}",
        eps=list(EPS),
        item_ids=np.array([f"i{k}" for k in range(n)]),
        ref_ids=np.array([f"r{k}" for k in range(n)]),
        sources=None,
        mos=mos,
        judge=None,
        side=None,
        q_other=None,
        q_clean=clean,
        q_adv=adv,
    )


def _reporter(attacks=("pgd",)) -> Analysis:
    cells, k = [], 0
    for a in attacks:
        for t, ds in TARGETS.items():
            for d in ds:
                cells.append(_cell(t, d, a, seed=k))
                k += 1
    return Analysis(cells, {}, n_boot=30, seed=0, bootstrap="item")


@pytest.fixture
def captured(monkeypatch):
    """The figures plot_sweep / draw_sweep save (closed by _save, still inspectable)."""
    figs = []
    real = P._save

    def keep(fig, stem):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        names = real(fig, stem)
        FigureCanvasAgg(fig).draw()  # _save closed it: a canvas again, laid out as saved
        figs.append(fig)
        return names

    monkeypatch.setattr(P, "_save", keep)
    return figs


def _panels(fig):
    return [ax for ax in fig.axes if ax.axison]


def _check_layout(fig, eps_all):
    r = fig.canvas.get_renderer()
    legends = fig.legends
    assert len(legends) == 1
    lb = legends[0].get_window_extent(r)
    for ax in _panels(fig):
        assert len(ax.get_lines()) <= P.MAX_LINES
        bb = ax.get_window_extent(r)
        assert not bb.overlaps(lb), f"legend over panel {ax.get_title()!r}"
        assert ax.get_legend() is None
        ticks = ax.get_xticks()
        for e in eps_all:
            assert np.isclose(ticks, e).any(), f"ε {e} not ticked on {ax.get_title()!r}"
        assert ax.get_xlabel() and ax.get_title()


def test_sweep_faceted_by_target(tmp_path, captured):
    rep = _reporter()
    names = P.plot_sweep(rep, tmp_path / "sweep-pairs", "pairs")
    assert names == ["sweep-pairs.pdf", "sweep-pairs.png"]
    assert (tmp_path / "sweep-pairs.png").stat().st_size > 1000
    (fig,) = captured
    axes = _panels(fig)
    assert len(axes) == 4  # birqa (1/2), birqa (2/2), lpips.alex, topiq.fr
    titles = [ax.get_title() for ax in axes]
    assert titles == ["birqa (1/2)", "birqa (2/2)", "lpips.alex", "topiq.fr"]
    _check_layout(fig, [0.0, *EPS])
    # every defence of birqa drawn once over its two panels, the base repeated as the reference
    labels = [[ln.get_label() for ln in ax.get_lines()] for ax in axes]
    assert labels[0][0] == labels[1][0] == "base"
    assert sorted({x for ls in labels[:2] for x in ls}) == sorted(
        ["base", "R", "AT", "AAT", "flip", "diffpure", "jpeg"]
    )
    assert [len(x) for x in labels] == [4, 4, 3, 3]
    # one colour and marker per defence, the same in every panel, distinct between defences
    style = {}
    for ax in axes:
        for ln in ax.get_lines():
            s = (ln.get_color(), ln.get_marker())
            assert style.setdefault(ln.get_label(), s) == s
    assert len(set(style.values())) == len(style) == 7
    assert {t.get_text() for t in fig.legends[0].get_texts()} == set(style)
    # bootstrap bands: one per line
    for ax in axes:
        assert len(ax.collections) == len(ax.get_lines())


def test_bands_only_where_an_interval_exists(tmp_path, captured):
    def s(t, d, lo=None, hi=None):
        return {"target": t, "defence": d, "attack": "pgd", "eps": [0, 2, 8], "y": [0.9, 0.7, 0.3], "lo": lo, "hi": hi}

    series = [
        s("a", "base", [0.85, 0.6, 0.2], [0.95, 0.8, 0.4]),
        s("a", "R"),
        s("b", "base", [np.nan] * 3, [np.nan] * 3),
        s("b", "AT", [0.8, np.nan, 0.2], [0.95, np.nan, 0.4]),
    ]
    names = P.draw_sweep(series, tmp_path / "x" / "sw", metric="SROCC")
    assert (tmp_path / "x" / "sw.png").is_file() and len(names) == 2
    (fig,) = captured
    a, b = _panels(fig)
    assert len(a.collections) == 1 and len(b.collections) == 1  # R and the all-NaN base: no band
    _check_layout(fig, [0, 2, 8])
    assert "95 %" in fig._suptitle.get_text()
    captured.clear()
    P.draw_sweep([s("a", "base"), s("a", "R")], tmp_path / "nb", metric="SROCC")
    (fig,) = captured
    assert not _panels(fig)[0].collections and "bootstrap" not in fig._suptitle.get_text()


def test_several_attacks_one_row_each(tmp_path, captured):
    rep = _reporter(("pgd", "fgsm"))
    P.plot_sweep(rep, tmp_path / "s", "pairs")
    (fig,) = captured
    axes = _panels(fig)
    assert len(axes) == 8
    rows = {}
    for ax in axes:
        rows.setdefault(ax.get_title().split("\n")[1], set()).add(round(ax.get_position().y0, 3))
    assert set(rows) == {"pgd", "fgsm"} and all(len(v) == 1 for v in rows.values())
    assert rows["pgd"] != rows["fgsm"]
    _check_layout(fig, [0.0, *EPS])
    assert P.plot_sweep(rep, tmp_path / "none", "2afc") == []


def test_chunks_and_styles():
    assert P.facet_chunks(list("abcdef")) == [list("abcdef")]
    assert P.facet_chunks(["base", *"abcdefghijk"], keep="base") == [
        ["base", *"abcd"],
        ["base", *"efgh"],
        ["base", *"ijk"],
    ]
    assert P.facet_chunks(list("abcdefg")) == [list("abcd"), list("efg")]
    st = P.defence_styles([f"d{i}" for i in range(30)])
    assert len({(v["color"], v["marker"]) for v in st.values()}) == 30


def test_geometric_ladder_uses_symlog_and_keeps_every_tick(tmp_path, captured):
    eps = [0, 0.5, 1, 2, 4, 8, 16]
    series = [
        {
            "target": "t",
            "defence": "base",
            "attack": "pgd",
            "eps": eps,
            "y": np.linspace(0.9, 0.1, 7),
            "lo": None,
            "hi": None,
        }
    ]
    P.draw_sweep(series, tmp_path / "g", metric="SROCC")
    (fig,) = captured
    (ax,) = _panels(fig)
    assert ax.get_xscale() == "symlog"
    _check_layout(fig, eps)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.5", "1", "2", "4", "8", "16"]


def test_leaderboard_figure_ranks_undefended_targets_by_their_worst_attack(tmp_path):
    """One line per undefended target: SROCC clean, then per ε the lowest over its attacks; most
    robust first, a target without the largest ε last; nothing below four targets."""
    cells, k = [], 0
    for t in ("a", "b", "c", "d"):
        for a in ("fgsm", "pgd"):
            c = _cell(t, "none", a, seed=k)
            if t == "b":  # b's PGD barely moves it: b is the most robust
                c.q_adv = np.stack([c.q_clean + 0.01 * k for k in range(len(EPS))])
            if t == "d":  # d stored only its two smallest budgets
                c.eps, c.q_adv = EPS[:2], c.q_adv[:2]
            cells.append(c)
            k += 1
    cells.append(_cell("a", "aat", "pgd", seed=99))  # a defended row: not on the board
    rep = Analysis(cells, {}, n_boot=30, seed=0, bootstrap="item")
    series = P.leaderboard_series(rep)
    assert [s["target"] for s in series][0] != "d" and series[-1]["target"] == "d"
    b = next(s for s in series if s["target"] == "b")
    cb = [c for c in cells if c.target == "b"]
    assert b["worst"] == [min(c.metric(e) for c in cb) for e in EPS]
    assert P.plot_leaderboard(rep, tmp_path / "lb") == ["lb.pdf", "lb.png"]
    few = Analysis([c for c in cells if c.target in ("a", "b")], {}, n_boot=30, seed=0, bootstrap="item")
    assert P.plot_leaderboard(few, tmp_path / "none") == []
