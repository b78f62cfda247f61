"""The reporter: statistics, optimal transport / IR-Score, tables, plots and the CI gate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats as sps

from robench.core.stats import (
    bootstrap_weights,
    correlations,
    mean_weighted,
    msu_scores,
    paired_bootstrap,
    srocc_weighted,
)
from robench.engine.store import Store, cell_key
from robench.results.transport import MapCache, exact_map, ir_score, neural_map

TINY_OPTS = {"size": 32, "crops_per_source": 1}


def robench(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"robench {' '.join(map(str, args))} → {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


# --------------------------------------------------------------------------------------------
# statistics


def test_weighted_srocc_equals_spearman_of_the_expanded_sample():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 8, 40).astype(float)  # ties on purpose
    y = rng.normal(size=40)
    w = bootstrap_weights(40, 25, seed=3, clusters=rng.integers(0, 9, 40))
    want = [sps.spearmanr(np.repeat(x, wi), np.repeat(y, wi)).statistic for wi in w]
    np.testing.assert_allclose(srocc_weighted(x, y, w), want, atol=1e-12)
    ones = np.ones((1, 40), dtype=int)
    assert srocc_weighted(x, y, ones)[0] == pytest.approx(correlations(x, y)["srocc"])


def test_paired_bootstrap_agrees_with_scipy_bootstrap():
    """Items with distinct references (no clusters): our percentile CI of ΔSROCC against
    scipy.stats.bootstrap's paired percentile CI of the same statistic."""
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 80)
    a = mos + rng.normal(0, 0.4, 80)
    b = mos + rng.normal(0, 1.2, 80)
    ours = paired_bootstrap(a, b, mos, n_resamples=4000, seed=1)

    def delta(a_, b_, m_):
        return sps.spearmanr(a_, m_).statistic - sps.spearmanr(b_, m_).statistic

    ref = sps.bootstrap(
        (a, b, mos),
        delta,
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(2),
    )
    assert ours["ci"][0] == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert ours["ci"][1] == pytest.approx(ref.confidence_interval.high, abs=0.02)
    assert ours["significant"] == (ref.confidence_interval.low > 0 or ref.confidence_interval.high < 0)
    assert ours["delta"] == pytest.approx(delta(a, b, mos))
    assert paired_bootstrap(a, b, mos, n_resamples=200, seed=5) == paired_bootstrap(a, b, mos, n_resamples=200, seed=5)


def test_cluster_bootstrap_resamples_whole_references():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(10), 5)
    w = bootstrap_weights(50, 300, seed=0, clusters=clusters)
    for c in range(10):  # every member of a reference enters as often as the reference was drawn
        assert (w[:, clusters == c] == w[:, clusters == c][:, :1]).all()
    assert (w.sum(1) == 50).all()  # equal-size clusters: 10 draws of 5
    # items of one reference that move together: the cluster CI is wider than the item CI
    effect = np.repeat(rng.normal(0, 1, 10), 5)
    a, b = effect + rng.normal(0, 0.1, 50), np.zeros(50)
    ci_items = paired_bootstrap(a, b, stat=mean_weighted, n_resamples=1000, seed=0)["ci"]
    ci_refs = paired_bootstrap(a, b, stat=mean_weighted, n_resamples=1000, seed=0, clusters=clusters)["ci"]
    assert ci_refs[1] - ci_refs[0] > 1.5 * (ci_items[1] - ci_items[0])


def test_msu_scores_on_a_hand_made_case():
    q = np.array([0.0, 0.5, 1.0])
    out = msu_scores(q, q + 0.1)
    assert out["abs_gain"] == pytest.approx(0.1)
    want = np.mean(np.log10(np.array([1.0, 0.5, 1.0]) / (0.1 + 1e-6)))
    assert out["R"] == pytest.approx(want)
    assert msu_scores(q, q)["R"] == pytest.approx(6.0 + np.mean(np.log10([1.0, 0.5, 1.0])))


# --------------------------------------------------------------------------------------------
# optimal transport and IR-Score


