"""Attack directions (core.directions): every registered attack moves each item its own way —
``up`` raises ``q``, ``down`` lowers it, ``mos-split`` lowers the above-mean-MOS items and raises
the rest — within budget, and never ends against an item's direction. Generic over the registry:
a new attack is covered without edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robench
from robench.core.directions import DIRECTIONS, get_direction, parse_directions
from robench.core.errors import RobenchError, UnknownNameError
from robench.core.registry import ATTACKS
from tests.test_attacks import EPS, TINY_OPTIONS, _batch, _target

NAMES = ATTACKS.names()
# a generator trained 4 steps moves q whichever way its initialisation points: give it enough
# steps to learn each direction
OPTIONS = {**TINY_OPTIONS, "facpa": {**TINY_OPTIONS["facpa"], "steps": 24, "lr": 1e-2}}
MIXED = torch.tensor([1.0, -1.0, -1.0, 1.0])  # a mos-split-like batch: both directions at once


@pytest.mark.parametrize("signs", [torch.ones(4), -torch.ones(4), MIXED], ids=["up", "down", "mixed"])
@pytest.mark.parametrize("name", NAMES)
def test_every_attack_moves_each_item_its_own_way(name, signs, tiny_mini):
    t = _target()
    dist, ref = _batch()
    res = robench.load_attack(name, **OPTIONS.get(name, {}))(t, dist, ref, eps=EPS, signs=signs)
    q0, q = res.oriented(t.lower_better)
    directed = signs * (q - q0)  # K × n
    assert (directed >= -1e-6).all(), f"{name} ended against an item's direction"
    for k, e in enumerate(EPS):
        assert float((res.images[k] - dist).abs().max()) <= e + 1e-6
    assert float(directed[-1].mean()) > 0, f"{name} did not move the items their way on average"
    if (signs < 0).any():  # the down items really went down
        assert float((q[-1] - q0)[signs < 0].mean()) < 0


def test_up_signs_equal_the_default_call(tiny_mini):
    dist, ref = _batch()
    a = robench.load_attack("pgd", steps=3, seed=1)(_target(), dist, ref, eps=[4 / 255])
    b = robench.load_attack("pgd", steps=3, seed=1)(_target(), dist, ref, eps=[4 / 255], signs=torch.ones(4))
    assert torch.equal(a.scores, b.scores) and torch.equal(a.images, b.images)


def test_mos_split_rule_is_the_reference_codes():
    mos = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3: the item at the mean is attacked up
    s, info = get_direction("mos-split").signs(mos, 5)
    assert s.tolist() == [1, 1, 1, -1, -1] and info["threshold"] == 3.0
    assert (info["n_up"], info["n_down"]) == (3, 2) and info["protocol"].startswith("ranking attack")
    assert get_direction("down").signs(None, 3)[0].tolist() == [-1, -1, -1]
    with pytest.raises(RobenchError, match="needs a MOS"):
        get_direction("mos-split").signs(None, 3)


def test_direction_names_checked_with_did_you_mean():
    assert parse_directions("mos-split,up") == ["up", "mos-split"]  # declaration order, unique
    with pytest.raises(UnknownNameError, match="did you mean 'mos-split'"):
        parse_directions("mos-splt")
    assert set(DIRECTIONS) == {"up", "down", "mos-split"}


def test_run_mos_split_never_ends_against_direction_and_lowers_srocc(tiny_mini, tmp_path):
    """The issue's check on a tiny store: mos-split rows above the threshold never end with higher
    q than clean, the rest never lower, and its SROCC is below the same run's up SROCC; the
    direction is keyed (two cells) and recorded."""
    from robench.engine.store import Store
    from robench.results.cells import load_cells

    store = tmp_path / "s.sqlite"
    out = robench.run(
        model="ssim",
        attacks="pgd",
        directions="up,mos-split",
        eps=[8],
        n=12,
        store=str(store),
        dataset_options={"size": 32, "crops_per_source": 1, "progress": False},
        attack_params={"pgd": {"steps": 4}},
        progress=False,
    )
    cells = {c["direction"]: c for c in out["runs"][0]["cells"]}
    assert set(cells) == {"up", "mos-split"} and cells["up"]["key"] != cells["mos-split"]["key"]
    info = cells["mos-split"]["summary"]["direction"]
    with Store(store) as st:
        rows = st.results(cells["mos-split"]["key"])
        cfg = st.cells("done").set_index("key").loc[cells["mos-split"]["key"], "config"]
    assert cfg["direction"] == "mos-split"
    assert info["threshold"] == pytest.approx(float(rows["mos"].mean()))
    q0, q = rows["clean_score"], rows["score"]  # ssim: higher is better
    above = rows["mos"] > info["threshold"]
    assert (q[above] <= q0[above] + 1e-9).all() and (q[~above] >= q0[~above] - 1e-9).all()
    assert cells["mos-split"]["summary"]["attacked_srocc"][0] < cells["up"]["summary"]["attacked_srocc"][0]
    by = {c.direction: c for c in load_cells(store)[0]}
    assert set(by) == {"up", "mos-split"}


def test_mos_split_refused_on_2afc_before_compute(tiny_mini, tmp_path):
    with pytest.raises(RobenchError, match="needs a MOS"):
        robench.run(
            model="ssim",
            attacks="fgsm",
            directions="mos-split",
            dataset="mini-2afc",
            eps=[8],
            n=4,
            store=str(tmp_path / "s.sqlite"),
            progress=False,
        )


def test_directions_round_trip_through_toml(tmp_path):
    from robench.core.config import RunConfig

    c = RunConfig.from_dict({"targets": "ssim", "attacks": "pgd", "direction": "mos-split,up"}).resolve()
    assert 'directions = ["up", "mos-split"]' in c.to_toml()
    p = tmp_path / "c.toml"
    p.write_text(c.to_toml())
    again = RunConfig.from_toml(p).resolve()
    assert again.directions == ["up", "mos-split"] and again.specs()[0].directions == ["up", "mos-split"]
