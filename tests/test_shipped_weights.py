"""The weights that ship with the package: verified, loadable, provenance complete, never in the
way of this machine's own weights; `robench train` reproduces them (slow)."""

import json

import pytest
import torch

import robench
from robench.core import weights as W


def test_every_shipped_file_matches_its_manifest_and_loads():
    entries = W.shipped()
    if not entries:
        pytest.skip("no shipped weights in this checkout")
    total = 0
    for name, e in entries.items():
        assert W.sha256_file(e["path"]) == e["sha256"], name
        total += e["bytes"]
        prov = e["provenance"]
        for key in ("git_commit", "profile", "dataset", "val_srocc_shipped", "rounded_from_sha256", "stored_as"):
            assert key in prov, (name, key)
        assert abs(prov["val_srocc_shipped"] - prov["val_srocc"]) < 0.005, name  # float16 rounding is harmless
        t = robench.load_model(name)
        assert t.card.weights.sha256 == e["sha256"] and t.card.weights.source == "shipped"
        assert all(p.dtype == torch.float32 for p in t.parameters())  # computes in float32
    assert total < 70e6  # docs/targets.md states the size; keep it small


def _tiny(tmp_path, monkeypatch, name="birqa"):
    """A shipped folder holding one tiny BiRQA."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    t = robench.load_model("birqa", weights="none", width=0.25)
    f = shipped / f"{name}-x.safetensors"
    sha = W.save_safetensors(
        {k: v.half() for k, v in t.state_dict().items()},
        f,
        metadata={"config": t.config, "provenance": {"val_srocc": 0.5}},
    )
    (shipped / "MANIFEST.json").write_text(
        json.dumps(
            {name: {"name": name, "file": f.name, "sha256": sha, "source": "shipped", "provenance": {"val_srocc": 0.5}}}
        )
    )
    monkeypatch.setattr(W, "SHIPPED_DIR", shipped)
    return f, sha


def test_shipped_used_only_when_this_machine_has_none(robench_home, tmp_path, monkeypatch):
    f, sha = _tiny(tmp_path, monkeypatch, name="birqa.shipped-test")
    assert W.lookup("birqa.shipped-test")["sha256"] == sha
    assert robench.load_model("birqa.shipped-test").card.weights.source == "shipped"
    # this machine's own registration comes first, and the shipped file is left as it was
    own = robench.load_model("birqa", weights="none", width=0.25)
    src = tmp_path / "own.safetensors"
    W.save_safetensors(own.state_dict(), src, metadata={"config": own.config})
    W.register("birqa.shipped-test", src, "trained-here")
    assert W.lookup("birqa.shipped-test")["source"] == "trained-here"
    assert W.sha256_file(f) == sha
    monkeypatch.setenv("ROBENCH_SHIPPED_WEIGHTS", "0")
    assert W.shipped() == {}


def test_tampered_shipped_file_is_refused(tmp_path, monkeypatch):
    f, sha = _tiny(tmp_path, monkeypatch, name="birqa.tamper-test")
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    from robench.core.errors import IntegrityError

    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        robench.load_model("birqa.tamper-test")
    assert any(r["status"] == "sha256 mismatch" for r in W.verify_all() if r["name"] == "birqa.tamper-test")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_train_reproduces_the_shipped_clean_birqa(tmp_path, monkeypatch):
    e = W.shipped().get("birqa")
    if e is None:
        pytest.skip("no shipped birqa")
    from robench.engine.train import train

    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROBENCH_SHIPPED_WEIGHTS", "0")
    res = train("birqa", progress=False)
    assert abs(res.best_val_srocc - e["provenance"]["val_srocc"]) <= 0.005, (res.best_val_srocc, e["provenance"])


def test_shipped_recipe_weights_need_the_clean_weights_they_were_fine_tuned_from(monkeypatch):
    """A shipped ``M.<recipe>`` is used only when this machine's clean ``M`` is the one it was
    fine-tuned from (its digest, or the float32 digest a shipped clean file was rounded from);
    weights trained or imported here are taken as they are."""
    from types import SimpleNamespace

    from robench.core import weights as W
    from robench.engine.resolve import _fits_clean

    def target(source):
        return SimpleNamespace(
            card=SimpleNamespace(weights=SimpleNamespace(source=source, provenance={"clean_sha256": "abc"}))
        )

    for clean, ok in (
        ({"sha256": "abc"}, True),
        ({"sha256": "f16", "rounded_from_sha256": "abc"}, True),
        ({"sha256": "other"}, False),
        (None, True),
    ):
        monkeypatch.setattr(W, "lookup", lambda name, e=clean: e)
        assert _fits_clean(target("shipped"), "birqa") is ok, clean
    monkeypatch.setattr(W, "lookup", lambda name: {"sha256": "other"})
    assert _fits_clean(target("trained-here"), "birqa")
