"""Issue 17: the photo-clustered paired bootstrap, its refusal below 10 photos, the
multiplicity corrections and the comparison rows of report.json."""

from __future__ import annotations

import numpy as np
import pytest

from robench.core.errors import RobenchError
from robench.core.stats import MIN_PHOTOS, benjamini_hochberg, bootstrap_units, holm, mean_weighted, paired_bootstrap


def _clustered(rng, photos=20, per=10, effect=0.1, photo_sd=0.3, item_sd=0.05):
    """Per-item differences whose photos share a random effect: the photo is the unit."""
    src = np.repeat(np.arange(photos), per)
    a = effect + rng.normal(0, photo_sd, photos)[src] + rng.normal(0, item_sd, photos * per)
    return a, np.zeros_like(a), src


def test_photo_bootstrap_covers_the_known_effect_and_the_item_bootstrap_does_not():
    rng = np.random.default_rng(0)
    hit_photo = hit_item = 0
    reps = 150
    for r in range(reps):
        a, b, src = _clustered(rng)
        p = paired_bootstrap(a, b, stat=mean_weighted, n_resamples=300, seed=r, clusters=src)
        i = paired_bootstrap(a, b, stat=mean_weighted, n_resamples=300, seed=r, clusters=None)
        hit_photo += p["ci"][0] <= 0.1 <= p["ci"][1]
        hit_item += i["ci"][0] <= 0.1 <= i["ci"][1]
        assert p["n_clusters"] == 20 and i["n_clusters"] == 200 and p["n_items"] == 200
    # nominal 95 %: the photo bootstrap is close (percentile intervals from 20 clusters run a
    # little short); items of one photo are not independent, so the item bootstrap is far short
    assert 0.86 <= hit_photo / reps <= 0.99, hit_photo / reps
    assert hit_item / reps < 0.5, hit_item / reps


def test_fewer_than_ten_photos_refused_for_photo_and_labelled_for_auto():
    nine = np.repeat([f"p{i}" for i in range(MIN_PHOTOS - 1)], 4)
    with pytest.raises(RobenchError, match="needs ≥ 10 independent source photos; the test cells have 9"):
        bootstrap_units("photo", nine, "the test cells")
    clusters, label = bootstrap_units("auto", nine)
    assert clusters is None and "item bootstrap" in label and "only 9 source photos" in label
    ten = np.repeat([f"p{i}" for i in range(MIN_PHOTOS)], 4)
    clusters, label = bootstrap_units("auto", ten)
    assert clusters is not None and label == "photo bootstrap (10 photos)"
    assert bootstrap_units("item", ten)[0] is None
    with pytest.raises(RobenchError, match="--bootstrap must be one of"):
        bootstrap_units("cluster", ten)


def test_holm_and_bh_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: × m/rank = 0.02, 0.02, 0.04, 0.04 → running min from the top
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    out = holm([0.2, float("nan"), 0.01])  # NaN stays out of the family (m = 2)
    assert out[0] == pytest.approx(0.2) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.9, 0.8]).max() <= 1.0


def test_report_photo_bootstrap_refusal_exits_2(tmp_path):
    import subprocess
    import sys

    from test_report import add_cell

    from robench.engine.store import Store

    rng = np.random.default_rng(0)
    store = tmp_path / "s.sqlite"
    mos = rng.uniform(1, 5, 30)
    with Store(store) as st:
        add_cell(
            st,
            target="toy",
            defense="none",
            training=None,
            attack="fgsm",
            needs="gradients",
            eps=[8],
            mos=mos,
            q_clean=mos,
            q_adv=(mos + 0.1)[None],
            ref_ids=np.arange(30) // 10,
            train_seconds=1.0,
            sources=np.arange(30) // 10,
        )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "robench.cli",
            "report",
            "--store",
            str(store),
            "--out",
            str(tmp_path / "r"),
            "--bootstrap",
            "photo",
            "--ot",
            "exact",
            "--no-plots",
            "--no-pdf",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "needs ≥ 10 independent source photos" in r.stderr and "have 3" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()  # nothing written half


def test_report_json_has_one_row_per_comparison(tmp_path):
    import json

    from test_report import synthetic_recipes

    from robench.results.report import write_report

    store = tmp_path / "s.sqlite"
    synthetic_recipes(store)
    out = write_report(store, tmp_path / "rep", ot="exact", n_boot=200, plots=False, pdf=False)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = rep["comparisons"]
    keys = {
        "target",
        "defense",
        "versus",
        "attack",
        "eps",
        "metric",
        "delta",
        "ci_low",
        "ci_high",
        "p_adjusted",
        "significant",
        "n_items",
        "n_clusters",
        "seeds",
        "flags",
        "not_converged",
        "masking",
        "vacuous_bound",
    }
    assert rows and all(keys <= set(r) for r in rows) and out["tables"]
    pairs = {(r["defense"], r["versus"]) for r in rows}
    assert {("r", "none"), ("aat", "none"), ("aat", "r")} <= pairs  # AAT vs R from the recipe's compare_with
    assert all(r["p_adjusted"] >= r["p"] - 1e-12 for r in rows)  # a correction never lowers p
    assert rep["correction"] == "holm" and all(r["correction"] == "holm" for r in rows)


def test_ir_interval_and_neural_exact_agreement_on_real_mini_data(tiny_mini):
    """IR-Score of SSIM against PSNR as its 'base' (two real metrics on the same mini items and
    FGSM budgets): the exact (POT-equivalent quantile) and neural OT estimates agree within the
    bootstrap interval."""
    import robench
    from robench.engine.items import load_items
    from robench.results.transport import MapCache, ir_interval, ir_score

    items = load_items("mini", "test", 60, 0, {"size": 32, "crops_per_source": 1})
    mos = np.asarray(items.labels["mos"])
    sides = {}
    for name in ("psnr", "ssim"):
        t = robench.load_model(name)
        res = robench.load_attack("fgsm")(t, items.dist, items.ref, eps=[2 / 255, 8 / 255], return_images=False)
        sides[name] = tuple(x.numpy() for x in res.oriented(t.lower_better))
    src = np.asarray(items.labels["source"])
    out = {}
    for backend in ("exact", "neural"):
        r = ir_score(sides["psnr"], sides["ssim"], mos, MapCache(backend, seed=0))
        lo, hi = ir_interval(r, clusters=src, n_resamples=500, seed=0)
        assert lo <= r["ir"] <= hi and 0 <= lo and hi <= 1
        assert r["per_item"].shape == (60,) and np.isclose(r["per_item"].mean(), r["ir"])
        out[backend] = (r["ir"], lo, hi)
    (ie, le, he), (i_n, ln, hn) = out["exact"], out["neural"]
    assert le <= i_n <= he and ln <= ie <= hn, out
    assert he - le > 0  # a real interval, not a point