def test_exact_map_is_pots_emd_matching():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    src, dst = rng.beta(2, 5, 60), 1 + 4 * rng.beta(5, 2, 60)
    plan = ot.emd(np.full(60, 1 / 60), np.full(60, 1 / 60), ot.dist(src[:, None], dst[:, None]))
    matched = dst[plan.argmax(axis=1)]  # a permutation: each source sample goes to one target sample
    np.testing.assert_allclose(exact_map(src, dst)(src), matched, atol=1e-12)


def test_neural_map_agrees_with_the_exact_map():
    """Stated tolerance (docs/statistics.md): on 2000-sample 1-D distributions, between the 5th and
    95th source percentiles, the neural map is within 5 % of the target range of the exact map
    at every point and within 2 % on average (measured: 2-3 % max, < 1.5 % mean)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    src, dst = rng.beta(2, 5, 2000), 1 + 4 * rng.beta(5, 2, 2000)
    grid = np.quantile(src, np.linspace(0.05, 0.95, 60))
    span = np.ptp(dst)
    nn_map, ex = neural_map(src, dst, seed=0), exact_map(src, dst)
    err = np.abs(nn_map(grid) - ex(grid))
    assert err.max() < 0.05 * span and err.mean() < 0.02 * span, (err.max(), err.mean())
    assert np.all(np.diff(nn_map(np.linspace(-0.5, 1.5, 200))) > 0)  # monotone, extrapolation included
    again = neural_map(src, dst, seed=0)
    np.testing.assert_array_equal(again(grid), nn_map(grid))  # seeded


def test_maps_extend_linearly_beyond_the_clean_range():
    src, dst = np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 5.0])
    m = exact_map(src, dst)
    assert m(1.5) == pytest.approx(5.0 + 0.5 * 4.0) and m(-1.0) == pytest.approx(1.0 - 4.0)


def _synthetic_attack(seed: int, n: int = 120, k: int = 3):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    q = mos / 5 + rng.normal(0, 0.05, n)
    gain = rng.uniform(0.05, 0.4, (k, n))
    return mos, q, gain


@pytest.mark.parametrize("backend", ["exact", "neural"])
def test_ir_of_a_model_against_itself_is_one_half(backend):
    mos, q, gain = _synthetic_attack(0)
    maps = MapCache(backend, f_steps=60) if backend == "neural" else MapCache(backend)
    assert ir_score((q, q + gain), (q, q + gain), mos, maps)["ir"] == 0.5


@pytest.mark.parametrize("backend", ["exact", "neural"])
def test_ir_of_a_defence_that_halves_every_gain_is_near_one(backend):
    mos, q, gain = _synthetic_attack(1)
    maps = MapCache(backend, f_steps=200) if backend == "neural" else MapCache(backend)
    res = ir_score((q, q + gain), (q, q + gain / 2), mos, maps)
    assert res["ir"] >= (1.0 if backend == "exact" else 0.95), res
    worse = ir_score((q, q + gain), (q, q + 2 * gain), mos, maps)
    assert worse["ir"] <= 0.05


# --------------------------------------------------------------------------------------------
# a store with real runs (ssim: 32 px, seconds) and synthetic recipe rows


def add_cell(
    store: Store,
    *,
    target: str,
    defense: str,
    training: str | None,
    attack: str,
    needs: str,
    eps,
    mos,
    q_clean,
    q_adv,
    ref_ids,
    kind: str = "pairs",
    train_seconds: float | None = None,
    sources=None,
    amp: str | None = None,
) -> str:
    """A hand-made cell in the runner's format (for reporter logic that needs recipe rows)."""
    n = len(q_clean)
    config = {
        "target": {
            "name": target,
            "weights_sha256": f"sha-{target}",
            "weights_source": "trained-here",
            "lower_better": False,
        },
        "defense": {"name": defense, "training": training, "inference": [], "randomised": False, "gradient": "exact"},
        "attack": {"name": attack, "kind": "fixed", "needs": needs, "params": {}},
        "eps": [float(e) for e in eps],
        "dataset": {
            "name": "synthetic",
            "split": "test",
            "kind": kind,
            "options": {},
            "n": n,
            "n_requested": n,
            "subset_seed": 0,
            "items_sha256": "items",
        },
        "seed": 0,
        "profile": "quick",
        **({"amp": amp} if amp else {}),
    }
    key = cell_key(config, "test")
    rows = [
        {
            "item": i,
            "eps": float(e),
            "item_id": f"img{i}",
            "ref_id": str(ref_ids[i]),
            "distortion": "d",
            "level": 1,
            "mos": float(mos[i]),
            "clean_score": float(q_clean[i]),
            "score": float(q_adv[k][i]),
            "linf": 0.0,
            "l2": 0.0,
            "queries": 1,
            "source": None if sources is None else str(sources[i]),
        }
        for k, e in enumerate(eps)
        for i in range(n)
    ]
    store.commit_cell(
        key,
        {
            "config": config,
            "summary": {},
            "flags": {},
            "probes": {},
            "versions": {},
            "n_items": n,
            "seconds": 1.0,
            "attack_seconds": 1.0,
        },
        rows,
    )
    if train_seconds is not None:
        store.record_weights(
            [
                {
                    "sha256": f"sha-{target}",
                    "name": target,
                    "source": "trained-here",
                    "provenance": {
                        "dataset": "synthetic",
                        "profile": "quick",
                        "train_seconds": train_seconds,
                        "recipe": training,
                    },
                }
            ]
        )
    return key


