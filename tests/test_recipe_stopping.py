"""Issue 17.6: the adversarial-training recipes stop when the held-out loss has settled (a
patience rule on its EMA) or at the step cap; the log and the provenance say which, and a run
killed and resumed makes the same decision at the same step."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from robench.core.profiles import PROFILES, get_profile
from robench.core.training import PatienceStop
from tests.conftest import Interrupt, crash_at

TINY = {"size": 32, "crops_per_source": 1, "progress": False}


# --------------------------------------------------------------------------------------------
# 1. the rule on hand-made sequences


def _run(rule: PatienceStop, losses, cap: int | None = None) -> int | None:
    """Feed ``losses`` (one per evaluation); the index of the evaluation that settles, or None."""
    for i, v in enumerate(losses[:cap]):
        if rule.update(v, step=i)["settled"]:
            return i
    return None


def test_a_plateau_settles_after_patience_evaluations():
    losses = [1.0, 0.8, 0.6, 0.5] + [0.5] * 20
    rule = PatienceStop(patience=4, min_delta=0.01, span=3)
    at = _run(rule, losses)
    # the EMA (α = 0.5) still falls after the raw loss stops at evaluation 3: its last gain over
    # 1 % of the reference is at evaluation 9 (0.5020 vs 0.5078), then 10-13 are four bad ones
    assert at == 13 and rule.settled and rule.bad == 4 and rule.settled_at == 13 and rule.ref_step == 9
    assert rule.best == rule.ema and 0.5 < rule.best < 0.501  # the lowest EMA, for the log
    with pytest.raises(RuntimeError, match="settled"):
        rule.update(0.1, step=at + 1)  # frozen once settled


def test_a_flat_sequence_settles_exactly_after_patience():
    rule = PatienceStop(patience=3, min_delta=0.01, span=3)
    assert _run(rule, [2.0] * 10) == 3  # evaluation 0 sets the reference; 1, 2, 3 are bad
    assert rule.ref == 2.0 and rule.ref_step == 0


def test_a_steadily_falling_sequence_runs_to_the_cap():
    losses = [0.9**k for k in range(40)]  # 10 % per evaluation, well above min_delta
    rule = PatienceStop(patience=4, min_delta=0.01, span=3)
    assert _run(rule, losses) is None and not rule.settled
    assert rule.bad == 0 and rule.best == rule.ema and rule.best_step == 39


def test_noise_below_min_delta_counts_as_no_improvement():
    import numpy as np

    # ±0.3 % wobble around 1.0: the EMA moves, but never by more than 1 % of the reference
    noise = 1.0 + 0.003 * np.sin(np.arange(30) * 1.7)
    rule = PatienceStop(patience=5, min_delta=0.01, span=3)
    assert _run(rule, noise.tolist()) == 5
    # the same wobble with min_delta 0: every new low counts, so it takes longer to settle
    strict = PatienceStop(patience=5, min_delta=0.0, span=3)
    settled = _run(strict, noise.tolist())
    assert settled is None or settled > 5


def test_small_gains_add_up_against_the_reference():
    # 0.4 % per evaluation: no single step beats 1 %, but the reference does not move with them,
    # so every third evaluation the accumulated gain passes 1 % and resets the count
    losses = [0.996**k for k in range(40)]
    rule = PatienceStop(patience=4, min_delta=0.01, span=1)  # span 1: the EMA is the loss
    assert _run(rule, losses) is None
    assert rule.bad < 4


def test_state_round_trips_and_resumes_the_same_decision():
    losses = [1.0, 0.9, 0.85, 0.84, 0.84, 0.839, 0.84, 0.838] + [0.84] * 8
    full = PatienceStop(4, 0.01, 3)
    at_full = _run(full, losses)
    part = PatienceStop(4, 0.01, 3)
    for i, v in enumerate(losses[:5]):
        part.update(v, step=i)
    saved = json.loads(json.dumps(part.state_dict()))  # plain data (last.pt, weights_only)
    again = PatienceStop(4, 0.01, 3)
    again.load_state_dict(saved)
    at_again = next((i for i, v in enumerate(losses) if i >= 5 and again.update(v, step=i)["settled"]), None)
    assert at_again == at_full is not None and again.state_dict() == full.state_dict()


def test_profiles_declare_the_rule_and_keep_the_caps():
    q, p = PROFILES["quick"], PROFILES["paper"]
    assert q.adv_steps == 400 and p.adv_steps == 500
    for prof in (q, p):
        assert 0 < prof.adv_eval_every < prof.adv_steps and prof.adv_patience >= 1 and 0 < prof.adv_min_delta < 1
        assert prof.adv_eval_every * prof.adv_patience < prof.adv_steps  # the rule can fire before the cap
    assert p.adv_eval_every > q.adv_eval_every and p.adv_eval_every * p.adv_patience > q.adv_eval_every * q.adv_patience


# --------------------------------------------------------------------------------------------
# 2. tiny real runs (a tiny clean BiRQA, as tests/test_defenses.py builds it)


@pytest.fixture(scope="module")
def stop_home(tmp_path_factory):
    return tmp_path_factory.mktemp("stop_home")


@pytest.fixture(autouse=True)
def _stop_home(stop_home, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(stop_home))


def _no_val_eval(target, dataset, batch_size=64, progress=False):
    """The val-split SROCC of a whole split (625 items: most of a tiny run's time) is not what
    these tests look at; the held-out loss of the stopping rule is computed as in a real run."""
    return {"srocc": 0.5, "plcc": 0.5, "krocc": 0.5}


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    import robench.engine.train as T

    monkeypatch.setattr(T, "evaluate", _no_val_eval)


@pytest.fixture(scope="module")
def clean_tiny_birqa(stop_home):
    import robench.engine.train as T

    old, real = os.environ.get("ROBENCH_HOME"), T.evaluate
    os.environ["ROBENCH_HOME"] = str(stop_home)
    T.evaluate = _no_val_eval
    try:
        return T.train(
            "birqa",
            dataset_options=TINY,
            model_options={"width": 0.25},
            epochs=1,
            max_steps_per_epoch=2,
            progress=False,
        )
    finally:
        os.environ["ROBENCH_HOME"] = old
        T.evaluate = real


def _prof(**kw):
    # quick with a small batch and PGD-1 (speed), and the rule's settings of the test; every recipe
    # at the test's adv_lr (no recipe's own rate)
    return dataclasses.replace(
        get_profile("quick"), **{"train_batch": 4, "adv_pgd_steps": 1, "adv_lr_by_recipe": {}, **kw}
    )


def _log(out):
    return json.loads((out / "steps.json").read_text())


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_tiny_run_that_settles_logs_why_and_the_provenance_says_so(clean_tiny_birqa, tmp_path):
    import robench
    from robench.engine.finetune import adversarial_train

    # min_delta 0.99: no evaluation after the first can improve; eval every step, patience 2 → step 2
    prof = _prof(adv_eval_every=1, adv_patience=2, adv_min_delta=0.99)
    out = tmp_path / "r"
    r = adversarial_train("birqa", "r", profile=prof, steps=30, dataset_options=TINY, progress=False, out=out)
    log = _log(out)
    assert log["stopped"] == "settled" and log["stopped_at"] == 2 and r["stopped"] == "settled" and r["steps"] == 2
    assert [x["step"] for x in log["steps"]] == list(range(2))
    held = log["heldout"]
    assert [h["step"] for h in held] == [0, 1, 2] and all(h["loss"] > 0 for h in held)
    assert [h["bad_evals"] for h in held] == [0, 1, 2] and held[-1]["settled"]
    assert log["best_heldout_ema"] == min(h["ema"] for h in held)
    assert log["stopping"]["patience"] == 2 and log["stopping"]["heldout"].startswith("val split")
    prov = robench.load_model("birqa.r").card.weights.provenance
    assert prov["stop_reason"] == "settled" and prov["steps_run"] == 2 and prov["steps"] == 30
    assert (prov["patience"], prov["min_delta"], prov["eval_every"]) == (2, 0.99, 1)
    # a rerun resumes the settled run and trains nothing more, even with a larger cap
    again = adversarial_train("birqa", "r", profile=prof, steps=40, dataset_options=TINY, progress=False, out=out)
    assert again["steps"] == 2 and again["stopped"] == "settled" and _log(out)["steps"] == log["steps"]


def test_a_tiny_aat_run_to_the_cap_logs_its_heldout_losses(clean_tiny_birqa, tmp_path):
    import robench
    from robench.engine.finetune import adversarial_train

    prof = _prof(train_batch=12, aat_anchors=4, adv_eval_every=2, adv_patience=50)
    out = tmp_path / "aat"
    r = adversarial_train("birqa", "aat", profile=prof, steps=2, dataset_options=TINY, progress=False, out=out)
    log = _log(out)
    assert log["stopped"] == "cap" and log["stopped_at"] == 2 and r["steps"] == 2 and r["stopped"] == "cap"
    assert [h["step"] for h in log["heldout"]] == [0, 2] and all(h["loss"] > 0 for h in log["heldout"])
    prov = robench.load_model("birqa.aat").card.weights.provenance
    assert prov["stop_reason"] == "cap" and prov["steps_run"] == 2 and "theorem1" in prov


def _trainer(out, prof, heldout=True, every=2):
    """A recipe run as adversarial_train sets it up, checkpointing every ``every`` steps."""
    import robench
    from robench.defenses.recipes import R
    from robench.engine.train import training_data
    from robench.core.training import Trainer

    _, (data, val) = training_data("mini", prof, 0, TINY, "train", "val")
    task = R(robench.load_model("birqa"), data, prof, 0, "birqa", heldout=val if heldout else None)
    task.cap = 30
    return Trainer(
        task, out, "stop-test", 30, prof.adv_lr, clip_grad=prof.train_clip_grad, checkpoint_every=every, progress=False
    ), task


def test_monitoring_does_not_change_the_training_and_resume_makes_the_same_decision(clean_tiny_birqa, tmp_path):
    # min_delta 0.99: every evaluation after the first is a bad one; eval every step, patience 3
    prof = _prof(adv_eval_every=1, adv_patience=3, adv_min_delta=0.99)
    full, full_task = _trainer(tmp_path / "full", prof)
    full.run()
    ref = _log(tmp_path / "full")
    assert full.step == 3 and ref["stopped"] == "settled" and ref["stopped_at"] == 3
    assert [h["step"] for h in ref["heldout"]] == [0, 1, 2, 3]

    # the held-out evaluation touches neither the weights, the optimiser nor the RNG: the same
    # steps as a run without it
    bare, _ = _trainer(tmp_path / "bare", prof, heldout=False)
    bare.total = 2
    bare.run()
    assert _strip(bare.rows) == _strip(full.rows[:2]) and _log(tmp_path / "bare")["heldout"] == []

    part, task = _trainer(tmp_path / "part", prof)
    crash_at(task, 2)  # after the checkpoint at step 2, before the settling at 3
    with pytest.raises(Interrupt):
        part.run()
    mid = _log(tmp_path / "part")
    assert mid["stopped"] is None and [h["step"] for h in mid["heldout"]] == [0, 1, 2]

    again, again_task = _trainer(tmp_path / "part", prof)
    assert again.resume() and again.step == 2 and again_task.stopper.bad == 2  # the patience state came back
    again.run()
    log = _log(tmp_path / "part")
    assert again.step == 3 and _strip(again.rows) == _strip(full.rows)
    assert _strip(log["heldout"]) == _strip(ref["heldout"])
    assert (log["stopped"], log["stopped_at"], log["best_heldout_ema"]) == ("settled", 3, ref["best_heldout_ema"])
    a, b = full_task.module.state_dict(), again_task.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_recipe_version_is_in_the_config_hash(clean_tiny_birqa, tmp_path, monkeypatch):
    from robench.core.errors import RobenchError
    from robench.defenses import recipes
    from robench.engine.finetune import adversarial_train

    assert recipes.R.recipe_version == recipes.RECIPE_VERSION >= 3  # 3: the patience state joined last.pt
    prof = _prof(adv_eval_every=50)
    out = tmp_path / "old"
    version = recipes.R.recipe_version
    monkeypatch.setattr(recipes.R, "recipe_version", 2)  # a v2 run's last.pt
    adversarial_train("birqa", "r", profile=prof, steps=1, dataset_options=TINY, progress=False, out=out)
    monkeypatch.setattr(recipes.R, "recipe_version", version)
    with pytest.raises(RobenchError, match="different configuration"):
        adversarial_train("birqa", "r", profile=prof, steps=2, dataset_options=TINY, progress=False, out=out)


def test_a_collapsing_run_stops_and_keeps_the_last_weights_above_the_floor(clean_tiny_birqa, tmp_path, monkeypatch):
    """The collapse guard: a recipe whose loss rewards one prediction for everything (what AAT's
    hinge over the MOS range did) is stopped once its clean-score SD falls below half its start,
    and the registered weights are those of the last evaluation above that line."""
    import robench
    from robench.defenses import recipes

    def collapse(self, b, adv):  # rewards shrinking every prediction toward the batch mean
        pred = self.module.predict_mos(adv, b.ref)
        return ((pred - pred.mean().detach()) ** 2).mean(), {}

    monkeypatch.setattr(recipes.R, "objective", collapse)
    prof = _prof(adv_eval_every=1, adv_patience=50, adv_lr=3e-2, scale_items=16)
    out = tmp_path / "collapse"
    from robench.engine.finetune import adversarial_train

    r = adversarial_train("birqa", "r", profile=prof, steps=40, dataset_options=TINY, progress=False, out=out)
    log = _log(out)
    held = log["heldout"]
    assert all({"clean_sd", "clean_mse", "clean_r2", "clean_sd_ratio"} <= set(h) for h in held)
    assert r["stopped"] == "scale-collapse" and log["stopped"] == "scale-collapse" and r["steps"] < 40
    guard = log["scale_guard"]["collapsed"]
    assert held[-1]["clean_sd_ratio"] < 0.5 and guard["step"] == held[-1]["step"]
    kept = next(h for h in held if h["step"] == guard["kept_step"])
    assert kept["clean_sd_ratio"] >= 0.5 and guard["kept_step"] < guard["step"]
    prov = robench.load_model("birqa.r").card.weights.provenance
    assert (
        prov["stop_reason"] == "scale-collapse" and prov["scale_guard"]["collapsed"]["kept_step"] == guard["kept_step"]
    )
    # the registered weights are the kept step's: their clean SD on the guard's items is that step's
    from robench.engine.train import training_data

    _, (data, val) = training_data("mini", prof, 0, TINY, "train", "val")
    task = recipes.R(robench.load_model("birqa.r"), data, prof, 0, "birqa", heldout=val)
    assert task.scale_stats()["clean_sd"] == pytest.approx(kept["clean_sd"], rel=1e-4)


def test_a_recipe_may_have_its_own_learning_rate():
    """quick gives R- its own learning rate (at adv_lr its scale guard restored the clean weights);
    the other recipes keep adv_lr, and an explicit override wins."""
    from robench.engine.finetune import _fine_tune_profile

    q = PROFILES["quick"]
    assert _fine_tune_profile("quick", None, None, "r").adv_lr == q.adv_lr_by_recipe["r"] != q.adv_lr
    assert _fine_tune_profile("quick", None, None, "aat").adv_lr == q.adv_lr
    assert _fine_tune_profile("quick", {"adv_lr": 3e-3}, None, "r").adv_lr == 3e-3


def test_a_fine_tune_that_did_not_train_is_flagged():
    """[untr]: the guard kept the step-0 weights, or the held-out EMA never fell by min_delta."""
    from robench.core.flags import active, fine_tune_untrained

    kept0 = {"scale_guard": {"collapsed": {"kept_step": 0}}}
    flat = {"heldout_start": 1.652, "best_heldout_ema": 1.6514, "min_delta": 0.01}  # −0.04 %: noise
    fell = {"heldout_start": 1.547, "best_heldout_ema": 1.187, "min_delta": 0.01}
    assert fine_tune_untrained(kept0) and fine_tune_untrained(flat)
    assert not fine_tune_untrained(fell) and not fine_tune_untrained({"best_heldout_step": 0})  # old records
    assert not fine_tune_untrained({"scale_guard": {"collapsed": {"kept_step": 30}}})
    assert "untr" in active({"untrained": True}) and "untr" not in active({})
