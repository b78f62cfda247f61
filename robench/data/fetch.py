"""Safe downloads of dataset archives: progress bar, sha256, resumable, safe extraction.

Guarantees:

* A download goes to ``<file>.part`` and becomes ``<file>`` only after its length and sha256
  check out; an interrupted download resumes with an HTTP Range request where the server
  supports it, and restarts otherwise.
* An archive is checked member by member *before* anything is extracted: absolute paths,
  ``..`` components, links and device files are refused (:class:`IntegrityError` naming the
  member). Extraction goes to a temporary folder that is renamed into place when complete, so
  a killed extraction never leaves a tree that loads.
* Pins: the official archives' sha256 values cannot be computed on a machine without
  internet, so robench ships none it has not measured. ``robench data fetch`` then needs the
  expected ``--sha256`` from the user, or ``--trust-on-first-use``, which records the hash it
  saw in ``$ROBENCH_HOME/pins.json`` and enforces it on every later fetch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from robench.errors import DataError, IntegrityError, RobenchError
from robench.home import robench_home
from robench.progress import progress_bar


@dataclass(frozen=True)
class Archive:
    """One official archive of a dataset."""

    url: str
    filename: str
    sha256: str | None = None  # None: not pinned by robench (see module docstring)
    size: int | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# download


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, timeout: float = 60.0,
             chunk: int = 1 << 16) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify length and sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256.lower():
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "robench", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the .part is already whole (or junk)
            part.unlink()
            return download(url, dest, sha256, progress, timeout, chunk)
        raise RobenchError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RobenchError(f"download failed: {url}: {exc}") from None
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # server ignored Range: start again
            have = 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + have) if length is not None else None
        mode = "ab" if have else "wb"
        got = have
        with progress_bar(progress) as bar, open(part, mode) as f:
            task = bar.add_task(f"downloading {dest.name}", total=total, completed=have) if bar else None
            while True:
                try:
                    buf = resp.read(chunk)
                except OSError as exc:  # connection dropped mid-download: keep .part for resume
                    raise RobenchError(f"download interrupted: {url}: {exc} ({got} bytes kept in {part})") from None
                if not buf:
                    break
                f.write(buf)
                got += len(buf)
                if bar:
                    bar.update(task, completed=got)
    if total is not None and got != total:
        raise IntegrityError(f"truncated download: {url}: got {got} of {total} bytes (kept {part} for resume)")
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256.lower():
        part.unlink()
        raise IntegrityError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {actual}; file deleted")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# extraction


def _check_member_name(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise IntegrityError(f"unsafe archive {archive}: absolute path member {name!r}")
    if ".." in p.parts:
        raise IntegrityError(f"unsafe archive {archive}: path traversal member {name!r}")


def _zip_members(archive: Path) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
    for info in infos:
        _check_member_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise IntegrityError(f"unsafe archive {archive}: symlink member {info.filename!r}")
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise IntegrityError(f"unsafe archive {archive}: special file member {info.filename!r}")
    return infos


def _tar_members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
    for m in members:
        _check_member_name(archive, m.name)
        if m.issym() or m.islnk():
            raise IntegrityError(f"unsafe archive {archive}: link member {m.name!r} -> {m.linkname!r}")
        if not (m.isfile() or m.isdir()):
            raise IntegrityError(f"unsafe archive {archive}: special file member {m.name!r}")
    return members


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (zip or tar.*) so that it appears at ``dest`` all at once."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise RobenchError(f"refusing to extract over existing {dest}")
    try:
        is_zip = zipfile.is_zipfile(archive)
        is_tar = not is_zip and tarfile.is_tarfile(archive)
    except OSError as exc:
        raise DataError(f"cannot read archive {archive}: {exc}") from None
    if not (is_zip or is_tar):
        if archive.suffix.lower() == ".rar":
            raise RobenchError(f"{archive}: RAR archives need an external tool; extract it with `unrar x` and pass --root")
        raise DataError(f"{archive}: not a zip or tar archive")
    try:  # validate everything before writing anything
        members = _zip_members(archive) if is_zip else _tar_members(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"corrupt archive {archive}: {exc}") from None
    tmp = dest.parent / f".extract-{dest.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp, members=members)
        else:
            with tarfile.open(archive) as tf:
                # members are already validated; the "data" filter (Python >= 3.10.12) is a second guard
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp, members=members, **kw)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --------------------------------------------------------------------------------------------
# pins (trust on first use)


def _pins_path() -> Path:
    return robench_home() / "pins.json"


def recorded_pin(url: str) -> str | None:
    p = _pins_path()
    if p.is_file():
        return json.loads(p.read_text()).get(url)
    return None


def record_pin(url: str, digest: str) -> None:
    p = _pins_path()
    pins = json.loads(p.read_text()) if p.is_file() else {}
    pins[url] = digest
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(pins, indent=1, sort_keys=True))
    os.replace(tmp, p)


def fetch_archive(archive: Archive, root: Path, sha256: str | None = None, trust_on_first_use: bool = False,
                  url: str | None = None, progress: bool = True) -> Path:
    """Download and extract one archive under ``root``; returns the extracted folder
    ``root/<archive stem>`` (reused when it already exists)."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    url = url or archive.url
    stem = archive.filename
    for suffix in (".tar.gz", ".tgz", ".zip", ".tar", ".rar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    dest = root / stem
    if dest.is_dir():
        return dest
    expected = sha256 or archive.sha256 or recorded_pin(url)
    if expected is None and not trust_on_first_use:
        raise RobenchError(
            f"no sha256 pinned for {url}: robench cannot verify it offline. Pass --sha256 HEX (from the "
            f"dataset's site) or --trust-on-first-use to record the hash of this download"
        )
    path = download(url, root / ".downloads" / archive.filename, expected, progress=progress)
    if expected is None:
        record_pin(url, sha256_file(path))
    return safe_extract(path, dest)