def synthetic_recipes(path, n: int = 60, seed: int = 0) -> None:
    """base / R / AAT rows of one model: R halves nothing, AAT halves every gain."""
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    refs = np.arange(n) // 3
    q = mos / 5 + rng.normal(0, 0.08, n)
    with Store(path) as st:
        for attack, needs in (("fgsm", "gradients"), ("square", "scores")):
            gain = rng.uniform(0.0, 0.6, (2, n))
            for target, defense, training, g in (
                ("toy", "none", None, gain),
                ("toy.r", "r", "r", gain),
                ("toy.aat", "aat", "aat", gain / 4),
            ):
                add_cell(
                    st,
                    target=target,
                    defense=defense,
                    training=training,
                    attack=attack,
                    needs=needs,
                    eps=[4, 8],
                    mos=mos,
                    q_clean=q,
                    q_adv=q + g,
                    ref_ids=refs,
                    train_seconds=60.0,
                )


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory, robench_home):
    """Real cells: ssim (pairs), ssim behind random flips (EOT), ssim on 2AFC triplets; plus
    synthetic recipe rows."""
    from robench.data.mini import build_mini
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    os.environ["ROBENCH_HOME"] = str(robench_home)
    build_mini(size=32, crops_per_source=1, seed=0, progress=False)
    path = tmp_path_factory.mktemp("grid") / "grid.sqlite"
    common = dict(
        eps=[2, 8],
        store=path,
        dataset_options=dict(TINY_OPTS),
        attack_params={"pgd": {"steps": 3}, "square": {"queries": 8}},
    )
    run(RunSpec(model="ssim", attacks=["fgsm", "pgd", "square"], n=16, **common), progress=False)
    run(
        RunSpec(
            model="ssim",
            defense="flip",
            attacks=["fgsm", "square"],
            n=16,
            **{**common, "attack_params": {"fgsm": {"eot": 4}, "square": {"queries": 8, "eot": 4}}},
        ),
        progress=False,
    )
    run(RunSpec(model="ssim", attacks=["fgsm", "square"], dataset="mini-2afc", n=12, **common), progress=False)
    synthetic_recipes(path)
    return path


