"""Safe downloads of dataset archives: progress bar, sha256, resumable, safe extraction.

Guarantees:

* A download goes to ``<file>.part`` and becomes ``<file>`` (fsync, then rename) only after
  its length and sha256 check out; an interrupted or killed download resumes with an HTTP
  Range request where the server supports it, and restarts otherwise. A resumed file is
  verified whole; if that fails it is fetched once more from scratch before the mismatch is
  reported. A lock file serialises concurrent downloads of the same file.
* An archive is checked member by member *before* anything is extracted: absolute paths,
  ``..`` components, links and device files are refused (:class:`IntegrityError` naming the
  member). Extraction goes to a temporary folder that is renamed into place when complete, so
  a killed extraction never leaves a tree that loads (the next fetch removes its leftovers).
* Pins: the official archives' sha256 values cannot be computed on a machine without
  internet, so robench ships none it has not measured. ``robench data fetch`` then needs the
  expected ``--sha256`` from the user, or ``--trust-on-first-use``, which records the hash it
  saw in ``$ROBENCH_HOME/pins.json`` and enforces it on every later fetch.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from robench.core.errors import DataError, IntegrityError, RobenchError
from robench.core.home import robench_home
from robench.core.progress import progress_bar


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


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (before it is renamed into place)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (fcntl), removed again on release. A waiter that
    wakes up on a lock file already removed by its holder retries on the new one, so two
    processes never hold the lock at the same time. A killed holder's lock is released by the OS."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _digest_ok(actual: str, sha256: str | None, sha256_prefix: str | None) -> bool:
    return (sha256 is None or actual == sha256) and (sha256_prefix is None or actual.startswith(sha256_prefix))


def _open_url(url: str, have: int, timeout: float):
    headers = {"User-Agent": "robench", **({"Range": f"bytes={have}-"} if have else {})}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _http_fail(url: str, exc: Exception) -> RobenchError:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        return RobenchError(f"download failed: {url}: HTTP {exc.code} {exc.reason}")
    return RobenchError(f"download failed: {url}: {exc}")


def _range_start(resp) -> int | None:
    """Start offset of a 206 response's ``Content-Range: bytes START-END/TOTAL``."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0]) if value.startswith("bytes ") else None
    except (IndexError, ValueError):
        return None


