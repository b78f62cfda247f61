"""Generic tests over every registered target (no per-model code here: a model declares its
own small test configuration as ``test_options``)."""

from __future__ import annotations

import pytest
import torch

import robench
from robench.core.errors import RobenchError
from robench.models import build
from robench.core.registry import MODELS

NAMES = MODELS.names()


def _pair(n=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    # a generic distorted image: blur-ish plus noise, clipped to [0,1]
    dist = (0.7 * ref + 0.3 * torch.roll(ref, 1, dims=-1) + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(
        0, 1
    )
    return dist, ref


def _tiny(name):
    cls = MODELS.get(name)
    opts = getattr(cls, "test_options", {}) or {}
    return build(name, **opts).eval()


def test_registered_targets():
    assert {"birqa", "lpips.alex", "lpips.vgg", "topiq.fr", "psnr", "ssim", "ms-ssim"} <= set(NAMES)
    rows = {r["name"]: r for r in MODELS.info()}
    assert rows["lpips.alex"]["lower_better"] is True and rows["birqa"]["lower_better"] is False


@pytest.mark.parametrize("name", NAMES)
def test_gradient_finite_and_nonzero(name):
    t = _tiny(name)
    dist, ref = _pair(size=64)
    dist = dist.clone().requires_grad_(True)
    ref = ref.clone().requires_grad_(True)
    q = t.oriented_quality(dist, ref)
    q.sum().backward()
    g = dist.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g.abs() > 0).any(), "gradient w.r.t. dist is identically zero"
    assert (g.abs().flatten(1).sum(1) > 0).all(), "some pair got no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_shape_direction_and_determinism(name):
    t = _tiny(name)
    dist, ref = _pair(n=3, size=64)
    with torch.no_grad():
        s1, s2 = t(dist, ref), t(dist, ref)
        q = t.oriented_quality(dist, ref)
    assert s1.shape == (3,) and torch.equal(s1, s2)  # deterministic in eval mode
    assert t.lower_better == t.card.lower_better == MODELS.info()[NAMES.index(name)]["lower_better"]
    assert torch.allclose(q, -s1 if t.lower_better else s1)
    if not t.requires_weights:  # analytic metrics: the reference itself is the best possible image
        with torch.no_grad():
            assert (t.oriented_quality(ref, ref) >= q).all()


def test_mode_is_restored_by_eval_after_train():
    t = _tiny("topiq.fr")
    t.train()
    # pyiqa freezes the trunk's batch norm even in train mode
    bns = [m for m in t.net.semantic_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())


@pytest.mark.parametrize(
    "bad, msg",
    [
        (lambda d, r: (d[0], r[0]), "N×3×H×W"),
        (lambda d, r: (d[:, :1], r[:, :1]), "3 \\(RGB\\) channels"),
        (lambda d, r: (d, r[..., :32]), "same shape"),
        (lambda d, r: (d * 2, r), "in \\[0,1\\]"),
        (lambda d, r: (d.masked_fill(d > 0.5, float("nan")), r), "NaN"),
        (lambda d, r: ((d * 255).to(torch.uint8), r), "float tensor"),
    ],
)
def test_inputs_validated(bad, msg):
    t = _tiny("ssim")
    dist, ref = _pair(size=48)
    with pytest.raises(RobenchError, match=msg):
        t(*bad(dist, ref))


def test_nan_and_wrong_shape_scores_refused():
    from robench.core.target import Target, TargetCard

    class Broken(Target):
        def __init__(self, out):
            super().__init__()
            self.out = out
            self.card = TargetCard(name="broken", lower_better=False, score_range=None)

        def score(self, dist, ref):
            return self.out(dist)

    dist, ref = _pair()
    with pytest.raises(RobenchError, match="non-finite"):
        Broken(lambda d: torch.full((d.shape[0],), float("nan")))(dist, ref)
    with pytest.raises(RobenchError, match="returned shape"):
        Broken(lambda d: torch.zeros(d.shape[0], 2))(dist, ref)


def test_birqa_size_and_ablation_switches():
    full = build("birqa")
    n = sum(p.numel() for p in full.net.parameters())
    assert 0.8 * 5.5e6 <= n <= 1.2 * 5.5e6, n
    for kw in ({"csram": False}, {"scgb": False}, {"rah": False}, {"csram": False, "scgb": False, "rah": False}):
        m = build("birqa", width=0.25, **kw).eval()
        assert m(*_pair(size=32)).shape == (2,)
    assert build("birqa", csram=False).net.csram is None


def test_birqa_features_have_no_dead_gradients():
    """Every analytic feature channel responds to the distorted image (no hard thresholds)."""
    from robench.models.birqa.features import AnalyticFeatures

    f = AnalyticFeatures()
    dist, ref = _pair(n=1, size=32)
    dist.requires_grad_(True)
    feats = f(dist, f.reference_stats(ref))
    for c in range(feats.shape[1]):
        (g,) = torch.autograd.grad(feats[:, c].sum(), dist, retain_graph=True)
        assert torch.isfinite(g).all() and (g.abs() > 0).any(), f"feature channel {c} has no gradient"


def test_topiq_parameter_count():
    n = sum(p.numel() for p in build("topiq.fr").net.parameters())
    assert 35e6 < n < 37e6  # ≈ 36 M (method-notes §5)


def test_load_model_needs_weights_or_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("ROBENCH_SHIPPED_WEIGHTS", "0")  # and none of the package's
    with pytest.raises(RobenchError, match="robench train --model birqa"):
        robench.load_model("birqa")
    assert robench.load_model("birqa", weights="none").card.weights.source == "random"
    assert robench.load_model("ssim").card.weights.source == "none"
    with pytest.raises(RobenchError, match="did you mean 'birqa'"):
        robench.load_model("birq")
    with pytest.raises(RobenchError, match="robench train --model birqa --defense aat"):
        robench.load_model("birqa.aat")


@pytest.mark.parametrize("name", NAMES)
def test_reference_cache_gives_identical_scores_and_gradients(name):
    """``score_with(dist, reference(ref))`` is ``score(dist, ref)``; a bound target with and
    without the cache agrees in value and gradient, also on a subset of rows."""
    t = _tiny(name)
    dist, ref = _pair(n=3, size=64)
    outs = {}
    for cache in (True, False):
        f = t.bind(ref, cache=cache)
        x = dist.clone().requires_grad_(True)
        q = f(x)
        (g,) = torch.autograd.grad(q.sum(), x)
        rows = torch.tensor([2, 0])
        with torch.no_grad():
            q_sub = f(dist[rows], rows)
        outs[cache] = (q.detach(), g, q_sub, f.queries.clone())
    (qa, ga, sa, na), (qb, gb, sb, nb) = outs[True], outs[False]
    assert torch.allclose(qa, qb, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6, rtol=1e-4)
    assert torch.allclose(sa, qa[[2, 0]], atol=1e-6) and torch.allclose(sb, sa, atol=1e-6)
    assert na.tolist() == nb.tolist() == [2, 1, 2]  # queries counted per image
