"""Median smoothing: the percentile bounds against a closed form, the `smooth` defence's
gradients under EOT, and `robench certify` end to end on a fast target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from robench.core.errors import RobenchError
from robench.core.smoothing import certify_draws, order_bounds


def test_bounds_cover_a_linear_score_at_the_stated_rate():
    """q(x) = w·x with noise N(0, σ²I): q(x+ε) ~ N(w·x, σ²‖w‖²), so the smoothed score of x+δ for
    ‖δ‖₂ ≤ R ranges exactly over w·x ± R‖w‖, which is the Φ(∓R/σ) percentile: the certificate is
    tight here. Its miss rate by simulation must match the order statistic's exact binomial
    probability (≤ α/2 a side) — neither larger (a wrong bound) nor far smaller (a vacuous one)."""
    rng = np.random.default_rng(0)
    sigma, R, n, alpha, trials = 0.25, 0.2, 200, 0.1, 4000
    w_norm, wx = 3.0, 1.7
    b = order_bounds(n, sigma, R, alpha)
    assert not b.abstain
    draws = wx + sigma * w_norm * rng.standard_normal((trials, n))
    out = certify_draws(draws, sigma, [R], alpha)
    lo_true, hi_true = wx - R * w_norm, wx + R * w_norm  # the exact extreme medians within the ball
    miss_lo = np.mean(out["lower"][:, 0] > lo_true)
    miss_hi = np.mean(out["upper"][:, 0] < hi_true)
    exact_lo = binom.cdf(b.k_lower - 1, n, norm.cdf(-R / sigma))
    exact_hi = binom.sf(b.k_upper - 1, n, norm.cdf(R / sigma))
    assert exact_lo <= alpha / 2 and exact_hi <= alpha / 2
    for sim, exact in ((miss_lo, exact_lo), (miss_hi, exact_hi)):
        half = 4 * np.sqrt(exact * (1 - exact) / trials) + 1e-3
        assert abs(sim - exact) < half, (sim, exact)
    assert exact_lo > alpha / 8  # the largest admissible rank: the bound is not needlessly loose
    # every certified item: lower ≤ smoothed ≤ upper
    assert np.all(out["lower"][:, 0] <= out["smoothed"]) and np.all(out["smoothed"] <= out["upper"][:, 0])


def test_too_few_draws_abstain_and_bad_settings_are_refused():
    b = order_bounds(20, 0.1, 0.3, 0.001)  # R = 3σ: p₋ = 0.0013, 20 draws cannot bound it
    assert b.abstain
    out = certify_draws(np.random.default_rng(0).standard_normal((3, 20)), 0.1, [0.3], 0.001)
    assert out["abstain"].all() and np.isnan(out["lower"]).all()
    for kw in ({"sigma": 0.0}, {"alpha": 1.5}):
        with pytest.raises(RobenchError):
            order_bounds(100, kw.get("sigma", 0.1), 0.1, kw.get("alpha", 0.01))


def test_smooth_defence_gradients_are_real_under_eot():
    """The smoothed target's gradient (median over draws, averaged over EOT draws) is non-zero,
    finite, and points uphill: a small step along it raises the EOT-averaged smoothed score."""
    import robench
    from robench.defenses.wrappers import Defended, Smooth

    torch.manual_seed(0)
    t = Defended(robench.load_model("ssim"), [Smooth(sigma=0.03, samples=5)])
    assert t.randomised
    x = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    r = torch.rand(2, 3, 32, 32)
    f = t.bind(r, eot=32)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg).sum(), xg)
    assert torch.isfinite(g).all() and g.abs().amax() > 0
    torch.manual_seed(1)
    before = f(x).detach()
    torch.manual_seed(1)
    after = f((x + 0.01 * g.sign()).clamp(0, 1)).detach()
    assert (after > before).all()


def test_certify_cli_json_on_ssim(tmp_path):
    """The issue's command on the quick items (fewer of them here): per-item clean, smoothed,
    lower, upper, attacked, violated; lower ≤ smoothed ≤ upper; no violation; resumable."""
    from typer.testing import CliRunner

    from robench.cli import app

    store = tmp_path / "s.sqlite"
    args = [
        "certify",
        "--model",
        "ssim",
        "--check-attack",
        "pgd",
        "--json",
        "--n",
        "6",
        "--samples",
        "40",
        "--radius",
        "0.03,0.12",
        "--attack-steps",
        "3",
        "--store",
        str(store),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["n_items"] == 6 and len(rec["items"]) == 6
    for it in rec["items"]:
        assert {"clean", "smoothed", "radii"} <= set(it)
        for r in it["radii"]:
            assert {"lower", "upper", "attacked_up", "attacked_down", "outside", "violated"} <= set(r)
            if not r["abstain"]:
                assert r["lower"] <= it["smoothed"] <= r["upper"]
                assert r["violated"] is False
                # the attacked point's own interval: the up attack's lower end ≤ its estimate
                assert r["attacked_up_low"] <= r["attacked_up"] and r["attacked_down"] <= r["attacked_down_high"]
    assert sum(s["violations"] for s in rec["summary"]) == 0
    again = CliRunner().invoke(app, args)  # resumed: nothing recomputed, the same numbers
    assert again.exit_code == 0 and json.loads(again.stdout)["items"] == rec["items"]
    bad = CliRunner().invoke(app, ["certify", "--model", "ssim", "--radius", "-1", "--store", str(store)])
    assert bad.exit_code == 2 and "radius" in bad.output
