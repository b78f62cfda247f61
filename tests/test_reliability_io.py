"""Reliability audit (issue 8): bad downloads, killed fetches and builds, hostile checkpoints.

Complements test_fetch.py / test_weights.py / test_mini.py (which cover tampered archives,
traversal and symlink members, a plain resume, HTTP 404, wrong keys, the basic pickle refusal,
truncated .pth files and an exception mid-build) with what they leave out: servers that fail
mid-body or on resume, short archives, SIGKILL during `robench weights fetch` / `data fetch` /
`data build` followed by a rerun, hostile safetensors headers and pickle payloads that would
run code. All servers listen on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import layouts as L
import robench
from robench.core import fetch as F
from robench.data import mini as M
from robench.core.errors import DataError, IntegrityError, RobenchError
from robench.models import build
from robench.core import weights as W
from robench.engine import hub as H
from robench.core.registry import DATASETS

TOPIQ_FILE = "cfanet_fr_kadid_res50-2c4cc61d.pth"  # the name in topiq.fr's card (dest of `weights fetch`)


# --------------------------------------------------------------------------------------------
# a 127.0.0.1 server whose first path component picks its behaviour: /MODE/FILE
#   ok            static file, honours Range
#   cut           honours Range, announces the full Content-Length, sends half, closes
#   nolength-cut  no Content-Length, sends half, closes (the client cannot tell it is short)
#   short         the server's copy is the first half of the file (consistent Content-Length)
#   range500      like ok, but HTTP 500 on every Range request
#   redirect500   302 to /err500/FILE, which answers HTTP 500
#   trickle       honours Range, 1 KiB every 50 ms (for kill -9 mid-transfer)
#   slow          honours Range, 4 KiB every 5 ms (for concurrent downloads)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        mode, _, name = self.path.lstrip("/").partition("/")
        rng = self.headers.get("Range")
        srv.log.append((mode, name, rng))
        try:
            self._serve(srv, mode, name, rng)
        except (BrokenPipeError, ConnectionResetError):  # a killed client
            pass

    def _serve(self, srv, mode, name, rng):
        if mode == "redirect500":
            self.send_response(302)
            self.send_header("Location", f"/err500/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "err500" or (mode == "range500" and rng):
            self.send_error(500)
            return
        path = srv.folder / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if mode == "short":
            data = data[: len(data) // 2]
        start = int(rng[6:].split("-")[0]) if rng and rng.startswith("bytes=") and mode != "nolength-cut" else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if mode != "nolength-cut":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("cut", "nolength-cut"):
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if mode in ("trickle", "slow"):
            step, pause = (1024, 0.05) if mode == "trickle" else (4096, 0.005)
            for i in range(0, len(body), step):
                if srv.stop.is_set():
                    return
                self.wfile.write(body[i : i + step])
                time.sleep(pause)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.folder, httpd.log, httpd.stop = folder, [], threading.Event()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def kadid(server, tmp_path_factory):
    """(served zip, its sha256): the tiny KADID layout of tests/layouts.py."""
    import zipfile

    src = tmp_path_factory.mktemp("kadid_src")
    L.make_kadid(src)
    archive = server.folder / "kadid10k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((src / "kadid10k").rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return archive, F.sha256_file(archive)


@pytest.fixture(scope="module")
def topiq(server):
    """(served name, sha256) of a random-valued topiq.fr checkpoint in pyiqa's format (~145 MB)."""
    torch.save({"params": build("topiq.fr").net.state_dict()}, server.folder / TOPIQ_FILE)
    return TOPIQ_FILE, F.sha256_file(server.folder / TOPIQ_FILE)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): F.sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _archive(server, digest, mode="ok", sha=True):
    return F.Archive(f"{server.base}/{mode}/kadid10k.zip", "kadid10k.zip", sha256=digest if sha else None)


