"""Downloads against an archive served by a test HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import layouts as L
import robench
from robench.core import fetch as F
from robench.core.errors import IntegrityError, RobenchError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (for resume) and request logging."""

    log: list = []

    def log_message(self, *a):  # keep test output clean
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **kw: _Handler(*a, directory=str(served), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    _Handler.log = []
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _kadid_zip(tmp_path: Path, served: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    L.make_kadid(src)
    archive = served / "kadid10k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((src / "kadid10k").rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_fetch_verifies_and_extracts_then_loads(tmp_path, server):
    served, base = server
    archive, digest = _kadid_zip(tmp_path, served)
    root = tmp_path / "data"
    a = F.Archive(f"{base}/kadid10k.zip", "kadid10k.zip", sha256=digest)
    out = F.fetch_archive(a, root, progress=False)
    assert out == root / "kadid10k"
    ds = robench.load_dataset("kadid10k", split="all", root=root)
    assert len(ds) == 20
    assert not list(root.glob(".extract-*")) and not list((root / ".downloads").glob("*.part"))
    # a second fetch reuses the extracted tree (no download)
    n = len(_Handler.log)
    F.fetch_archive(a, root, progress=False)
    assert len(_Handler.log) == n


def test_tampered_archive_rejected_nothing_extracted(tmp_path, server):
    served, base = server
    archive, digest = _kadid_zip(tmp_path, served)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        F.fetch_archive(F.Archive(f"{base}/kadid10k.zip", "kadid10k.zip", sha256=digest), root, progress=False)
    assert not (root / "kadid10k").exists()
    assert not list((root / ".downloads").iterdir())  # the bad download is deleted


@pytest.mark.parametrize("member", ["../evil.txt", "kadid10k/../../evil.txt", "/abs/evil.txt"])
def test_path_traversal_member_rejected(tmp_path, server, member):
    served, base = server
    archive = served / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("kadid10k/dmos.csv", "dist_img,ref_img,dmos,var\n")
        zf.writestr(member, "pwned")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(IntegrityError, match="unsafe archive"):
        F.fetch_archive(F.Archive(f"{base}/bad.zip", "bad.zip", sha256=digest), root, progress=False)
    assert not (root / "bad").exists() and not (tmp_path / "evil.txt").exists()
    assert not list(root.glob(".extract-*"))


def test_tar_symlink_and_traversal_rejected(tmp_path):
    for kind in ("symlink", "traversal"):
        archive = tmp_path / f"{kind}.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("dataset/ok.txt")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"ok"))
            if kind == "symlink":
                link = tarfile.TarInfo("dataset/link")
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tf.addfile(link)
            else:
                bad = tarfile.TarInfo("../outside.txt")
                bad.size = 1
                tf.addfile(bad, io.BytesIO(b"x"))
        with pytest.raises(IntegrityError, match="unsafe archive"):
            F.safe_extract(archive, tmp_path / f"out-{kind}")
        assert not (tmp_path / f"out-{kind}").exists() and not (tmp_path / "outside.txt").exists()


def test_tar_gz_bapps_layout(tmp_path, server):
    served, base = server
    src = tmp_path / "src"
    L.make_bapps(src)
    archive = served / "twoafc_val.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "dataset", arcname="dataset")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "data"
    F.fetch_archive(F.Archive(f"{base}/twoafc_val.tar.gz", "twoafc_val.tar.gz", sha256=digest), root, progress=False)
    ds = robench.load_dataset("bapps-2afc", split="val", root=root)
    assert len(ds) == 9


def test_unpinned_needs_sha_or_tofu(tmp_path, server, robench_home):
    served, base = server
    archive, digest = _kadid_zip(tmp_path, served)
    a = F.Archive(f"{base}/kadid10k.zip", "kadid10k.zip")  # no pin, like the official entries
    with pytest.raises(RobenchError, match="no sha256 pinned"):
        F.fetch_archive(a, tmp_path / "d0", progress=False)
    F.fetch_archive(a, tmp_path / "d1", trust_on_first_use=True, progress=False)
    assert F.recorded_pin(a.url) == digest
    # the recorded pin is enforced later: a changed archive at the same URL is refused
    archive.write_bytes(archive.read_bytes() + b"junk")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        F.fetch_archive(a, tmp_path / "d2", progress=False)


def test_resume_partial_download(tmp_path, server):
    served, base = server
    archive, digest = _kadid_zip(tmp_path, served)
    dest = tmp_path / "dl" / "kadid10k.zip"
    dest.parent.mkdir()
    data = archive.read_bytes()
    (dest.parent / "kadid10k.zip.part").write_bytes(data[:1000])  # an earlier, interrupted download
    F.download(f"{base}/kadid10k.zip", dest, digest, progress=False)
    assert dest.read_bytes() == data
    assert _Handler.log[-1][1] == "bytes=1000-"  # only the rest was requested


def test_http_error_is_clear(tmp_path, server):
    served, base = server
    with pytest.raises(RobenchError, match="HTTP 404"):
        F.download(f"{base}/missing.zip", tmp_path / "x.zip", None, progress=False)


def test_cli_fetch(tmp_path, server):
    served, base = server
    archive, digest = _kadid_zip(tmp_path, served)
    root = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "robench.cli",
        "data",
        "fetch",
        "kadid10k",
        "--root",
        str(root),
        "--url",
        f"{base}/kadid10k.zip",
        "--json",
    ]
    r = subprocess.run(cmd + ["--sha256", "0" * 64], capture_output=True, text=True)
    assert r.returncode == 2 and "sha256 mismatch" in r.stderr and not (root / "kadid10k").exists()
    r = subprocess.run(cmd + ["--sha256", digest], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["extracted"] == [str(root / "kadid10k")]
    r = subprocess.run(
        [sys.executable, "-m", "robench.cli", "data", "fetch", "live", "--root", str(root)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no public archive" in r.stderr
