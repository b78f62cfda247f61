"""Weight loading: upstream formats (generated here with random values), safe loading, sha256."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import robench
from robench.core.errors import IntegrityError, RobenchError
from robench.models import build
from robench.core import weights as W
from robench.engine import hub as H


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in module.state_dict().items()
    }


def _pair(size=64):
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(2, 3, size, size, generator=g)
    return (ref + 0.1 * torch.randn(2, 3, size, size, generator=g)).clamp(0, 1), ref


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_full_upstream_state_dict(home, tmp_path, net):
    src = build(f"lpips.{net}")
    state = _randomise(src.lpips)
    state["scaling_layer.shift"] = src.lpips.scaling_layer.shift.clone()
    state["scaling_layer.scale"] = src.lpips.scaling_layer.scale.clone()
    for k in range(5):  # lpips >= 0.1.3 also saves the ModuleList alias lins.K
        state[f"lins.{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"].abs()
        state[f"lin{k}.model.1.weight"] = state[f"lins.{k}.model.1.weight"]
    path = tmp_path / f"lpips_{net}.pth"
    torch.save(state, path)
    t = robench.load_model(f"lpips.{net}", weights=path)
    assert t.card.weights.source == "imported"
    src.lpips.load_state_dict({k: v for k, v in state.items() if not k.startswith("lins.")})
    dist, ref = _pair()
    with torch.no_grad():
        assert torch.allclose(t(dist, ref), src.eval()(dist, ref))


def test_lpips_lin_file_plus_torchvision_trunk(home, tmp_path, monkeypatch):
    """(b): the lin-weights file as shipped in the lpips wheel + torchvision's features.K.* file."""
    t = build("lpips.alex")
    lin = {f"lin{k}.model.1.weight": torch.rand_like(getattr(t.lpips, f"lin{k}").model[1].weight) for k in range(5)}
    g = torch.Generator().manual_seed(1)
    trunk = {}
    for k, v in t.lpips.net.state_dict().items():  # net.sliceN.<idx>.weight -> features.<idx>.weight
        _, idx, rest = k.split(".", 2)
        trunk[f"features.{idx}.{rest}"] = torch.randn(v.shape, generator=g)
    trunk["classifier.1.weight"] = torch.randn(10, 4)  # torchvision's head is ignored
    torch.save(lin, tmp_path / "alex.pth")
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    H.import_weights(tmp_path / "alex.pth", "lpips.alex")
    H.import_weights(tmp_path / "alexnet-owt-7be5be79.pth", "lpips.alex")
    loaded = robench.load_model("lpips.alex")
    assert loaded.card.weights.source == "official"
    assert torch.equal(getattr(loaded.lpips.net.slice2, "3").weight, trunk["features.3.weight"])
    assert torch.equal(loaded.lpips.lin4.model[1].weight, lin["lin4.model.1.weight"])
    # the trunk can also come from the torch hub cache (no import)
    os.remove(W.weights_dir() / W.read_index()["lpips.alex#trunk"]["file"])
    idx = W.read_index()
    del idx["lpips.alex#trunk"]
    W._write_index(idx)
    hub = tmp_path / "torchhub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(trunk, hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(IntegrityError, match="published prefix 7be5be79"):  # random file: not the published one
        robench.load_model("lpips.alex")


def test_topiq_pyiqa_checkpoint(home, tmp_path):
    src = build("topiq.fr")
    state = _randomise(src.net, seed=2)
    state = {k: (v * 0.02 if v.is_floating_point() else v) for k, v in state.items()}
    for k, v in src.net.state_dict().items():  # keep batch-norm statistics sane
        if "running_var" in k:
            state[k] = v.abs() + 1.0
    path = tmp_path / "cfanet_fr_kadid_res50.pth"
    torch.save({"params": {f"module.{k}": v for k, v in state.items()}}, path)
    t = robench.load_model("topiq.fr", weights=path)
    src.net.load_state_dict(state)
    dist, ref = _pair()
    with torch.no_grad():
        assert torch.allclose(t(dist, ref), src.eval()(dist, ref))