def test_report_writes_every_table_and_plot(grid_store, tmp_path):
    from robench.results.cells import load_cells
    from robench.results.report import write_report

    out = tmp_path / "rep"
    res = write_report(grid_store, out, ot="exact", n_boot=200, pdf=False)
    assert set(res["tables"]) == {"robustness", "twoafc", "flips", "purification", "sweep", "significance", "ir"}
    for t in res["tables"]:
        tex, md = (out / f"{t}.tex").read_text(), (out / f"{t}.md").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex and "\\caption{" in tex
        assert "mini" in tex + md or "synthetic" in tex + md
        assert "profile quick" in md and "seed 0" in md
    assert {"sweep-pairs.pdf", "sweep-pairs.png", "sweep-2afc.pdf"} <= {p.name for p in (out / "plots").iterdir()}
    assert (out / "report.tex").read_text().count("\\input{") == 7
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left behind
    # numbers come from the stored rows: the md's clean SROCC of ssim is the rows' SROCC
    cells, _ = load_cells(grid_store)
    ssim = next(c for c in cells if c.target == "ssim" and c.kind == "pairs")
    want = correlations(ssim.q_clean, ssim.mos)["srocc"]
    lines = (out / "robustness.md").read_text().splitlines()
    header = [h.strip() for h in next(x for x in lines if x.startswith("| target")).split("|")]
    # the store mixes settings (mini, synthetic): every row label names its setting
    row = next(x for x in lines if x.startswith("| ssim | mini/test/quick/seed 0 | base |"))
    assert row.split("|")[header.index("SROCC clean")].strip().strip("*") == f"{want:.3f}"
    pur = (out / "purification.md").read_text()
    assert "| ssim | mini/test/quick/seed 0 | flip |" in pur and "white-box" in pur and "black-box" in pur
    assert "2AFC accuracy" in (out / "twoafc.md").read_text()


def test_robustness_table_ir_bold_and_significance(grid_store):
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells
    from robench.results.render import to_latex
    from robench.results.tables import robustness, significance

    cells, weights = load_cells(grid_store)
    rep = Analysis([c for c in cells if c.dataset == "synthetic"], weights, ot="exact", n_boot=300)
    t = robustness(rep)
    df = t.df
    assert df.loc[("toy", "AAT"), ("IR-Score", "fgsm")] > 0.9  # gains quartered
    assert df.loc[("toy", "R"), ("IR-Score", "fgsm")] == 0.5  # identical gains: all ties
    assert np.isnan(df.loc[("toy", "base"), ("IR-Score", "fgsm")])
    assert df.loc[("toy", "AAT"), ("Train time (min)", "")] == pytest.approx(1.0)
    assert t.bold.loc[("toy", "AAT"), ("SROCC", "fgsm")]
    assert t.marks[(("toy", "AAT"), ("SROCC", "fgsm"))] == "+"  # significantly better than base
    tex = to_latex(t)
    assert "\\textbf{" in tex and "\\dagger" in tex and "IR-Score" in tex
    sig = significance(rep).df
    row = sig.loc[("SROCC", "toy", "AAT vs base", "fgsm", "8")]
    assert row["significant"] == "yes" and row["CI low"] > 0


def test_report_cli_json_and_bad_store(grid_store, tmp_path):
    r = robench(
        "report",
        "--store",
        grid_store,
        "--out",
        tmp_path / "r",
        "--ot",
        "exact",
        "--resamples",
        "50",
        "--no-plots",
        "--json",
    )
    out = json.loads(r.stdout)
    assert "robustness" in out["tables"] and (tmp_path / "r" / "robustness.md").is_file()
    bad = robench("report", "--store", tmp_path / "nope.sqlite", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "no store" in bad.stderr and not (tmp_path / "nope.sqlite").exists()
    bad = robench("report", "--store", grid_store, "--out", tmp_path / "x", "--ot", "sinkhorn", check=False)
    assert bad.returncode == 2 and "sinkhorn" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_standalone_tex_compiles(grid_store, tmp_path):
    from robench.results.report import write_report

    res = write_report(grid_store, tmp_path / "rep", ot="exact", n_boot=50, plots=False, pdf=True)
    assert res["pdf"] and (tmp_path / "rep" / "report.pdf").stat().st_size > 1000


def test_plot_bound_and_speed(tmp_path, grid_store):
    from robench.core.errors import RobenchError
    from robench.results.plots import ema, plot_bound

    steps = [{"step": i, "anchored_loss": 1 / (i + 1), "bound": 2.0, "emp_max_err": 1.0} for i in range(30)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "steps.json").write_text(json.dumps({"config": {}, "steps": steps}))
    robench("plot", "bound", "--log", tmp_path / "run", "--out", tmp_path / "b" / "bound", "--log-y")
    assert (tmp_path / "b" / "bound.pdf").stat().st_size > 0 and (tmp_path / "b" / "bound.png").is_file()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "steps.json").write_text(json.dumps({"steps": [{"step": 0, "loss": 1.0}]}))
    with pytest.raises(RobenchError, match="not an AAT log"):
        plot_bound(tmp_path / "r", tmp_path / "x")
    e = ema([0.0] + [1.0] * 200, 20)
    assert e[1] == pytest.approx(2 / 21) and e[-1] == pytest.approx(1.0, abs=1e-6)
    bench = {
        "size": "64x64",
        "batch": 1,
        "machine": {"processor": "cpu"},
        "results": [{"model": "ssim", "images_per_s": 100.0, "parameters": 0}],
    }
    (tmp_path / "speed.json").write_text(json.dumps(bench))
    robench(
        "plot", "speed", "--bench", tmp_path / "speed.json", "--store", grid_store, "--out", tmp_path / "s" / "speed"
    )
    assert (tmp_path / "s" / "speed.pdf").is_file()


