"""Issue 38: a convergence check that sees a start stopping in a worse basin, the ascent's two
savings (per-item early stopping, bf16 search direction with float32 values), and the
attack-strength bench per direction."""

from __future__ import annotations


import pytest
import torch

import robench
from robench.attacks._ascent import ascend
from robench.core.target import Target, TargetCard
from robench.engine.items import Items

EPS = 8.0  # /255


class TwoBasins(Target):
    """q = mean over pixels of h(u), u = (dist − ref)/(8/255): a small peak at u = +0.3 (height
    0.2) and a large one at u = −1 (height 1). At u = 0 the slope is positive (the small peak's
    side), so a walk from δ = 0 climbs the small peak and, with a step that decays, never crosses
    the valley near u = −0.4 between them; a random start in the ball lands left of the valley on
    about a third of the pixels and climbs the large peak there."""

    requires_weights = False

    def __init__(self):
        super().__init__()
        self.card = TargetCard(name="two-basins", lower_better=False, score_range=None)

    @staticmethod
    def h(u):
        return 0.2 * torch.exp(-(((u - 0.3) / 0.15) ** 2)) + torch.exp(-(((u + 1) / 0.3) ** 2))

    def score(self, dist, ref):
        return self.h((dist - ref) / (EPS / 255)).flatten(1).mean(dim=1)


def _items(n=16, size=16, seed=0):
    """Distorted = reference (u = 0 everywhere), pixels away from 0 and 1 so the ball is whole."""
    g = torch.Generator().manual_seed(seed)
    ref = 0.2 + 0.6 * torch.rand(n, 3, size, size, generator=g)
    labels = {
        "item_id": [f"i{i}" for i in range(n)],
        "ref_id": [f"r{i}" for i in range(n)],
        "source": [f"p{i % 8}" for i in range(n)],
        "distortion": ["none"] * n,
        "level": [0] * n,
        "mos": [float(i) for i in range(n)],
    }
    return Items(kind="pairs", dist=ref.clone(), ref=ref, labels=labels, digest="two-basins")


def test_two_basin_target_zero_start_provably_stops_in_the_worse_basin():
    """The premise, checked: from δ = 0 the slope is positive and PGD ends on the small peak
    (gain ≈ 0.2 − h(0)); a random start finds more on every image."""
    t = TwoBasins()
    u = torch.tensor([0.0], requires_grad=True)
    TwoBasins.h(u).backward()
    assert u.grad.item() > 0
    items = _items()
    f = t.bind(items.ref)
    x = items.dist
    q0 = f(x).detach()
    zero = ascend(f, x, q0, EPS / 255, steps=40, restarts=1)
    gain_zero = f(zero).detach() - q0
    assert torch.allclose(gain_zero, torch.full_like(gain_zero, 0.2 - float(TwoBasins.h(torch.tensor(0.0)))), atol=0.02)
    rand = ascend(f, x, q0, EPS / 255, steps=40, restarts=1, first="random", seed=3)
    assert bool((f(rand).detach() - q0 > gain_zero + 0.1).all())


def test_another_start_flags_a_single_start_pgd_the_half_budget_rule_passes():
    """Single-start PGD on two basins: the half budget gains as much as the full one (the
    half-budget rule alone passes it), but the run from another start gains far more, so the cell
    is [nc]; the record names the run and its gains."""
    from robench.core.flags import active
    from robench.engine.cell import run_cell

    t, items = TwoBasins(), _items()
    rec, rows = run_cell(
        t, robench.load_attack("pgd", steps=40, restarts=1, patience=0), items, [EPS], batch_size=16
    )  # one zero start: PGD before issue 38
    conv = rec["flags"]["convergence"]
    assert conv["rel_gap"][0] < 0.05  # the half-budget rule by itself: converged
    other = conv["another_start"]
    assert other["params"] == {"first": "random"} and other["rel_gap"][0] > 0.5
    assert other["best_of_both"][0] > other["own_gain"][0] and other["not_converged"] is True
    assert rec["flags"]["not_converged"] is True and "nc" in active(rec["flags"])
    # own_gain is the cell's own rows on the check's items
    idx = set(conv["item_index"] or range(len(items)))
    own = [r["score"] - r["clean_score"] for r in rows if r["item"] in idx]
    assert abs(sum(own) / len(own) - other["own_gain"][0]) < 1e-6


