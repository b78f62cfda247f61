"""Issue 15, attacks: best iterate, starts that do not lower q, a converging schedule, TOPIQ's
gradients, the convergence flag, perceptibility, and flags a reader can see."""

from __future__ import annotations

import json

import torch

import robench
from robench.attacks._ascent import apgd_checkpoints, ascend
from robench.attacks.parsimonious import Parsimonious
from robench.attacks.square import square_search
from robench.models import build
from robench.core.target import Target, TargetCard


class Linear(Target):
    """q = ⟨w, x − x₀⟩ per image for fixed random signs w: every start and step is easy to reason
    about, and a random ±ε pattern lowers q about half the time."""

    requires_weights = False

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randint(0, 2, shape, generator=g).float() * 2 - 1)
        self.card = TargetCard(name="linear", lower_better=False, score_range=None)

    def score(self, dist, ref):
        return ((dist - ref) * self.w).flatten(1).mean(dim=1)


class Wavy(Target):
    """A score with tiny linear regions (like TOPIQ's |fd − fr| kinks): q = mean(sin(k·(x − ref))/k)
    plus a weak linear trend: a large constant sign step overshoots and oscillates."""

    requires_weights = False

    def __init__(self, k=900.0):
        super().__init__()
        self.k = k
        self.card = TargetCard(name="wavy", lower_better=False, score_range=None)

    def score(self, dist, ref):
        d = dist - ref
        return (torch.sin(self.k * d) / self.k + 0.02 * d).flatten(1).mean(dim=1)


def _pair(n=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    ref = 0.2 + 0.6 * torch.rand(n, 3, size, size, generator=g)
    dist = (ref + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return dist, ref


def test_pgd_first_point_is_the_clean_image_and_result_is_the_best_iterate():
    dist, ref = _pair()
    t = Wavy()
    f = t.bind(ref)
    seen = []
    real = f.forward

    def spy(x, idx=None):
        seen.append(x.detach().clone())
        return real(x, idx)

    f.forward = spy
    with torch.no_grad():
        q0 = real(dist)
    trace: list[float] = []
    best = ascend(f, dist, q0, 8 / 255, steps=12, restarts=1, schedule="cosine", seed=0, trace=trace)
    assert torch.equal(seen[0], dist)  # restart 0 starts at δ = 0
    with torch.no_grad():
        qs = torch.stack([real(x) for x in seen])
        q_best = real(best)
    # the returned point is, per image, the best evaluated point (not the last)
    assert torch.allclose(q_best, qs.max(dim=0).values, atol=1e-7)
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))
    assert (q_best >= q0).all()
    # on this score the last iterate is worse than the best on some image: best-iterate matters
    assert (qs[-1] < qs.max(dim=0).values - 1e-7).any()


def test_extra_restarts_start_randomly_and_never_hurt():
    dist, ref = _pair()
    t = Wavy()
    f = t.bind(ref)
    with torch.no_grad():
        q0 = f(dist)
    one = ascend(f, dist, q0, 8 / 255, steps=6, restarts=1, seed=0)
    three = ascend(f, dist, q0, 8 / 255, steps=6, restarts=3, seed=0)
    with torch.no_grad():
        assert (f(three) >= f(one) - 1e-7).all()


def test_decaying_best_iterate_pgd_raises_every_image_on_a_curved_score():
    dist, ref = _pair(n=8)
    res = robench.load_attack("pgd", steps=10)(Wavy(), dist, ref, eps=[8 / 255])
    q0, q = res.oriented(False)
    assert ((q[0] - q0) > 0).all() and res.probes["kept_clean"] == [0]


def test_apgd_checkpoints_follow_croce_hein():
    c = apgd_checkpoints(100)
    assert c[:4] == [22, 41, 57, 70]  # p = 0.22, 0.41, 0.57, 0.70 (p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06))
    assert all(b > a for a, b in zip(c, c[1:])) and c[-1] <= 100