def _transfer(url: str, part: Path, name: str, progress: bool, timeout: float, chunk: int) -> bool:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server cannot resume).
    Returns whether bytes of an earlier attempt were kept (a resume)."""
    have = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open_url(url, have, timeout)
    except urllib.error.HTTPError as exc:
        if not have:
            raise _http_fail(url, exc) from None
        if exc.code == 416 and (exc.headers or {}).get("Content-Range", "") == f"bytes */{have}":
            exc.close()
            return True  # the .part already holds every byte (killed before the rename): verify it as is
        # 416 otherwise: the .part is junk; other errors: a server or mirror that fails on ranges.
        # Either way start over; the .part is only rewritten once a response arrives.
        exc.close()
        have = 0
        try:
            resp = _open_url(url, 0, timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc2:
            raise _http_fail(url, exc2) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _http_fail(url, exc) from None
    with resp:
        status = getattr(resp, "status", 200)
        if have and (status != 206 or _range_start(resp) != have):  # range ignored or misplaced: start again
            if status == 206:
                resp.close()
                try:
                    resp = _open_url(url, 0, timeout)
                except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                    raise _http_fail(url, exc) from None
            have = 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + have) if length is not None and length.isdigit() else None
        got = have
        # read1: whatever has arrived (read(n) blocks for all n bytes), so the .part keeps up with the wire
        read = getattr(resp, "read1", resp.read)
        with progress_bar(progress) as bar, open(part, "ab" if have else "wb") as f:
            task = bar.add_task(f"downloading {name}", total=total, completed=have) if bar else None
            while True:
                try:
                    buf = read(chunk)
                except (OSError, http.client.HTTPException) as exc:  # connection dropped: keep .part for resume
                    f.flush()
                    raise RobenchError(
                        f"download interrupted: {url}: {type(exc).__name__}: {exc} "
                        f"({got} bytes kept in {part}; run again to resume)"
                    ) from None
                if not buf:
                    break
                f.write(buf)
                got += len(buf)
                if bar:
                    bar.update(task, completed=got)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and got != total:
        raise IntegrityError(
            f"truncated download: {url}: got {got} of {total} bytes (kept {part}; run again to resume)"
        )
    return have > 0


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk: int = 1 << 16,
    sha256_prefix: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify length and sha256.

    ``dest`` only ever appears complete and verified (full ``sha256`` and/or a published
    ``sha256_prefix``): the bytes go to ``dest.part``, are fsynced, checked, then renamed. A
    resumed download is verified as a whole like a fresh one; when that check fails, the old
    bytes may be the culprit (a different version of the file, a broken mirror), so it is
    downloaded once more from scratch before the mismatch is reported. Concurrent downloads of
    one ``dest`` are serialised by a lock file next to it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = sha256.lower() if sha256 else None
    sha256_prefix = sha256_prefix.lower() if sha256_prefix else None
    pinned = sha256 is not None or sha256_prefix is not None
    if pinned and dest.is_file() and _digest_ok(sha256_file(dest), sha256, sha256_prefix):
        return dest
    part = dest.with_name(dest.name + ".part")
    with file_lock(dest.with_name(f".{dest.name}.lock")):
        if pinned and dest.is_file() and _digest_ok(sha256_file(dest), sha256, sha256_prefix):
            return dest  # another process finished it while we waited
        for attempt in (0, 1):
            resumed = _transfer(url, part, dest.name, progress, timeout, chunk)
            actual = sha256_file(part)
            if _digest_ok(actual, sha256, sha256_prefix):
                break
            part.unlink()
            if resumed and attempt == 0:
                continue  # the kept bytes of an earlier attempt were bad: once more from scratch
            if sha256 is not None and actual != sha256:
                raise IntegrityError(f"sha256 mismatch for {url}: expected {sha256}, got {actual}; file deleted")
            raise IntegrityError(
                f"sha256 of {url} does not start with the published prefix {sha256_prefix} "
                f"(got {actual[:16]}…); file deleted"
            )
        os.replace(part, dest)
        fsync_dir(dest.parent)
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


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def clean_stale_temp(folder: Path, prefix: str) -> None:
    """Remove ``<prefix><name>-<pid>-<ns>`` temp folders of processes that no longer exist
    (a killed extraction or build); those of live processes are left alone."""
    for p in Path(folder).glob(prefix + "*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if process_gone(pid):
            shutil.rmtree(p, ignore_errors=True)


def clean_stale_tmp_files(folder: Path) -> None:
    """Remove ``<file>.<pid>.tmp`` files (atomic writes) left by killed processes."""
    for p in Path(folder).glob("*.*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if process_gone(pid):
            p.unlink(missing_ok=True)


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
            raise RobenchError(
                f"{archive}: RAR archives need an external tool; extract it with `unrar x` and pass --root"
            )
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
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:  # e.g. a bad CRC inside a member
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"corrupt archive {archive}: {exc}") from None
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
    fsync_file(tmp)
    os.replace(tmp, p)


def fetch_archive(
    archive: Archive,
    root: Path,
    sha256: str | None = None,
    trust_on_first_use: bool = False,
    url: str | None = None,
    progress: bool = True,
) -> Path:
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
    clean_stale_temp(root, ".extract-")
    try:
        out = safe_extract(path, dest)
    except RobenchError:
        if expected is None:  # unverified and unusable (e.g. cut short by a server without Content-Length)
            path.unlink(missing_ok=True)
        raise
    if expected is None:  # trust on first use: pin only a download that proved to be a sound archive
        record_pin(url, sha256_file(path))
    return out