def _wait_for(cond, proc, what, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}: {proc.log.read_text()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _kill9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------------------------
# dataset archives: server failures, truncation, resume


def test_archive_connection_dropped_mid_body_refused_then_resume_equals_clean(tmp_path, server, kadid):
    archive, digest = kadid
    root = tmp_path / "data"
    with pytest.raises(RobenchError, match="truncated download|download interrupted") as exc:
        F.fetch_archive(_archive(server, digest), root, url=f"{server.base}/cut/kadid10k.zip", progress=False)
    assert "run again to resume" in str(exc.value)
    part = root / ".downloads" / "kadid10k.zip.part"
    assert sorted(p.name for p in (root / ".downloads").iterdir()) == [part.name]  # no final file, no lock
    assert not (root / "kadid10k").exists() and not list(root.glob(".extract-*"))
    kept = part.stat().st_size
    assert 0 < kept < archive.stat().st_size
    out = F.fetch_archive(_archive(server, digest), root, progress=False)
    assert server.log[-1] == ("ok", "kadid10k.zip", f"bytes={kept}-")  # resumed, then verified whole
    assert F.sha256_file(root / ".downloads" / "kadid10k.zip") == digest and not part.exists()
    clean = F.fetch_archive(_archive(server, digest), tmp_path / "clean", progress=False)
    assert _tree(out) == _tree(clean) and len(_tree(out)) == 26


def test_archive_server_500_on_range_request_restarts_from_scratch(tmp_path, server, kadid):
    archive, digest = kadid
    root = tmp_path / "data"
    with pytest.raises(RobenchError):
        F.fetch_archive(_archive(server, digest), root, url=f"{server.base}/cut/kadid10k.zip", progress=False)
    kept = (root / ".downloads" / "kadid10k.zip.part").stat().st_size
    out = F.fetch_archive(_archive(server, digest, "range500"), root, progress=False)
    assert server.log[-2:] == [("range500", "kadid10k.zip", f"bytes={kept}-"), ("range500", "kadid10k.zip", None)]
    assert _tree(out) == _tree(F.fetch_archive(_archive(server, digest), tmp_path / "clean", progress=False))


def test_archive_redirect_to_server_error_refused_nothing_written(tmp_path, server, kadid):
    archive, digest = kadid
    root = tmp_path / "data"
    with pytest.raises(RobenchError, match=r"download failed: .*HTTP 500"):
        F.fetch_archive(_archive(server, digest), root, url=f"{server.base}/redirect500/kadid10k.zip", progress=False)
    assert server.log[-2:] == [("redirect500", "kadid10k.zip", None), ("err500", "kadid10k.zip", None)]
    assert list((root / ".downloads").iterdir()) == [] and not (root / "kadid10k").exists()
    assert (F.fetch_archive(_archive(server, digest), root, progress=False) / "kadid10k" / "dmos.csv").is_file()


@pytest.mark.parametrize("mode", ["short", "nolength-cut"])
def test_short_archive_refused_by_sha256_not_promoted(tmp_path, server, kadid, mode):
    """Fewer bytes than the pinned archive, with a Content-Length that matches them or none at all."""
    archive, digest = kadid
    root = tmp_path / "data"
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        F.fetch_archive(_archive(server, digest), root, url=f"{server.base}/{mode}/kadid10k.zip", progress=False)
    assert list((root / ".downloads").iterdir()) == []  # the .part is deleted, never renamed
    assert not (root / "kadid10k").exists() and not list(root.glob(".extract-*"))


def test_trust_on_first_use_never_pins_a_cut_download(tmp_path, server, kadid, home):
    archive, digest = kadid
    root = tmp_path / "data"
    cut = _archive(server, digest, "nolength-cut", sha=False)
    with pytest.raises(DataError, match="not a zip or tar archive"):
        F.fetch_archive(cut, root, trust_on_first_use=True, progress=False)
    assert F.recorded_pin(cut.url) is None  # a later good download is not refused against a bad pin
    assert list((root / ".downloads").iterdir()) == [] and not (root / "kadid10k").exists()
    good = _archive(server, digest, sha=False)
    F.fetch_archive(good, root, trust_on_first_use=True, progress=False)
    assert F.recorded_pin(good.url) == digest


def test_resumed_part_with_foreign_bytes_is_refetched_and_verified(tmp_path, server, kadid):
    """A .part left by another version of the file: the resumed whole fails sha256, so it is
    fetched once more from scratch, never promoted as is."""
    archive, digest = kadid
    dest = tmp_path / "dl" / "kadid10k.zip"
    dest.parent.mkdir()
    (dest.parent / "kadid10k.zip.part").write_bytes(b"\0" * 1000)
    F.download(f"{server.base}/ok/kadid10k.zip", dest, digest, progress=False)
    assert server.log[-2:] == [("ok", "kadid10k.zip", "bytes=1000-"), ("ok", "kadid10k.zip", None)]
    assert dest.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kadid10k.zip"]


def test_whole_part_left_by_killed_process_is_verified_not_refetched(tmp_path, server, kadid):
    """Killed after the last byte but before the rename: the server answers 416 to the resume,
    and the .part is verified and promoted without a new transfer (or refetched if it is bad)."""
    archive, digest = kadid
    dest = tmp_path / "dl" / "kadid10k.zip"
    dest.parent.mkdir()
    part = dest.parent / "kadid10k.zip.part"
    size = archive.stat().st_size
    part.write_bytes(archive.read_bytes())
    F.download(f"{server.base}/ok/kadid10k.zip", dest, digest, progress=False)
    assert server.log[-1] == ("ok", "kadid10k.zip", f"bytes={size}-")
    assert dest.read_bytes() == archive.read_bytes() and not part.exists()
    dest.unlink()
    part.write_bytes(b"\0" * size)  # same length, wrong bytes
    F.download(f"{server.base}/ok/kadid10k.zip", dest, digest, progress=False)
    assert server.log[-2:] == [("ok", "kadid10k.zip", f"bytes={size}-"), ("ok", "kadid10k.zip", None)]
    assert dest.read_bytes() == archive.read_bytes() and not part.exists()


def test_concurrent_downloads_of_one_file_do_not_interleave(tmp_path, server, kadid):
    archive, digest = kadid
    dest = tmp_path / "dl" / "kadid10k.zip"
    n = len(server.log)
    errors: list[BaseException] = []

    def go():
        try:
            F.download(f"{server.base}/slow/kadid10k.zip", dest, digest, progress=False)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert dest.read_bytes() == archive.read_bytes()
    assert len(server.log) - n == 1  # the waiters found the verified file: one transfer, nothing duplicated
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kadid10k.zip"]


def test_stale_extract_folder_of_killed_process_is_removed(tmp_path, server, kadid):
    archive, digest = kadid
    root = tmp_path / "data"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".extract-kadid10k-{dead.pid}-1"
    (stale / "images").mkdir(parents=True)
    (stale / "dmos.csv").write_text("half")
    live = root / f".extract-other-{os.getpid()}-2"  # a running extraction is left alone
    live.mkdir()
    out = F.fetch_archive(_archive(server, digest), root, progress=False)
    assert not stale.exists() and live.exists()
    assert _tree(out) == _tree(F.fetch_archive(_archive(server, digest), tmp_path / "clean", progress=False))


# --------------------------------------------------------------------------------------------
# weights fetch over HTTP


def test_weights_fetch_server_errors_register_nothing_then_resume(home, server, topiq):
    name, digest = topiq
    downloads = W.weights_dir() / "downloads"
    with pytest.raises(RobenchError, match="HTTP 500"):
        H.fetch_official("topiq.fr", url=f"{server.base}/redirect500/{name}", sha256=digest, progress=False)
    assert W.read_index() == {} and list(downloads.iterdir()) == []
    with pytest.raises(RobenchError, match="truncated download|download interrupted"):
        H.fetch_official("topiq.fr", url=f"{server.base}/cut/{name}", sha256=digest, progress=False)
    assert W.read_index() == {} and [p.name for p in downloads.iterdir()] == [name + ".part"]
    with pytest.raises(RobenchError, match="no weights for 'topiq.fr'"):  # the half file is never loaded
        robench.load_model("topiq.fr")
    kept = (downloads / (name + ".part")).stat().st_size
    [entry] = H.fetch_official("topiq.fr", url=f"{server.base}/ok/{name}", sha256=digest, progress=False)
    assert server.log[-1] == ("ok", name, f"bytes={kept}-")
    assert entry["name"] == "topiq.fr#official" and entry["sha256"] == digest
    assert entry["file"] == f"files/topiq.fr__official-{digest[:12]}.pth"
    assert F.sha256_file(W.weights_dir() / entry["file"]) == digest
    assert [p.name for p in downloads.iterdir()] == [name]


# --------------------------------------------------------------------------------------------
# kill -9 mid-transfer / mid-build, then rerun


def _cli(*args, home: Path) -> subprocess.Popen:
    log = home.parent / f"cli-{time.time_ns()}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "robench.cli", *args],
            env={**os.environ, "ROBENCH_HOME": str(home)},
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    proc.log = log
    return proc


def test_kill_9_during_weights_fetch_then_rerun_verifies(home, server, topiq):
    name, digest = topiq
    part = home / "weights" / "downloads" / (name + ".part")
    proc = _cli("weights", "fetch", "topiq.fr", "--url", f"{server.base}/trickle/{name}", "--sha256", digest, home=home)
    _wait_for(lambda: part.is_file() and part.stat().st_size >= 4096, proc, "the download started")
    _kill9(proc)
    assert not (part.parent / name).exists() and W.read_index() == {}
    assert not (W.weights_dir() / "files").exists()
    with pytest.raises(RobenchError, match="no weights for 'topiq.fr'"):
        robench.load_model("topiq.fr")
    kept = part.stat().st_size
    [entry] = H.fetch_official("topiq.fr", url=f"{server.base}/ok/{name}", sha256=digest, progress=False)
    assert server.log[-1] == ("ok", name, f"bytes={kept}-")  # resumed where the killed process stopped
    assert F.sha256_file(W.weights_dir() / entry["file"]) == entry["sha256"] == digest
    assert [p.name for p in part.parent.iterdir()] == [name]  # the dead process's lock file is gone too


def test_kill_9_during_data_fetch_then_rerun_equals_clean(tmp_path, server, kadid, home):
    archive, digest = kadid
    root = tmp_path / "data"
    part = root / ".downloads" / "kadid10k.zip.part"
    proc = _cli(
        "data",
        "fetch",
        "kadid10k",
        "--root",
        str(root),
        "--url",
        f"{server.base}/trickle/kadid10k.zip",
        "--sha256",
        digest,
        home=home,
    )
    _wait_for(lambda: part.is_file() and part.stat().st_size >= 2048, proc, "the download started")
    _kill9(proc)
    assert not (root / "kadid10k").exists() and not (root / ".downloads" / "kadid10k.zip").exists()
    kept = part.stat().st_size
    assert kept < archive.stat().st_size
    [official] = DATASETS.get("kadid10k").archives
    out = F.fetch_archive(official, root, sha256=digest, url=f"{server.base}/ok/kadid10k.zip", progress=False)
    assert server.log[-1] == ("ok", "kadid10k.zip", f"bytes={kept}-")
    assert _tree(out) == _tree(F.fetch_archive(_archive(server, digest), tmp_path / "clean", progress=False))


def _data_digests(folder: Path) -> dict[str, str]:
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("build_seconds")
    return {
        **{f: F.sha256_file(folder / f) for f in ("refs.npy", "dists.npy", "pairs.csv", "references.csv")},
        "meta": json.dumps(meta, sort_keys=True),
    }


def test_kill_9_during_data_build_then_rerun_is_byte_identical(tiny_mini, tmp_path, monkeypatch):
    """`robench data build` killed mid-build, rerun: identical to the uninterrupted session build
    (``tiny_mini``: same options, another ROBENCH_HOME, built with a process pool)."""
    home = tmp_path / "home"
    datasets = home / "datasets"
    proc = _cli("data", "build", "--size", "32", "--crops", "1", "--workers", "1", "--json", home=home)
    _wait_for(lambda: bool(list(datasets.glob(".build-*/dists.npy"))), proc, "the build wrote dists.npy")
    _kill9(proc)
    final = M.cache_dir(32, 0, 1, datasets)
    assert not final.exists() and len(list(datasets.glob(".build-*"))) == 1  # nothing that loads
    monkeypatch.setenv("ROBENCH_HOME", str(home))
    rebuilt = M.build_mini(size=32, crops_per_source=1, seed=0, progress=False, workers=1)
    assert rebuilt == final and M._is_complete(rebuilt)
    assert not list(datasets.glob(".build-*"))  # the dead build's folder is cleaned, not reused
    assert sorted(p.name for p in datasets.iterdir()) == [final.name]
    assert _data_digests(rebuilt) == _data_digests(tiny_mini)


# --------------------------------------------------------------------------------------------
# hostile or mismatched checkpoints


def _edit_safetensors_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.parametrize(
    "flaw,message",
    [
        ("dtype", r"dtype mismatch.*int32"),  # header says I32 where the model has float (same byte size)
        ("shape", r"shape mismatch"),  # same bytes, flattened shape
        ("size", r"corrupt safetensors"),  # shape disagrees with the byte range
        ("truncated", r"corrupt safetensors"),
    ],
)
def test_safetensors_header_mismatch_refused(home, tmp_path, flaw, message):
    t = build("birqa", width=0.25)
    path = tmp_path / "b.safetensors"
    W.save_safetensors(t.state_dict(), path, {"config": {"width": 0.25}})
    key = next(k for k, v in t.state_dict().items() if v.is_floating_point() and v.dim() >= 2)

    def edit(h):
        numel = 1
        for d in h[key]["shape"]:
            numel *= d
        if flaw == "dtype":
            assert h[key]["dtype"] == "F32"
            h[key]["dtype"] = "I32"
        elif flaw == "shape":
            h[key]["shape"] = [numel]
        else:
            h[key]["shape"] = [numel * 2]

    if flaw == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        _edit_safetensors_header(path, edit)
    with pytest.raises(W.WeightsError, match=message):
        robench.load_model("birqa", weights=path)
    with pytest.raises(W.WeightsError, match=message):
        H.import_weights(path, "birqa")
    assert W.read_index() == {}


class _Payload:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _hostile(kind: str, path: Path, marker: Path) -> str:
    state = {"weight": torch.zeros(2), "payload": _Payload(marker)}
    if kind == "zip":
        torch.save(state, path)
    elif kind == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif kind == "raw-pickle":
        path.write_bytes(pickle.dumps(state))
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
        return "TorchScript archive"
    return "not a plain tensor checkpoint"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle", "torchscript"])
def test_code_carrying_checkpoint_refused_and_never_run(home, tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    message = _hostile(kind, path, marker)
    with pytest.raises(W.WeightsError, match=message):
        W.load_state_dict(path)
    with pytest.raises(W.WeightsError, match=message):
        robench.load_model("lpips.alex", weights=path)
    with pytest.raises(W.WeightsError, match=message):
        H.import_weights(path, "lpips.alex")
    assert not marker.exists() and W.read_index() == {}


def test_weights_fetch_of_pickle_payload_refused_and_deleted(home, tmp_path, server):
    marker = tmp_path / "pwned"
    _hostile("zip", server.folder / "evil.pth", marker)
    digest = F.sha256_file(server.folder / "evil.pth")  # the pin matches: the bytes arrive intact
    with pytest.raises(W.WeightsError, match="not a plain tensor checkpoint"):
        H.fetch_official("topiq.fr", url=f"{server.base}/ok/evil.pth", sha256=digest, progress=False)
    assert not marker.exists() and W.read_index() == {}
    assert list((W.weights_dir() / "downloads").iterdir()) == []  # not kept for a later attempt