def test_square_keeps_its_stripe_start_only_where_it_does_not_lower_q():
    dist, ref = _pair(n=12)
    t = Linear(dist.shape[1:])
    f = t.bind(ref)
    with torch.no_grad():
        q0 = f(dist)
        out = square_search(f, dist, q0, 8 / 255, queries=1, p_init=0.05, seed=0)  # the start only
        q = f(out)
    moved = (out - dist).flatten(1).abs().amax(dim=1) > 0
    assert moved.any() and (~moved).any()  # random stripes: some raise q, some lower it
    assert (q[moved] >= q0[moved]).all() and torch.equal(out[~moved], dist[~moved])
    with torch.no_grad():
        longer = f(square_search(f, dist, q0, 8 / 255, queries=60, p_init=0.05, seed=0))
    assert (longer > q0).all()  # improvement-only search from a start ≥ clean: every image gains


def test_parsimonious_falls_back_to_zero_start_and_gains_everywhere():
    dist, ref = _pair(n=8)
    t = Linear(dist.shape[1:], seed=3)
    res = Parsimonious(queries=80, batch_blocks=8, block_size=4)(t, dist, ref, eps=[8 / 255])
    q0, q = res.oriented(False)
    assert ((q[0] - q0) > 0).all()
    assert res.probes["kept_clean"] == [0]


def test_topiq_pgd_gains_on_nearly_every_item():
    """Issue 15.9: the audit's PGD gained nothing on 14/32 TOPIQ items. Root cause (README):
    TOPIQ's gradient is exact but its score is piecewise smooth with tiny linear regions (the
    distance map sqrt((fd−fr)² + 1e-12) = |fd − fr| has a kink where ~half the feature entries
    sit, on top of ReLU boundaries), so a constant sign step of ε/2 from a random start overshoots
    and the last iterate ends below the clean image. Zero start, decaying step and best iterate
    raise q on ≥ 90 % of items."""
    torch.manual_seed(0)
    t = build("topiq.fr").eval()
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(10, 3, 64, 64, generator=g)
    dist = (ref + 0.15 * torch.randn(10, 3, 64, 64, generator=g)).clamp(0, 1)
    res = robench.load_attack("pgd", steps=8)(t, dist, ref, eps=[8 / 255], return_images=False)
    q0, q = res.oriented(t.lower_better)
    assert float(((q[0] - q0) > 0).float().mean()) >= 0.9


def test_convergence_flag_and_perceptibility_recorded(tiny_mini):
    from robench.engine.items import load_items
    from robench.engine.cell import run_cell

    items = load_items("mini", "test", 6, 0, {"size": 32, "crops_per_source": 1})
    t = robench.load_model("ssim")
    starved = robench.load_attack("square", queries=32)
    rec, rows = run_cell(t, starved, items, [8.0], batch_size=8)
    conv = rec["flags"]["convergence"]
    assert conv["half_params"] == {"queries": 16} and len(conv["half_gain"]) == 1
    assert rec["flags"]["not_converged"] is True  # 32 queries: doubling 16 → 32 still moves the score
    converged = robench.load_attack("pgd", steps=40)
    rec2, _ = run_cell(t, converged, items, [8.0], batch_size=8)
    assert rec2["flags"]["not_converged"] is False, rec2["flags"]["convergence"]
    rec3, _ = run_cell(t, robench.load_attack("fgsm"), items, [8.0], batch_size=8)
    assert "not_converged" not in rec3["flags"]  # single step: nothing to halve
    # perceptibility: PSNR of an L∞ ≤ ε change is at least −20·log10(ε); SSIM in (0, 1]
    for r in rows:
        if r["linf"] > 0:
            assert r["psnr"] >= -20 * torch.log10(torch.tensor(r["linf"])).item() - 1e-4
            assert 0 < r["ssim"] <= 1
        else:
            assert r["psnr"] is None
    assert rec["summary"]["mean_psnr"][0] is not None and rec["summary"]["mean_ssim"][0] <= 1