# --------------------------------------------------------------------------------------------
# the CI gate


def _trap_target():
    """SSIM plus a term that is ~0 on clean pairs but rises sharply along a checkerboard: the
    same clean behaviour, a deliberately weakened model under attack (``beta`` switches it on)."""
    from robench.models.classic import SSIM, luminance
    from robench.core.registry import MODELS
    from robench.core.target import TargetCard

    if "toytrap" in MODELS:
        return MODELS.get("toytrap")

    @MODELS.register("toytrap", summary="test-only: SSIM with an optional adversarial trap", lower_better=False)
    class Trap(SSIM):
        beta = 0.0

        def __init__(self):
            super().__init__()
            self.card = TargetCard(
                name="toytrap", lower_better=False, score_range=None, min_size=11, summary="test-only", paper="—"
            )

        def score(self, dist, ref):
            h, w = dist.shape[-2:]
            board = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 * 2 - 1).to(dist)
            x = (luminance(dist - ref)[:, 0] * board).flatten(1).mean(1) / (8 / 255)
            return super().score(dist, ref) + self.beta * x.abs()

    return Trap


@pytest.fixture
def toytrap():
    """Registers the test-only target ``toytrap`` for one test and removes it afterwards, so the
    registries other tests see (``MODELS.names()``, ``MODELS.info()``) are the discovered ones."""
    from robench.core.registry import MODELS

    yield _trap_target()
    if "toytrap" in MODELS:
        MODELS.unregister("toytrap")


def _trap_run(path, beta: float):
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    trap = _trap_target()
    trap.beta = beta
    run(
        RunSpec(
            model="toytrap",
            attacks=["fgsm", "square"],
            eps=[8],
            n=32,
            store=path,
            dataset_options=dict(TINY_OPTS),
            attack_params={"square": {"queries": 8}},
        ),
        progress=False,
    )


def test_check_passes_unchanged_and_fails_weakened(tiny_mini, tmp_path, toytrap):
    base, same, weak = tmp_path / "base.sqlite", tmp_path / "same.sqlite", tmp_path / "weak.sqlite"
    _trap_run(base, 0.0)
    baseline = tmp_path / "baseline.json"
    robench("check", "--store", base, "--baseline", baseline, "--update")
    assert len(json.loads(baseline.read_text())["cells"]) == 2
    _trap_run(same, 0.0)
    ok = robench("check", "--store", same, "--baseline", baseline, "--json")
    assert json.loads(ok.stdout)["passed"] is True
    _trap_run(weak, 3.0)
    # the trap moves clean SROCC a little too (0.745 → 0.714 on mini v2): tolerance above that
    r = robench("check", "--store", weak, "--baseline", baseline, "--json", "--tolerance", "0.05", check=False)
    assert r.returncode == 1
    res = json.loads(r.stdout)
    failed = [row for row in res["rows"] if row["status"] == "fail"]
    assert failed and all(row["point"] == "8" and "|fgsm|" in row["cell"] for row in failed)
    assert failed[0]["ci"][1] < 0  # significant by the paired bootstrap
    clean = [row for row in res["rows"] if row["point"] == "clean"]
    assert clean and all(row["status"] == "ok" for row in clean)  # the weakness is invisible on clean data
    text = robench("check", "--store", weak, "--baseline", baseline, "--tolerance", "0.05", check=False)
    assert text.returncode == 1 and "FAILED" in text.stdout and "fgsm" in text.stdout


