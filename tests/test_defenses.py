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


@pytest.mark.parametrize(
    "mos",
    [
        np.random.default_rng(0).uniform(1, 5, 2000),
        np.repeat(np.round(np.random.default_rng(1).uniform(1.2, 4.8, 125), 3), 28),
    ],
)
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
    ell, topk, s = anchored_terms(pred, y, is_anchor, top_k=4, hinge_norm="mos-range")  # the paper's
    assert ell[1].item() == pytest.approx((3.5 - 2.9) / 2)  # predicted above its upper anchor, / R
    assert topk.item() == pytest.approx(0.3)
    assert s["anchor_err"] == pytest.approx(0.1) and s["coverage"] == pytest.approx(1.0)
    assert s["bound"] == pytest.approx(0.1 + 1.0 + 0.3 * 2.0) and s["emp_max_err"] == pytest.approx(1.5)
    # robench's default: v / (v + P), P the anchors' prediction range (2.9 − 1.1); Theorem 1 unchanged
    ell_p, topk_p, s_p = anchored_terms(pred, y, is_anchor, top_k=4)
    assert ell_p[1].item() == pytest.approx(0.6 / (0.6 + 1.8)) and topk_p.item() == pytest.approx(0.25)
    assert s_p["bound"] == pytest.approx(s["bound"]) and s_p["max_hinge"] == pytest.approx(0.3)
    pred2 = torch.tensor([1.0, 0.5, 3.0])  # below its lower anchor
    ell2, _, s2 = anchored_terms(pred2, y, is_anchor, hinge_norm="mos-range")
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
    from robench.engine.train import train

    old = os.environ.get("ROBENCH_HOME")
    os.environ["ROBENCH_HOME"] = str(aat_home)
    try:
        return train(
            "birqa",
            dataset_options=TINY,
            model_options={"width": 0.25},
            epochs=1,
            max_steps_per_epoch=2,
            progress=False,
        )
    finally:
        os.environ["ROBENCH_HOME"] = old


def test_tiny_aat_run_logs_the_bound_and_never_attacks_anchors(clean_tiny_birqa, monkeypatch, tmp_path):
    from robench.defenses import recipes

    seen = []
    real = recipes.pgd_inner

    def spy(target, dist, ref, eps, steps, seed, **kw):
        seen.append(dist.shape[0])
        assert kw.get("objective") is not None  # the default inner PGD ascends the recipe's own loss
        return real(target, dist, ref, eps, steps, seed, **kw)

    monkeypatch.setattr(recipes, "pgd_inner", spy)
    from robench.engine.finetune import adversarial_train

    r = adversarial_train("birqa", "aat", steps=8, dataset_options=TINY, progress=False, out=tmp_path / "aat")
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
    # anchors redrawn every step (not 8 fixed images); the band moves where it is a sub-range
    table = robench.load_dataset("mini", split="train", **TINY).table
    mos_of = dict(zip(table["index"].tolist(), table["mos"].tolist()))
    span = max(mos_of.values()) - min(mos_of.values())
    prov = t.card.weights.provenance
    assert prov["band_width"] <= min(prov["spacing"] * (prov["anchors"] - 1), prov["band_fraction"] * span) + 1e-9
    sets = [frozenset(row["anchor_ids"]) for row in rows]
    differ = sum(a != b for a, b in zip(sets, sets[1:]))
    assert differ >= 0.9 * (len(sets) - 1), sets  # no anchor set repeated in ≥ 90 % of consecutive pairs
    if prov["band_width"] < span - 1e-6:  # a sub-range moves; the paper's Δ·(K−1) ≥ this set's range
        assert len({row["band_lo"] for row in rows}) > 1
    for row in rows:
        assert row["band_hi"] - row["band_lo"] <= prov["band_width"] + 1e-9 <= span + 1e-9  # within the MOS range
        assert len(row["anchor_ids"]) == row["n_anchors"]
        assert all(row["band_lo"] <= mos_of[i] <= row["band_hi"] for i in row["anchor_ids"])
        assert row["mos_range"] <= row["band_hi"] - row["band_lo"] + 1e-6
        # the bound relative to the batch range, and vacuous batches marked
        assert row["bound_rel"] == pytest.approx(row["bound"] / row["mos_range"])
        assert row["vacuous"] == (row["bound"] >= row["mos_range"])
    csv_head = (tmp_path / "aat" / "steps.csv").read_text().splitlines()[0].split(",")
    assert {"band_lo", "band_hi", "anchor_ids", "bound_rel", "vacuous"} <= set(csv_head)
    assert prov["calibration_init"]["skipped"]  # BiRQA regresses MOS: no least-squares re-fit