def test_convergence_check_on_a_subset_decides_as_all_items(tiny_mini):
    """The half-budget re-run attacks a seeded quarter of the items (at least 16): its record
    names them, its gains are theirs, and it flags a starved attack and passes a converged one
    as the re-run on every item does."""
    from robench.engine import cell as C
    from robench.engine.items import load_items

    items = load_items("mini", "test", 64, 0, {"size": 32, "crops_per_source": 1})
    n = len(items)
    idx = C.check_items(n, 0)
    assert len(idx) == max(16, -(-n // 4)) < n and torch.equal(idx, C.check_items(n, 0))
    # a generator attack's check costs its training whatever the items: it re-attacks them all
    from robench.attacks.facpa import FACPA

    assert FACPA.check_all_items and torch.equal(C.check_items(n, 0, FACPA()), torch.arange(n))
    t = robench.load_model("ssim")
    for attack, flagged in (
        (robench.load_attack("square", queries=32), True),
        (robench.load_attack("pgd", steps=40), False),
    ):
        rec, rows = C.run_cell(t, attack, items, [8.0], batch_size=32)
        conv = rec["flags"]["convergence"]
        assert conv["items"] == len(idx) and conv["of"] == n and conv["item_index"] == idx.tolist()
        # full gain over the check's items, from the cell's own rows
        sub = [r["score"] - r["clean_score"] for r in rows if r["item"] in set(idx.tolist())]
        assert abs(conv["full_gain"][0] - sum(sub) / len(sub)) < 1e-6
        # the old rule: the half budget on every item
        half_all = C._run_at(attack, attack.half_budget(), t, items, [8.0], 32)
        full_all = sum(r["score"] - r["clean_score"] for r in rows) / len(rows)
        old = C._short(C._rel_gap([full_all], C.directed_gains(half_all, t.lower_better)))
        assert rec["flags"]["not_converged"] is flagged is old, (conv, full_all)


def test_flags_reach_report_tables_json_and_check(tiny_mini, tmp_path):
    from typer.testing import CliRunner

    from robench.cli import app

    store = tmp_path / "s.sqlite"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "run",
            "--model",
            "ssim",
            "--attacks",
            "square,pgd",
            "--direction",
            "up",
            "--n",
            "6",
            "--eps",
            "8",
            "--dataset-option",
            "size=32",
            "--dataset-option",
            "crops_per_source=1",
            "--attack-option",
            "square.queries=32",
            "--attack-option",
            "pgd.steps=40",
            "--store",
            str(store),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep"
    r = runner.invoke(
        app,
        [
            "report",
            "--store",
            str(store),
            "--out",
            str(out),
            "--ot",
            "exact",
            "--resamples",
            "50",
            "--no-pdf",
            "--no-plots",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    flagged = {c["attack"]: c["flags"] for c in rep["flagged_cells"]}
    from robench.attacks.pgd import PGD
    from robench.core.flags import STRENGTH_FLOOR

    # PGD passes the convergence rules here; it carries [nc] exactly when its measured quick strength
    # in the way these items move (reports/bench/attack-strength.json, declared on the class) is
    # below the floor: this run is `up`
    weak = PGD.strength["quick"]["up"] < STRENGTH_FLOOR
    assert "nc" in flagged.get("square", []) and ("nc" in flagged.get("pgd", [])) is weak
    sweep = (out / "sweep.md").read_text()
    assert "[nc]" in sweep and "not converged" in sweep and "PSNR@8" in sweep
    stats = {c["attack"]: c for c in rep["cells"]}
    assert stats["square"]["flags"]["not_converged"] is True
    assert stats["pgd"]["attacked"][0]["mean_psnr"] > 0
    base = tmp_path / "b.json"
    assert runner.invoke(app, ["check", "--store", str(store), "--baseline", str(base), "--update"]).exit_code == 0
    r = runner.invoke(app, ["check", "--store", str(store), "--baseline", str(base), "--json"])
    res = json.loads(r.stdout)
    assert r.exit_code == 0 and any("nc" in f["flags"] for f in res["flagged"])
    r = runner.invoke(app, ["check", "--store", str(store), "--baseline", str(base), "--fail-on-flag", "nc"])
    assert r.exit_code == 1 and "not converged" in r.output


def test_vacuous_aat_bound_is_a_flag_of_every_cell_of_those_weights(tiny_mini, tmp_path):
    from robench.results.cells import load_cells
    from robench.core.config import RunSpec
    from robench.engine.grid import run
    from robench.engine.store import Store

    store = tmp_path / "v.sqlite"
    run(
        RunSpec(
            model="ssim",
            attacks=["fgsm"],
            n=4,
            eps=[8],
            store=store,
            dataset_options={"size": 32, "crops_per_source": 1},
        ),
        progress=False,
    )
    cells, _ = load_cells(store)
    assert "vac" not in cells[0].active_flags
    with Store(store) as st:  # the same weights digest now carries an AAT log that was mostly vacuous
        st.db.execute("DELETE FROM weights")
        st.record_weights(
            [
                {
                    "sha256": cells[0].weights_sha,
                    "name": "ssim.aat",
                    "source": "trained-here",
                    "provenance": {
                        "recipe": "aat",
                        "theorem1": {"n_batches": 10, "non_vacuous": 2, "non_vacuous_fraction": 0.2},
                    },
                }
            ]
        )
    cells, _ = load_cells(store)
    assert "vac" in cells[0].active_flags


def test_escalate_doubles_a_flagged_budget_until_converged_and_reopens_stored_cells(tiny_mini, tmp_path):
    """--escalate K: a cell the half-budget check flags runs again at 2×, 4×, … its budget, each
    run checked against the one before; the cell keeps the largest budget's rows, says so ([esc])
    and a stored flagged cell is re-opened by a larger cap (same key), then cached."""
    from typer.testing import CliRunner

    from robench.cli import app
    from robench.engine.cell import run_cell
    from robench.engine.items import load_items
    from robench.engine.store import Store

    items = load_items("mini", "test", 6, 0, {"size": 32, "crops_per_source": 1})
    t = robench.load_model("ssim")
    rec, rows = run_cell(t, robench.load_attack("square", queries=32), items, [8.0], batch_size=8, escalate=4)
    conv = rec["flags"]["convergence"]
    ladder = conv["ladder"]
    assert [s["params"]["queries"] for s in ladder] == [16 * 2**i for i in range(len(ladder))]
    assert rec["flags"]["escalated"] == conv["escalated"] == len(ladder) - 2 >= 1
    assert conv["budget_used"] == ladder[-1]["params"] and conv["half_params"] == ladder[-2]["params"]
    gains = [s["gain"][0] for s in ladder]
    # stopped at the first doubling that met the rule, or at the cap still flagged
    stop = next((i for i in range(2, len(gains)) if gains[i] - gains[i - 1] <= 0.05 * gains[i]), None)
    assert (stop == len(gains) - 1 and not rec["flags"]["not_converged"]) or (stop is None and conv["escalated"] == 4)
    # the rows are the largest budget's: their mean gain is the ladder's last
    mean = sum(r["score"] - r["clean_score"] for r in rows) / len(rows)
    assert abs(mean - gains[-1]) < 1e-6 and rows[0]["queries"] <= ladder[-1]["params"]["queries"]
    # a converged cell is untouched by the cap
    rec2, _ = run_cell(t, robench.load_attack("pgd", steps=40), items, [8.0], batch_size=8, escalate=4)
    assert not rec2["flags"].get("escalated") and rec2["flags"]["convergence"]["escalated"] == 0

    store = tmp_path / "s.sqlite"
    runner = CliRunner()
    base = [
        "run",
        "--model",
        "ssim",
        "--attacks",
        "square",
        "--direction",
        "up",
        "--n",
        "6",
        "--eps",
        "8",
        "--dataset-option",
        "size=32",
        "--dataset-option",
        "crops_per_source=1",
        "--attack-option",
        "square.queries=32",
        "--store",
        str(store),
        "--json",
    ]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    key = json.loads(r.stdout)["cells"][0]["key"]
    with Store(store) as s:
        assert s.cell_flags(key)["not_converged"] is True
    r = runner.invoke(app, base + ["--escalate", "4"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["cells"][0]
    assert out["key"] == key and out["status"] == "done" and out["reopened"]
    with Store(store) as s:
        assert len(s.cells()) == 1 and s.cell_flags(key)["escalated"] == conv["escalated"]
        assert len(s.results(key)) == 6  # replaced, not appended
    assert json.loads(runner.invoke(app, base + ["--escalate", "4"]).stdout)["cells"][0]["status"] == "cached"
    rep = tmp_path / "rep"
    r = runner.invoke(
        app,
        [
            "report",
            "--store",
            str(store),
            "--out",
            str(rep),
            "--ot",
            "exact",
            "--resamples",
            "50",
            "--no-pdf",
            "--no-plots",
        ],
    )
    assert r.exit_code == 0, r.output
    sweep = (rep / "sweep.md").read_text()
    assert "esc" in sweep and "--escalate" in sweep


def _stalling_attack(plateau_probe: int, stall: bool):
    """A signed-gradient step whose size depends on the budget like a generator that stalls:
    half of ε up to 8 steps, all of ε from 32 (stall) — or half of ε at every budget."""
    from robench.attacks.base import Attack, Param

    class Stalling(Attack):
        name = "stalling"
        kind = "fixed"
        needs = "gradients"
        steps = Param(8, "budget", budget=True)

        def cost(self):
            return {"grad": 1, "forward": 0}

        def perturb(self, f, x, eps, q0):
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(x).sum(), x)
            frac = 1.0 if stall and int(self.steps) >= 32 else 0.5
            return (x.detach() + frac * eps * g.sign()).clamp(0.0, 1.0)

    Stalling.plateau_probe = plateau_probe
    return Stalling()


def test_plateau_probe_flags_a_half_budget_pass_on_a_plateau(tiny_mini):
    """An attack that declares ``plateau_probe = m`` is run again at m × the budget the half-budget
    rule accepted; more gain there flags the cell [nc] (FACPA passed the rule at 240 steps while
    1 920 steps doubled its gain). Without the declaration, or without a later rise, no flag."""
    from robench.engine.cell import run_cell
    from robench.engine.items import load_items
    from robench.attacks.facpa import FACPA

    assert FACPA.plateau_probe == 4
    items = load_items("mini", "test", 6, 0, {"size": 32, "crops_per_source": 1})
    t = Linear((3, 32, 32))
    rec, rows = run_cell(t, _stalling_attack(4, stall=True), items, [8.0], batch_size=8)
    conv = rec["flags"]["convergence"]
    probe = conv["plateau_probe"]
    assert conv["half_gain"] == conv["full_gain"]  # 4 vs 8 steps: the half-budget rule alone passes
    assert probe["params"] == {"steps": 32} and probe["factor"] == 4
    assert probe["gain"][0] > 1.9 * conv["full_gain"][0] and rec["flags"]["not_converged"] is True
    # the rows are the accepted budget's (8 steps), the probe only a check
    mean = sum(r["score"] - r["clean_score"] for r in rows) / len(rows)
    assert abs(mean - conv["full_gain"][0]) < 1e-6
    rec2, _ = run_cell(t, _stalling_attack(4, stall=False), items, [8.0], batch_size=8)
    assert (
        rec2["flags"]["not_converged"] is False and rec2["flags"]["convergence"]["plateau_probe"]["rel_gap"][0] < 0.05
    )
    rec3, _ = run_cell(t, _stalling_attack(0, stall=True), items, [8.0], batch_size=8)
    assert rec3["flags"]["not_converged"] is False and "plateau_probe" not in rec3["flags"]["convergence"]
    # with --escalate the probe confirms the budget the ladder accepted (here the first: 8 steps)
    rec4, _ = run_cell(t, _stalling_attack(4, stall=True), items, [8.0], batch_size=8, escalate=2)
    assert rec4["flags"]["convergence"]["escalated"] == 0 and rec4["flags"]["not_converged"] is True