def test_check_reports_new_missing_and_insignificant_drops(tmp_path):
    from robench.results.checks import check, make_baseline, write_baseline

    rng = np.random.default_rng(0)
    n = 40
    mos, refs = rng.uniform(1, 5, n), np.arange(n)
    q = mos / 5 + rng.normal(0, 0.2, n)
    with Store(tmp_path / "a.sqlite") as st:
        add_cell(
            st,
            target="m",
            defense="none",
            training=None,
            attack="fgsm",
            needs="gradients",
            eps=[8],
            mos=mos,
            q_clean=q,
            q_adv=[q + 0.1],
            ref_ids=refs,
        )
        add_cell(
            st,
            target="m",
            defense="none",
            training=None,
            attack="square",
            needs="scores",
            eps=[8],
            mos=mos,
            q_clean=q,
            q_adv=[q],
            ref_ids=refs,
        )
    write_baseline(make_baseline(tmp_path / "a.sqlite"), tmp_path / "b.json")
    q2 = q.copy()
    i, j = np.argsort(q)[n // 2], np.argsort(q)[n // 2 + 1]
    q2[[i, j]] = q2[[j, i]]  # one swapped pair: a drop above a zero tolerance, far from significant
    with Store(tmp_path / "c.sqlite") as st:
        add_cell(
            st,
            target="m",
            defense="none",
            training=None,
            attack="fgsm",
            needs="gradients",
            eps=[8],
            mos=mos,
            q_clean=q,
            q_adv=[q2 + 0.1],
            ref_ids=refs,
        )
        add_cell(
            st,
            target="m",
            defense="none",
            training=None,
            attack="pgd",
            needs="gradients",
            eps=[8],
            mos=mos,
            q_clean=q,
            q_adv=[q],
            ref_ids=refs,
        )
    res = check(tmp_path / "c.sqlite", tmp_path / "b.json", tolerance=0.0, n_boot=300, allow_missing=True)
    status = {(r["cell"].split("|")[2], r["point"]): r["status"] for r in res["rows"]}
    assert res["passed"]
    assert status[("pgd", "—")] == "new" and status[("square", "—")] == "missing"
    strict = check(tmp_path / "c.sqlite", tmp_path / "b.json", tolerance=0.0, n_boot=300)
    assert not strict["passed"] and {r["cell"].split("|")[2] for r in strict["rows"] if r["status"] == "fail"} == {
        "square"
    }
    assert status[("fgsm", "8")] in ("drop-not-significant", "ok") and status[("fgsm", "clean")] == "ok"
    # a baseline cell whose latest record in the store is a failure fails the gate
    with Store(tmp_path / "c.sqlite") as st:
        cfg = st.cells()["config"].iloc[0]
        sq = json.loads(json.dumps(cfg))
        sq["attack"]["name"] = "square"
        st.record_failure("k-square", {"config": sq}, "budget violated")
    res = check(tmp_path / "c.sqlite", tmp_path / "b.json", tolerance=0.0, n_boot=300)
    failed = [r for r in res["rows"] if r["status"] == "fail"]
    assert len(failed) == 1 and "budget violated" in failed[0]["reason"]
    from robench.core.errors import RobenchError

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RobenchError, match="not a robench baseline"):
        check(tmp_path / "c.sqlite", tmp_path / "bad.json")