def test_another_start_passes_where_every_start_reaches_the_same_peak():
    """On a score with one peak (q = −mean((u − 0.5)²)) every start ends at the same point: no flag."""
    from robench.engine.cell import run_cell

    class OnePeak(TwoBasins):
        @staticmethod
        def h(u):
            return -((u - 0.5) ** 2)

    rec, _ = run_cell(OnePeak(), robench.load_attack("pgd", steps=40), _items(), [EPS], batch_size=16)
    assert rec["flags"]["convergence"]["another_start"]["rel_gap"][0] < 0.05
    assert rec["flags"]["not_converged"] is False


def test_early_stopping_spends_less_and_keeps_the_best_iterate():
    """Items that stop rising leave the batch: fewer gradient evaluations, the same best point
    within the tolerance, and queries counted per item as evaluated."""
    t = TwoBasins()
    items = _items(n=8)
    f = t.bind(items.ref)
    x = items.dist
    q0 = f(x).detach()
    full, early = {}, {}
    a = ascend(f, x, q0, EPS / 255, steps=80, restarts=1, stats=full)
    f.queries.zero_()
    b = ascend(f, x, q0, EPS / 255, steps=80, restarts=1, patience=5, stats=early)
    assert early["gradients"] < 0.9 * full["gradients"] and full["gradients"] == 8 * 81
    assert int(f.queries.sum()) == early["gradients"]
    ga, gb = (f(v).detach() - q0 for v in (a, b))
    assert bool((gb >= ga * (1 - 2e-3)).all()) and bool((gb > 0).all())


