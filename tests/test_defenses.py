"""Adversarial-training recipes: the AAT sampler, hinge and Theorem-1 bound; tiny runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robench.defenses.aat import AnchorSampler, anchored_terms, nearest_anchors

TINY = {"size": 32, "crops_per_source": 1, "progress": False}


@pytest.mark.parametrize("mos", [np.random.default_rng(0).uniform(1, 5, 2000),
                                 np.repeat(np.round(np.random.default_rng(1).uniform(1.2, 4.8, 125), 3), 28)])
def test_sampler_anchors_cover_the_band(mos):
    s = AnchorSampler(mos, batch=32, anchors=8, spacing=0.5, seed=0)
    for _ in range(40):
        b = s.sample()
        y = mos[b.indices]
        ya = np.sort(y[b.is_anchor])
        assert len(b.indices) == 32 and len(set(b.indices.tolist())) == 32
        assert b.is_anchor.sum() >= 8
        assert ya[0] == y.min() and ya[-1] == y.max()  # both band ends are anchors
        assert np.diff(ya).max() <= 0.5 + 1e-9  # consecutive anchors at most Δ apart
        assert y.max() - y.min() <= s.width + 1e-9 or b.band[1] - b.band[0] > s.width  # a contiguous band


def test_hinge_and_bound_on_a_hand_made_batch():
    y = torch.tensor([1.0, 2.0, 3.0])
    is_anchor = torch.tensor([True, False, True])
    pred = torch.tensor([1.1, 3.5, 2.9])
    lo, hi = nearest_anchors(y, is_anchor)
    assert lo.tolist() == [0, 0, 2] and hi.tolist() == [0, 2, 2]
    ell, topk, s = anchored_terms(pred, y, is_anchor, top_k=4)
    assert ell[1].item() == pytest.approx((3.5 - 2.9) / 2)  # predicted above its upper anchor, / R
    assert topk.item() == pytest.approx(0.3)
    assert s["anchor_err"] == pytest.approx(0.1) and s["coverage"] == pytest.approx(1.0)
    assert s["bound"] == pytest.approx(0.1 + 1.0 + 0.3 * 2.0) and s["emp_max_err"] == pytest.approx(1.5)
    pred2 = torch.tensor([1.0, 0.5, 3.0])  # below its lower anchor
    ell2, _, s2 = anchored_terms(pred2, y, is_anchor)
    assert ell2[1].item() == pytest.approx(0.25) and s2["emp_max_err"] <= s2["bound"]


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 40), st.integers(0, 10_000))
def test_theorem_1_holds_on_random_batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g) * 4 + 1
    is_anchor = torch.rand(n, generator=g) < 0.3
    is_anchor[y.argmin()] = True
    is_anchor[y.argmax()] = True
    pred = y + torch.randn(n, generator=g) * float(torch.rand(1, generator=g) * 2)
    _, _, s = anchored_terms(pred, y, is_anchor)
    assert s["emp_max_err"] <= s["bound"] + 1e-5


@pytest.fixture(scope="module")
def aat_home(tmp_path_factory):
    """This module registers a tiny clean `birqa` and its variants: keep them out of the
    session cache other tests share."""
    return tmp_path_factory.mktemp("aat_home")


@pytest.fixture(autouse=True)
def _aat_home(aat_home, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(aat_home))


@pytest.fixture(scope="module")
def clean_tiny_birqa(aat_home):
    from robench.train import train

    old = os.environ.get("ROBENCH_HOME")
    os.environ["ROBENCH_HOME"] = str(aat_home)
    try:
        return train("birqa", dataset_options=TINY, model_options={"width": 0.25}, epochs=1, max_steps_per_epoch=2,
                     progress=False)
    finally:
        os.environ["ROBENCH_HOME"] = old


def test_tiny_aat_run_logs_the_bound_and_never_attacks_anchors(clean_tiny_birqa, monkeypatch, tmp_path):
    from robench.defenses import recipes

    seen = []
    real = recipes.pgd_inner

    def spy(target, dist, ref, eps, steps, seed):
        seen.append(dist.shape[0])
        return real(target, dist, ref, eps, steps, seed)

    monkeypatch.setattr(recipes, "pgd_inner", spy)
    r = recipes.adversarial_train("birqa", "aat", steps=8, dataset_options=TINY, progress=False, out=tmp_path / "aat")
    rows = json.loads((tmp_path / "aat" / "steps.json").read_text())["steps"]
    assert len(rows) == 8
    for row in rows:
        assert row["emp_max_err"] <= row["bound"] + 1e-5, row  # Theorem 1, on every logged batch
        for k in ("anchor_err", "coverage", "max_hinge", "mos_range", "anchored_loss", "loss"):
            assert np.isfinite(row[k])
    assert seen == [32 - row["n_anchors"] for row in rows]  # only non-anchors reach the attacker
    import robench

    t = robench.load_model("birqa.aat")
    assert t.card.weights.source == "trained-here" and t.card.weights.provenance["defense"] == "aat"
    assert t.card.weights.provenance["clean_sha256"] and r["name"] == "birqa.aat"


@pytest.mark.parametrize("recipe", ["r", "at"])
def test_r_and_at_runs_and_resume(clean_tiny_birqa, tmp_path, recipe):
    from robench.defenses.recipes import adversarial_train

    out = tmp_path / recipe
    adversarial_train("birqa", recipe, steps=10, dataset_options=TINY, progress=False, out=out)
    first = json.loads((out / "steps.json").read_text())["steps"]
    r = adversarial_train("birqa", recipe, steps=20, dataset_options=TINY, progress=False, out=out)  # extends
    rows = json.loads((out / "steps.json").read_text())["steps"]
    assert [x["step"] for x in rows] == list(range(20)) and rows[:10] == first
    assert np.isfinite(r["val_srocc"])
    if recipe == "at":
        assert all(x["mean_label_drop"] >= 0 for x in rows)


def test_unknown_recipe_did_you_mean():
    from robench.defenses.recipes import adversarial_train
    from robench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'aat'"):
        adversarial_train("birqa", "aatt", dataset_options=TINY)