@pytest.mark.parametrize("photos, units", [(10, "photo bootstrap (10 photos)"), (4, "item bootstrap: only 4")])
def test_check_resamples_source_photos_not_references(tmp_path, photos, units):
    """`robench check` bootstraps a drop over source photos (the independent unit; crops of one
    photo have different references) when there are ≥ 10, else over items, and says which."""
    from robench.results.checks import check, make_baseline, write_baseline

    rng = np.random.default_rng(1)
    n = 40
    mos, refs, sources = rng.uniform(1, 5, n), np.arange(n), np.array([f"p{i % photos}" for i in range(n)])
    q = mos / 5 + rng.normal(0, 0.05, n)
    common = dict(
        target="m",
        defense="none",
        training=None,
        attack="fgsm",
        needs="gradients",
        eps=[8],
        mos=mos,
        q_clean=q,
        ref_ids=refs,
        sources=sources,
    )
    with Store(tmp_path / "a.sqlite") as st:
        add_cell(st, q_adv=[q], **common)
    write_baseline(make_baseline(tmp_path / "a.sqlite"), tmp_path / "b.json")
    with Store(tmp_path / "c.sqlite") as st:
        add_cell(st, q_adv=[q + rng.normal(0, 0.5, n)], **common)  # the attack now scrambles the ranking
    res = check(tmp_path / "c.sqlite", tmp_path / "b.json", tolerance=0.0, n_boot=300)
    row = next(r for r in res["rows"] if r["point"] == "8")
    assert row["status"] in ("fail", "drop-not-significant") and row["units"].startswith(units), row
    assert units.split(" (")[0] in row["reason"]


def test_bf16_cells_are_a_row_of_their_own(tmp_path):
    """--amp bf16 cells are another measurement (keyed apart): the report shows them as their own
    row, labelled, never as the float32 row's latest cell."""
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells

    rng = np.random.default_rng(0)
    n = 30
    mos, refs = rng.uniform(1, 5, n), np.arange(n)
    q = mos / 5 + rng.normal(0, 0.2, n)
    with Store(tmp_path / "s.sqlite") as st:
        for amp, shift in ((None, 0.1), ("bf16", 0.3)):
            add_cell(
                st,
                target="m",
                defense="none",
                training=None,
                attack="fgsm",
                needs="gradients",
                eps=[8],
                mos=mos,
                q_clean=q,
                q_adv=[q + shift * rng.normal(0, 1, n)],
                ref_ids=refs,
                amp=amp,
            )
    cells, weights = load_cells(tmp_path / "s.sqlite")
    rep = Analysis(cells, weights, ot="exact", n_boot=50)
    rows = rep.rows("pairs")
    assert len(rows) == 2 and {r[-1] for r in rows} == {"fp32", "bf16"}
    labels = [rep.label(r) for r in rows]
    assert sum("bf16" in lab[1] for lab in labels) == 1, labels


def test_report_out_never_deletes_foreign_files(tmp_path):
    """`report --out DIR` replaces DIR as a whole: a folder with files robench did not write is
    refused (exit 2 through the CLI), untouched; a previous report is replaced; a report folder
    with a file added by hand is refused too."""
    from robench.core.errors import RobenchError
    from robench.results.report import MANIFEST, check_report_folder

    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    (foreign / "sub" / "a.txt").write_text("mine too")
    with pytest.raises(RobenchError, match="did not write"):
        check_report_folder(foreign)
    assert (foreign / "keep.txt").read_text() == "mine" and (foreign / "sub" / "a.txt").is_file()
    check_report_folder(tmp_path / "new")  # missing: fine
    (tmp_path / "empty").mkdir()
    check_report_folder(tmp_path / "empty")
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "report.md").write_text("x")
    (prev / MANIFEST).write_text(json.dumps({"files": ["report.md"]}))
    check_report_folder(prev)  # a previous report: replaceable
    (prev / "notes.txt").write_text("added by hand")
    with pytest.raises(RobenchError, match="notes.txt"):
        check_report_folder(prev)