@pytest.mark.parametrize("recipe", ["r", "at"])
def test_r_and_at_runs_and_resume(clean_tiny_birqa, tmp_path, recipe):
    from robench.engine.finetune import adversarial_train

    out = tmp_path / recipe
    adversarial_train("birqa", recipe, steps=10, dataset_options=TINY, progress=False, out=out)
    first = json.loads((out / "steps.json").read_text())["steps"]
    r = adversarial_train("birqa", recipe, steps=20, dataset_options=TINY, progress=False, out=out)  # extends
    rows = json.loads((out / "steps.json").read_text())["steps"]
    assert [x["step"] for x in rows] == list(range(20)) and rows[:10] == first
    assert np.isfinite(r["val_srocc"])
    if recipe == "at":
        assert all(x["mean_label_drop"] >= 0 for x in rows)
        import robench

        assert robench.load_model("birqa.at").card.weights.provenance["at_ssim"].startswith("rgb-mean")


def test_unknown_recipe_did_you_mean():
    from robench.engine.finetune import adversarial_train
    from robench.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'aat'"):
        adversarial_train("birqa", "aatt", dataset_options=TINY)


# --------------------------------------------------------------------------------------------
# inference-time defences

from robench.core.registry import DEFENSES  # noqa: E402

INFERENCE = [r["name"] for r in DEFENSES.info() if r.get("kind") == "inference"]