def test_bf16_search_keeps_float32_values_only():
    """Under amp="bf16" the gradient is taken under autocast, but the returned point's q is
    what float32 says, at least the clean value, and close to the float32 attack's."""
    t = robench.load_model("ssim")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(4, 3, 32, 32, generator=g)
    dist = (ref + 0.05 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    f = t.bind(ref)
    q0 = f(dist).detach()
    stats = {}
    adv = ascend(f, dist, q0, 4 / 255, steps=20, amp="bf16", stats=stats)
    ref32 = ascend(f, dist, q0, 4 / 255, steps=20)
    g16, g32 = (f(v).detach() - q0 for v in (adv, ref32))
    assert bool((g16 >= 0).all()) and float(g16.mean()) >= 0.97 * float(g32.mean())
    assert stats["rescored"] > 0  # candidates were re-scored in float32
    with pytest.raises(ValueError, match="cosine"):
        ascend(f, dist, q0, 4 / 255, steps=2, schedule="apgd", amp="bf16")


def test_new_parameters_at_their_defaults_leave_the_cell_key_alone():
    """PGD's ``first``, ``patience``, ``amp`` and ``inertia`` are left out of the record at their defaults, so
    stored cells keep their keys; set, they are recorded."""
    from robench.attacks.pgd import PGD

    cfg = PGD(profile="paper").config()["params"]
    assert not {"first", "patience", "amp"} & set(cfg) and cfg["steps"] == 100
    assert PGD(profile="paper", patience=5).config()["params"]["patience"] == 5
    assert PGD(profile="quick").config()["params"]["patience"] == 10  # the quick budget sets it: recorded
    assert "inertia" not in cfg and PGD(profile="quick").config()["params"]["inertia"] == 0.25


def test_heavy_ball_is_cosine_only_and_bounded():
    t = TwoBasins()
    items = _items(n=2)
    f = t.bind(items.ref)
    q0 = f(items.dist).detach()
    with pytest.raises(ValueError, match="own momentum"):
        ascend(f, items.dist, q0, EPS / 255, steps=2, schedule="apgd", inertia=0.25)
    with pytest.raises(ValueError, match="inertia"):
        ascend(f, items.dist, q0, EPS / 255, steps=2, inertia=1.0)
    adv = ascend(f, items.dist, q0, EPS / 255, steps=10, inertia=0.25)
    assert float((adv - items.dist).abs().max()) <= EPS / 255 + 1e-7 and bool((f(adv) >= q0).all())


def test_attack_strength_per_direction_has_ratios_intervals_and_the_reference(tiny_mini):
    from robench.engine.bench import attack_strength

    res = attack_strength(
        ["ssim"],
        ["fgsm", "pgd"],
        eps=[4, 8],
        n=8,
        ref_steps=10,
        ref_restarts=2,
        directions=("up", "down"),
        dataset="mini",
        attack_params={"pgd": {"steps": 5}},
        log=lambda m: None,
    )
    rows = res["rows"]
    assert {(r["direction"], r["eps"], r["attack"]) for r in rows} == {
        (d, e, a) for d in ("up", "down") for e in (4.0, 8.0) for a in ("fgsm", "pgd")
    }
    for r in rows:
        assert 0 <= r["ratio"] <= 1 + 1e-9 and r["lo"] <= r["ratio"] + 1e-9 and r["hi"] >= r["ratio"] - 1e-9
    assert (
        len(res["references"]) == 4
        and {r["items"] for r in rows} == {"all"}
        and all(0 < v["reference_ratio"] <= 1 + 1e-9 for v in res["references"])
    )
    assert "bootstrap" in res["interval"]


def test_attack_strength_measures_each_half_of_the_ranking_attack(tiny_mini):
    from robench.engine.bench import attack_strength

    res = attack_strength(
        ["ssim"],
        ["fgsm"],
        eps=[8],
        n=8,
        ref_steps=5,
        ref_restarts=2,
        directions=("mos-split",),
        dataset="mini",
        log=lambda m: None,
    )
    by = {r["items"]: r for r in res["rows"]}
    assert set(by) == {"all", "up", "down"} and by["up"]["n"] + by["down"]["n"] == by["all"]["n"] == 8
    # the whole is the halves' moves weighted by their items
    whole = (by["up"]["mean_move"] * by["up"]["n"] + by["down"]["mean_move"] * by["down"]["n"]) / 8
    assert abs(whole - by["all"]["mean_move"]) < 1e-6


def test_declared_strength_is_the_committed_table_and_flags_weak_cells():
    """Each attack's ``strength`` is the lowest ratio of reports/bench/attack-strength.json per way
    (up, down) at 3 decimals, for every attack the table measured; a cell of an attack below the
    floor carries [nc] with the fraction, in the direction(s) its items move."""
    import json
    from pathlib import Path

    from robench.core.flags import STRENGTH_FLOOR, active
    from robench.core.registry import ATTACKS
    from robench.engine.cell import strength_of

    table = json.loads((Path(__file__).parents[1] / "reports/bench/attack-strength.json").read_text())
    assert table["profile"] == "quick"
    for name, ways in table["lowest"].items():
        declared = ATTACKS.get(name).strength.get("quick", {})
        if not ATTACKS.get(name).budget_params:  # single-step FGSM: its ratio is context, not a verdict
            assert not declared, name
            continue
        assert set(declared) == set(ways), name
        for way, v in ways.items():
            assert abs(declared[way] - round(v, 3)) < 1e-9, (name, way, declared[way], v)
    weak = next(n for n, w in table["lowest"].items() if min(w.values()) < STRENGTH_FLOOR)
    atk = robench.load_attack(weak)
    split = strength_of(atk, {"n_up": 3, "n_down": 2})
    assert split["fraction"] == min(atk.strength["quick"].values()) and split["directions"] == ["up", "down"]
    flags = {"below_reference": split["fraction"] < STRENGTH_FLOOR, "strength": split}
    assert "nc" in active(flags)
    assert strength_of(robench.load_attack(weak, profile="paper"), None) is None  # not measured: no flag