def test_wrong_key_and_shape_refused(home, tmp_path):
    src = build("lpips.alex")
    state = dict(src.lpips.state_dict())
    state["lin9.model.1.weight"] = state.pop("lin4.model.1.weight")
    torch.save(state, tmp_path / "wrongkey.pth")
    with pytest.raises(W.WeightsError, match=r"missing key.*lin4.*unexpected key.*lin9"):
        robench.load_model("lpips.alex", weights=tmp_path / "wrongkey.pth")
    state = dict(src.lpips.state_dict())
    state["lin0.model.1.weight"] = torch.zeros(1, 63, 1, 1)
    torch.save(state, tmp_path / "wrongshape.pth")
    with pytest.raises(W.WeightsError, match="shape mismatch.*lin0"):
        H.import_weights(tmp_path / "wrongshape.pth", "lpips.alex")


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_payload_refused(home, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(W.WeightsError, match="not a plain tensor checkpoint"):
        W.load_state_dict(path)
    with pytest.raises(RobenchError, match="not a plain tensor checkpoint"):
        robench.load_model("lpips.alex", weights=path)


def test_truncated_and_tampered_files(home, tmp_path):
    t = build("birqa", width=0.25)
    path = tmp_path / "b.safetensors"
    W.save_safetensors(t.state_dict(), path, {"config": {"width": 0.25}})
    entry = W.register("birqa", path, source="imported")
    assert robench.load_model("birqa").card.weights.sha256 == entry["sha256"]
    cached = W.weights_dir() / entry["file"]
    data = bytearray(cached.read_bytes())
    data[-5] ^= 1
    cached.write_bytes(bytes(data))  # tampered after registration
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        robench.load_model("birqa")
    assert [r["status"] for r in W.verify_all() if r["source"] != "shipped"] == ["sha256 mismatch"]
    assert all(r["status"] == "ok" for r in W.verify_all() if r["source"] == "shipped")
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "weights", "verify", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert r.returncode == 1 and json.loads(r.stdout)[0]["status"] == "sha256 mismatch"
    short = tmp_path / "short.pth"
    torch.save(t.state_dict(), short)
    short.write_bytes(short.read_bytes()[:2000])
    with pytest.raises(W.WeightsError, match="corrupt or truncated"):
        W.load_state_dict(short)


def test_safetensors_carries_config_and_provenance(home, tmp_path):
    t = build("birqa", width=0.25, csram=False)
    path = tmp_path / "x.safetensors"
    W.save_safetensors(t.state_dict(), path, {"config": t.config, "provenance": {"dataset": "mini"}})
    loaded = robench.load_model("birqa", weights=path)
    assert loaded.config["width"] == 0.25 and loaded.net.csram is None
    assert loaded.card.weights.provenance == {"dataset": "mini"}


def test_weights_fetch_from_local_server(home, tmp_path):
    import http.server

    src = build("topiq.fr")
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"params": src.net.state_dict()}, served / "cfanet_fr_kadid_res50-2c4cc61d.pth")
    digest = hashlib.sha256((served / "cfanet_fr_kadid_res50-2c4cc61d.pth").read_bytes()).hexdigest()
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/cfanet_fr_kadid_res50-2c4cc61d.pth"
    try:
        # our random file does not carry the published sha256 prefix: refused, nothing registered
        with pytest.raises(IntegrityError, match="published prefix 2c4cc61d"):
            H.fetch_official("topiq.fr", url=url, progress=False)
        assert "topiq.fr#official" not in W.read_index()
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            H.fetch_official("topiq.fr", url=url, sha256="0" * 64, progress=False)
        H.fetch_official("topiq.fr", url=url, sha256=digest, progress=False)
    finally:
        httpd.shutdown()
    t = robench.load_model("topiq.fr")
    assert t.card.weights.source == "official"
    with pytest.raises(RobenchError, match="no official weights"):
        H.fetch_official("birqa")