def test_worst_is_computed_on_the_items_cells_share():
    """The committed quick store mixes 192-item (FGSM, PGD) and 96-item (C&W, Zhang) cells: the
    worst case over attacks is taken on their 96 shared items (it was NaN in every row), and the
    footnote says the clean column belongs to one item set."""
    from pathlib import Path

    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells
    from robench.results.tables import robustness

    store = Path(__file__).resolve().parents[1] / "reports" / "quick" / "results.sqlite"
    cells, weights = load_cells(store)
    rep = Analysis([c for c in cells if c.direction == "up"], weights, ot="exact", n_boot=20)
    t = robustness(rep)
    worst = t.df[("SROCC", "worst")].to_numpy(dtype=float)
    assert np.isfinite(worst).all()
    per = t.df[[("SROCC", a) for a in ("fgsm", "pgd", "cw", "zhang")]].to_numpy(dtype=float)
    assert (worst <= per.max(axis=1) + 1e-9).all()
    assert "different item sets" in t.footnote and "own clean value" in t.footnote


def test_sweep_takes_each_budget_from_the_cell_that_holds_it(tmp_path):
    """A grid run in slices stores ε 1, 2, 4 and ε 8 of one row × attack in two cells: the sweep
    shows every ε (the latest cell alone would blank 1, 2 and 4)."""
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells
    from robench.results.tables import sweep

    rng = np.random.default_rng(0)
    n = 30
    mos, refs = rng.uniform(1, 5, n), np.arange(n)
    q = mos / 5 + rng.normal(0, 0.2, n)
    with Store(tmp_path / "s.sqlite") as st:
        for eps in ([1, 2, 4], [8]):
            adv = [q - 0.05 * e * rng.uniform(0, 1, n) for e in eps]
            kw = dict(target="m", defense="none", training=None, attack="pgd", needs="gradients")
            add_cell(st, **kw, eps=eps, mos=mos, q_clean=q, q_adv=adv, ref_ids=refs)
    cells, weights = load_cells(tmp_path / "s.sqlite")
    df = sweep(Analysis(cells, weights, ot="exact", n_boot=50)).df
    assert len(df) == 1
    assert all(np.isfinite(float(df.iloc[0][f"{e}/255"])) for e in (1, 2, 4, 8)), df.iloc[0]


def test_comparisons_cover_every_eps_of_cells_run_in_slices(tmp_path):
    """A grid run in slices stores ε 1, 2, 4 in one cell and ε 8 in a later one: a defence is
    compared with its base at every ε both rows hold, on the cells that hold it — not only at the
    ε of each row's latest cell (which share none here)."""
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells

    rng = np.random.default_rng(0)
    n = 30
    mos, refs = rng.uniform(1, 5, n), np.arange(n)
    q = mos / 5 + rng.normal(0, 0.05, n)
    down = np.where(mos > mos.mean(), -1.0, 1.0)
    with Store(tmp_path / "s.sqlite") as st:
        slices = (
            ("toy", "none", None, [1, 2, 4], 0.3),
            ("toy", "none", None, [8], 0.3),
            ("toy.aat", "aat", "aat", [1, 2, 4], 0.03),
        )
        for target, defense, training, eps, move in slices:
            add_cell(
                st,
                target=target,
                defense=defense,
                training=training,
                attack="pgd",
                needs="gradients",
                eps=eps,
                mos=mos,
                q_clean=q,
                q_adv=[q + down * move * e for e in eps],
                ref_ids=refs,
            )
    cells, weights = load_cells(tmp_path / "s.sqlite")
    rep = Analysis(cells, weights, ot="exact", n_boot=200)
    base = next(r for r in rep.rows("pairs") if r[1] == "none")
    assert rep.row_eps(base, "pgd") == [1.0, 2.0, 4.0, 8.0]
    got = {r["eps"]: r for r in rep.comparisons() if r["defense"] == "aat" and r["attack"] == "pgd"}
    assert sorted(got) == [1.0, 2.0, 4.0]  # ε 8: the AAT row has no such cell
    # the base is pushed ten times further: AAT is significantly above it at ε 4
    assert got[4.0]["delta"] > 0 and got[4.0]["significant"]