def _pair(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    return (0.7 * ref + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1), ref


def _tiny_birqa():
    from robench.models import build

    torch.manual_seed(0)
    return build("birqa", width=0.25).eval()


def test_inference_defences_registered():
    assert {"flip", "rotate", "jpeg", "smoothing", "squeeze"} <= set(INFERENCE)
    assert {"r", "at", "aat"} <= set(DEFENSES.names())


@pytest.fixture(scope="module")
def denoiser(aat_home):
    """A tiny DiffPure denoiser trained here (a few steps: the tests need its plumbing, not its quality)."""
    from robench.defenses.diffpure import train_diffpure

    old = os.environ.get("ROBENCH_HOME")
    os.environ["ROBENCH_HOME"] = str(aat_home)
    try:
        return train_diffpure(dataset_options=TINY, steps=5, batch=4, crop=32, width=8, progress=False)
    finally:
        os.environ["ROBENCH_HOME"] = old


@pytest.mark.parametrize("name", INFERENCE)
def test_randomness_flag_matches_the_probe_and_gradients_flow(name, denoiser):
    import robench
    from robench.defenses.wrappers import Defended

    d = Defended(_tiny_birqa(), [DEFENSES.get(name)()])
    dist, ref = _pair()
    res = robench.load_attack("fgsm", eot=1)(d, dist, ref, eps=[4 / 255])
    assert res.probes["randomised"] == DEFENSES.get(name).randomised == d.randomised
    assert res.probes["zero_grad"] == 0 and res.probes["nan_grad"] == 0  # exact or BPDA: a real gradient
    assert (res.linf <= 4 / 255 + 1e-6).all()


def test_eot_averages_over_draws():
    from robench.defenses.wrappers import Defended, Flip
    from robench.core.target import Target, TargetCard

    class LeftColumn(Target):  # a score that a horizontal flip changes
        def __init__(self):
            super().__init__()
            self.card = TargetCard(name="left", lower_better=False, score_range=(0.0, 1.0), min_size=1)

        def score(self, dist, ref):
            return dist[..., 0].mean(dim=(1, 2))

    x = torch.zeros(1, 3, 8, 8)
    x[..., -1] = 1.0  # right column white: unflipped score 0, flipped 1
    d = Defended(LeftColumn(), [Flip()])
    torch.manual_seed(0)
    one = {float(d.bind(x, eot=1)(x)) for _ in range(20)}
    assert one == {0.0, 1.0}  # a single draw is one of the two
    f = d.bind(x, eot=400)
    assert abs(float(f(x)) - 0.5) < 0.1 and int(f.queries[0]) == 400  # EOT: the mean, 400 queries
    import robench

    atk = robench.load_attack("fgsm")
    atk.resolve(d)
    assert atk.params["eot"] == 20  # "auto" against a randomised target


def test_planted_gradient_masking_defence_is_flagged(tiny_mini, tmp_path):
    from robench.defenses.wrappers import Defended, InferenceDefense
    from robench.engine.cell import cell_flags, summarise
    from robench.engine.items import load_items
    import robench

    class Quantise(InferenceDefense):  # claims an exact gradient but rounds: zero gradient
        name = "quantise"

        def forward(self, dist, ref):
            return torch.round(dist * 16) / 16, ref

    d = Defended(_tiny_birqa(), [Quantise()])
    items = load_items("mini", "test", 4, 0, {"size": 32, "crops_per_source": 1})
    atk = robench.load_attack("pgd", steps=2)
    res = atk(d, items.dist, items.ref, eps=[4 / 255])
    flags = cell_flags(res, summarise(res, items, [4.0], d.lower_better, None), atk)
    assert flags["zero_grad"] == 4  # every probed image: the masking is flagged with the result


def test_parse_defense_spec():
    from robench.defenses.wrappers import Flip, Jpeg, parse_defense
    from robench.core.errors import RobenchError, UnknownNameError

    recipe, chain = parse_defense("aat+flip+jpeg", {"jpeg": {"quality": 50}})
    assert recipe == "aat" and [type(c) for c in chain] == [Flip, Jpeg] and chain[1].params["quality"] == 50
    assert parse_defense("none") == (None, [])
    with pytest.raises(RobenchError, match="two training recipes"):
        parse_defense("aat+r")
    with pytest.raises(UnknownNameError, match="did you mean 'flip'"):
        parse_defense("flipp")


def test_run_with_a_trained_variant_and_a_wrapper_trains_what_is_missing(clean_tiny_birqa, tmp_path):
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    spec = RunSpec(
        model="birqa",
        defense="r+flip",
        attacks=["fgsm"],
        eps=[4],
        n=4,
        store=tmp_path / "s.sqlite",
        dataset_options={"size": 32, "crops_per_source": 1},
        attack_params={"fgsm": {"eot": 2}},
    )
    rep = run(spec, progress=False)
    assert rep["cells"][0]["status"] == "done"
    assert rep["defense"]["training"] == "r" and rep["defense"]["randomised"]
    assert rep["defense"]["inference"][0]["name"] == "flip"
    import robench

    assert robench.load_model("birqa.r").card.weights.provenance["defense"] == "r"


def test_diffpure_denoiser_plumbing(denoiser):
    import robench
    from robench.defenses.diffpure import DiffPure
    from robench.core.errors import RobenchError

    assert robench.core.weights.lookup("diffpure.mini")["provenance"]["images"] == "reference images"
    d = DiffPure(t_star=8, steps=4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y1, _ = d(x, None)
    y2, _ = d(x, None)
    assert y1.shape == x.shape and 0 <= float(y1.detach().min()) and float(y1.detach().max()) <= 1
    assert not torch.equal(y1, y2)  # the forward diffusion is random: EOT territory
    (g,) = torch.autograd.grad(y1.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # exact gradient through the DDIM loop
    db = DiffPure(t_star=8, steps=4, bpda=True)
    yb, _ = db(x, None)
    (gb,) = torch.autograd.grad(yb.sum(), x)
    assert torch.equal(gb, torch.ones_like(gb)) and db.gradient == "bpda"  # identity backward
    with pytest.raises(RobenchError, match="steps"):
        DiffPure(t_star=3, steps=5)
    with pytest.raises(RobenchError, match="robench train --defense diffpure"):
        DiffPure(weights="diffpure.kadid10k")


@pytest.mark.parametrize("recipe", ["r", "at", "aat"])
def test_inner_pgd_ascends_the_recipes_own_loss(clean_tiny_birqa, recipe):
    """The default inner attack maximises the recipe's training loss over the attacked items: on
    the same batch and start it ends with a higher loss than the score-raising inner attack and
    than the clean batch, anchors untouched; ``mos-split`` lowers the higher-MOS half."""
    from dataclasses import replace

    import robench
    from robench.attacks.base import ModeGuard
    from robench.core.profiles import get_profile
    from robench.defenses import recipes
    from robench.engine.train import training_data

    prof = get_profile("quick")
    ds_opts, _ = training_data("mini", prof, 0, TINY)
    _, (data, val) = training_data("mini", prof, 0, ds_opts, "train", "val")
    target = robench.load_model("birqa")
    task = recipes.DEFENSES.get(recipe)(target, data, prof, 0, "birqa", heldout=val)
    b = task.make_batch(0, torch.Generator().manual_seed(0))

    def loss_at(adv):
        with ModeGuard(target), torch.no_grad():
            return float(task.objective(replace(b, replay=None), adv)[0])

    adv = {}
    for inner in ("loss", "up", "mos-split"):
        task.prof = replace(prof, adv_inner=inner)
        adv[inner] = task._attack(b)
    # it ascends its own loss past the clean batch's; against the score-raising attack it must not
    # lose by more than 1 %: AAT's top-k hinge over a band spanning the whole MOS range is
    # non-smooth, and 5 sign steps from a random start can end level with another direction
    assert loss_at(adv["loss"]) > loss_at(b.dist)
    assert loss_at(adv["loss"]) > (0.99 if recipe == "aat" else 1.0) * loss_at(adv["up"])
    for a in adv.values():
        assert torch.equal(a[b.is_anchor], b.dist[b.is_anchor])
        assert float((a - b.dist).abs().max()) <= task.eps + 1e-6
    att = ~b.is_anchor
    with ModeGuard(target), torch.no_grad():
        q0, q = (target(x[att], b.ref[att]) for x in (b.dist, adv["mos-split"]))
    from robench.core.directions import get_direction

    hi = torch.from_numpy(get_direction("mos-split").signs(b.y[att].numpy(), int(att.sum()))[0]) < 0
    assert float((q - q0)[hi].mean()) < 0 < float((q - q0)[~hi].mean())
    task.prof = replace(prof, adv_inner="sideways")
    with pytest.raises(Exception, match="adv_inner"):
        task._attack(b)
