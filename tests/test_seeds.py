"""Issue 17.5: training seeds. ``--seeds 0,1,2`` fine-tunes and evaluates each recipe once per
seed (seed 0 keeps the weights ``M.<recipe>``, seed k > 0 is ``M.<recipe>-s<k>``); the report
shows mean ± s.d. over the seeds, and the ΔSROCC bootstrap resamples the seeds as well as the
photos. With one seed nothing changes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from robench.core.stats import mean_weighted, paired_bootstrap, seeded_paired_bootstrap

TINY = {"size": 32, "crops_per_source": 1}


# --------------------------------------------------------------------------------------------
# 1. the seed-aware bootstrap on synthetic data


def _photos(rng, photos=20, per=5):
    src = np.repeat(np.arange(photos), per)
    mos = rng.uniform(1, 5, photos * per)
    base = mos + rng.normal(0, 0.8, photos)[src] + rng.normal(0, 0.5, photos * per)
    return mos, base, src


def test_one_seed_is_exactly_the_paired_bootstrap():
    rng = np.random.default_rng(1)
    mos, base, src = _photos(rng)
    a = base + rng.normal(0, 0.3, base.size)
    for clusters in (src, None):
        old = paired_bootstrap(a, base, mos, n_resamples=300, seed=4, clusters=clusters)
        assert seeded_paired_bootstrap([a], [base], mos, n_resamples=300, seed=4, clusters=clusters) == old
        assert seeded_paired_bootstrap(a[None], base[None], mos, n_resamples=300, seed=4, clusters=clusters) == old
    old = paired_bootstrap(a, base, stat=mean_weighted, n_resamples=200, seed=0, clusters=src)
    assert seeded_paired_bootstrap([a], [base], stat=mean_weighted, n_resamples=200, seed=0, clusters=src) == old


def test_seed_variation_widens_the_interval_and_identical_seeds_do_not():
    rng = np.random.default_rng(2)
    mos, base, src = _photos(rng)
    a0 = mos + rng.normal(0, 0.5, base.size)  # a defence whose SROCC beats the base
    single = paired_bootstrap(a0, base, mos, n_resamples=500, seed=0, clusters=src)
    # the same predictions for three seeds: the seed draws change nothing (same photo draws)
    same = seeded_paired_bootstrap([a0, a0, a0], [base], mos, n_resamples=500, seed=0, clusters=src)
    assert same["ci"] == pytest.approx(single["ci"], abs=1e-12) and same["delta"] == pytest.approx(single["delta"])
    assert same["n_seeds"] == [3, 1] and same["n_clusters"] == 20
    # seeds that differ a lot (each fine-tuning lands elsewhere): a wider interval, centred on the
    # mean over the seeds
    seeds = [mos + rng.normal(0, s, base.size) for s in (0.2, 0.8, 2.0)]
    multi = seeded_paired_bootstrap(seeds, [base], mos, n_resamples=500, seed=0, clusters=src)
    one = paired_bootstrap(seeds[1], base, mos, n_resamples=500, seed=0, clusters=src)
    assert multi["ci"][1] - multi["ci"][0] > 1.5 * (one["ci"][1] - one["ci"][0])
    assert multi["delta"] == pytest.approx(np.mean(multi["per_seed"][0]) - multi["per_seed"][1][0])
    assert multi["ci"][0] <= multi["delta"] <= multi["ci"][1]


# --------------------------------------------------------------------------------------------
# 2. configuration: the CLI, a TOML file, a RunConfig and robench.run's keywords agree


def test_seeds_setting_four_ways(tmp_path, monkeypatch):
    import tomllib

    from typer.testing import CliRunner

    import robench
    import robench.engine.grid as G
    from robench.cli.app import app
    from robench.core.config import RunConfig, dumps_toml
    from robench.core.errors import RobenchError

    got = []
    monkeypatch.setattr(G, "run_config", lambda cfg, **kw: got.append(cfg.resolve()) or {"runs": [], "config": "x"})
    r = CliRunner().invoke(
        app, ["run", "--model", "birqa", "--defense", "none,aat", "--attacks", "fgsm", "--seeds", "2,0,1", "--json"]
    )
    assert r.exit_code == 0, r.output
    toml = tmp_path / "run.toml"
    toml.write_text(
        dumps_toml({"targets": ["birqa"], "defenses": ["none", "aat"], "attacks": ["fgsm"], "seeds": [0, 1, 2]})
    )
    robench.run(toml)
    robench.run(RunConfig.from_dict({"model": "birqa", "defense": "none,aat", "attacks": "fgsm", "seeds": [1, 2, 0]}))
    robench.run(model="birqa", defense="none,aat", attacks="fgsm", seeds="0,1,2")
    assert len(got) == 4 and all(c == got[0] for c in got) and got[0].seeds == [0, 1, 2]
    specs = got[0].specs()  # the base once, the recipe once per seed
    assert [(s.defense, s.train_seed) for s in specs] == [(None, None), ("aat", 0), ("aat", 1), ("aat", 2)]
    assert tomllib.loads(got[0].to_toml())["seeds"] == [0, 1, 2]  # the resolved config.toml reproduces it
    assert RunConfig.from_dict({"model": "birqa"}).resolve().seeds is None  # default: one, as before
    for bad in ("0,x", "-1", ""):
        with pytest.raises(RobenchError, match="seeds must be"):
            RunConfig.from_dict({"model": "birqa", "seeds": bad}).resolve()
    with pytest.raises(RobenchError, match="--weights names one file"):
        RunConfig.from_dict({"model": "birqa", "defense": "r", "seeds": "0,1", "weights": "x.pt"}).resolve()


def test_names_round_trip():
    from robench.core.weights import seeded_name, split_seed
    from robench.models import split_name

    assert seeded_name("birqa.aat", 0) == seeded_name("birqa.aat", None) == "birqa.aat"
    assert seeded_name("birqa.aat", 3) == "birqa.aat-s3" and split_seed("birqa.aat-s3") == ("birqa.aat", 3)
    assert split_seed("lpips.alex.r") == ("lpips.alex.r", 0)
    assert split_name("birqa.aat-s3") == ("birqa", "aat-s3")


# --------------------------------------------------------------------------------------------
# 3. the reporter on hand-made cells of three seeds


def _cell(st, *, target, defense, training, train_seed, attack, eps, mos, q_clean, q_adv, sources):
    from robench.engine.store import cell_key

    n = len(q_clean)
    config = {
        "target": {
            "name": target,
            "weights_sha256": f"sha-{target}",
            "weights_source": "trained-here",
            "lower_better": False,
        },
        "defense": {
            "name": defense,
            "training": training,
            "inference": [],
            "randomised": False,
            "gradient": "exact",
            **({"train_seed": train_seed} if train_seed else {}),
        },
        "attack": {"name": attack, "kind": "fixed", "needs": "gradients", "params": {}},
        "eps": [float(e) for e in eps],
        "dataset": {
            "name": "synthetic",
            "split": "test",
            "kind": "pairs",
            "options": {},
            "n": n,
            "n_requested": n,
            "subset_seed": 0,
            "items_sha256": "items",
        },
        "seed": 0,
        "profile": "quick",
    }
    rows = [
        {
            "item": i,
            "eps": float(e),
            "item_id": f"img{i}",
            "ref_id": str(sources[i]),
            "distortion": "d",
            "level": 1,
            "mos": float(mos[i]),
            "clean_score": float(q_clean[i]),
            "score": float(q_adv[k][i]),
            "linf": 0.0,
            "l2": 0.0,
            "queries": 1,
            "source": str(sources[i]),
        }
        for k, e in enumerate(eps)
        for i in range(n)
    ]
    st.commit_cell(
        cell_key(config, "test"),
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
    st.record_weights(
        [
            {
                "sha256": f"sha-{target}",
                "name": target,
                "source": "trained-here",
                "provenance": {"train_seconds": 60.0 * (1 + train_seed), "recipe": training, "train_seed": train_seed},
            }
        ]
    )


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is ~10× faster than two on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


def test_report_shows_mean_and_spread_over_seeds(tmp_path, one_thread):
    from robench.engine.store import Store
    from robench.results.cells import load_cells
    from robench.results.report import write_report

    rng = np.random.default_rng(0)
    n = 60
    mos, src = rng.uniform(1, 5, n), np.arange(n) // 4  # 15 photos
    q = mos / 5 + rng.normal(0, 0.1, n)
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        _cell(
            st,
            target="toy",
            defense="none",
            training=None,
            train_seed=0,
            attack="fgsm",
            eps=[8],
            mos=mos,
            q_clean=q,
            q_adv=(q + rng.uniform(0, 0.6, n))[None],
            sources=src,
        )
        for k in range(3):
            _cell(
                st,
                target="toy.r" + (f"-s{k}" if k else ""),
                defense="r",
                training="r",
                train_seed=k,
                attack="fgsm",
                eps=[8],
                mos=mos,
                q_clean=q,
                q_adv=(q + rng.uniform(0, 0.2 + 0.2 * k, n))[None],
                sources=src,
            )
        cells = st.cells()
    assert sorted(cells["train_seed"].dropna().astype(int)) == [0, 1, 2]  # the store knows each cell's seed
    assert cells.loc[cells["defense"] == "none", "train_seed"].isna().all()  # no recipe: NULL
    loaded, _ = load_cells(store)
    assert {c.arch for c in loaded} == {"toy"} and sorted(c.train_seed for c in loaded if c.defense == "r") == [0, 1, 2]
    write_report(store, tmp_path / "rep", ot="exact", n_boot=200, plots=False, pdf=False)
    md = (tmp_path / "rep" / "robustness.md").read_text()
    assert "mean ± sample standard deviation over the seeds" in md and " ± " in md and "Seeds" in md
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    t = next(t for t in rep["tables"] if t["name"] == "robustness")
    r_row = next(r for r in t["rows"] if r["index"][-1] == "R")
    srocc = r_row["values"][t["columns"].index("SROCC fgsm")]
    per_seed = [c for c in loaded if c.defense == "r"]
    vals = [c.metric(8.0) for c in sorted(per_seed, key=lambda c: c.train_seed)]
    assert srocc == pytest.approx(np.mean(vals))
    assert t["spread"]["('toy', 'R')|('SROCC', 'fgsm')"] == pytest.approx(np.std(vals, ddof=1))
    assert r_row["values"][t["columns"].index("Seeds ")] == 3
    comp = [c for c in rep["comparisons"] if c["defense"] == "r" and c["versus"] == "none"]
    assert comp and all(c["seeds"] == [0, 1, 2] and c["versus_seeds"] == [0] for c in comp)
    assert all("training seeds" in c["units"] for c in comp)
    att = next(c for c in comp if c["attack"] == "fgsm")
    base = next(c for c in loaded if c.defense == "none")
    assert att["delta"] == pytest.approx(np.mean(vals) - base.metric(8.0))


# --------------------------------------------------------------------------------------------
# 4. end to end: robench.run with seeds 0,1 on a tiny grid (a tiny clean BiRQA, R- for 2 steps)


@pytest.fixture(scope="module")
def seeds_home(tmp_path_factory):
    return tmp_path_factory.mktemp("seeds_home")


def _no_val_eval(target, dataset, batch_size=64, progress=False):
    return {"srocc": 0.5, "plcc": 0.5, "krocc": 0.5}  # the whole val split's SROCC: not looked at here


@pytest.fixture
def tiny_training(seeds_home, monkeypatch, one_thread):
    import robench.engine.train as T
    from robench.core.profiles import PROFILES

    monkeypatch.setenv("ROBENCH_HOME", str(seeds_home))
    monkeypatch.setattr(T, "evaluate", _no_val_eval)
    # quick, with a tiny batch, PGD-1 and a 2-step cap: the code path of a real run in seconds
    monkeypatch.setitem(
        PROFILES, "quick", dataclasses.replace(PROFILES["quick"], train_batch=4, adv_pgd_steps=1, adv_steps=2)
    )
    from robench.data.mini import build_mini

    build_mini(size=32, crops_per_source=1, seed=0, progress=False)
    T.train(
        "birqa", dataset_options=TINY, model_options={"width": 0.25}, epochs=1, max_steps_per_epoch=2, progress=False
    )
    return seeds_home


def test_run_with_two_seeds_end_to_end(tiny_training, tmp_path):
    import robench
    from robench.core import weights as W
    from robench.engine.store import Store
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells
    from robench.results.render import to_markdown
    from robench.results.tables import robustness

    store = tmp_path / "s.sqlite"
    settings = dict(
        model="birqa",
        defense="none,r",
        attacks="fgsm",
        eps=[8],
        n=6,
        dataset_options=TINY,
        directions="up",
        store=str(store),
        progress=False,
    )
    grid = robench.run(**settings, seeds="0,1")
    assert [(r["defense"]["name"], r["train_seed"]) for r in grid["runs"]] == [("none", None), ("r", 0), ("r", 1)]
    w0, w1 = W.lookup("birqa.r"), W.lookup("birqa.r-s1")
    assert w0 and w1 and w0["sha256"] != w1["sha256"]
    assert (w0["provenance"]["train_seed"], w1["provenance"]["train_seed"]) == (0, 1)
    assert w0["provenance"]["seed"] == w1["provenance"]["seed"] == 0  # the same data and split
    assert w0["provenance"]["clean_sha256"] == w1["provenance"]["clean_sha256"]  # one clean model
    with Store(store) as st:
        cells, weights = st.cells(), st.weights()
    r = cells[cells["defense"] == "r"].sort_values("train_seed")
    assert list(r["train_seed"]) == [0, 1] and list(r["target"]) == ["birqa.r", "birqa.r-s1"]
    assert list(r["weights_sha256"]) == [w0["sha256"], w1["sha256"]]
    assert weights[w1["sha256"]]["provenance"]["train_seed"] == 1
    assert cells.loc[cells["defense"] == "none", "train_seed"].isna().all()
    # seed 0 keeps its name and its cell keys: the same grid without --seeds finds every cell cached
    again = robench.run(**settings)
    assert [c["status"] for run in again["runs"] for c in run["cells"]] == ["cached", "cached"]
    assert [c["status"] for run in robench.run(**settings, seeds=[0, 1])["runs"] for c in run["cells"]] == [
        "cached"
    ] * 3
    # the reporter's robustness table and comparison rows (write_report adds the neural-OT IR
    # table, tens of seconds, exercised by test 3)
    rep = Analysis(*load_cells(store), ot="exact", n_boot=100)
    md = to_markdown(robustness(rep))
    assert " ± " in md and "training seeds (0, 1" in md
    comp = [c for c in rep.comparisons() if c["defense"] == "r" and c["versus"] == "none"]
    assert comp and all(c["seeds"] == [0, 1] and c["versus_seeds"] == [0] for c in comp)


def test_a_store_from_before_gains_the_column(tmp_path):
    import sqlite3

    from robench.engine.store import SCHEMA, Store

    path = tmp_path / "old.sqlite"
    old = SCHEMA.replace(
        "    train_seed INTEGER,                   -- a recipe's training seed (--seeds); NULL: no recipe\n", ""
    )
    assert "train_seed" not in old
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute("INSERT INTO cells (key, status, config) VALUES ('k', 'done', '{}')")
    db.commit()
    db.close()
    with Store(path) as st:
        cells = st.cells()
    assert list(cells["key"]) == ["k"] and cells["train_seed"].isna().all()
