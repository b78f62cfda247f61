"""What reproduces a result besides its config: the code's git commit and the library versions."""

from __future__ import annotations

from pathlib import Path

import torch


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, else the one a wheel was built from
    (``robench/BUILD_COMMIT``, written by ``make dist``), else None. Only the package's own
    checkout counts: an installed wheel inside some other git repository must not report it."""
    import subprocess

    pkg = Path(__file__).resolve().parents[1]
    if (pkg.parent / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=pkg.parent
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    stamp = pkg / "BUILD_COMMIT"
    return stamp.read_text().strip() or None if stamp.is_file() else None


def versions() -> dict[str, str]:
    import platform

    import numpy
    import scipy

    from robench.core.version import __version__

    out = {
        "robench": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
    from importlib.metadata import PackageNotFoundError, version

    try:  # the optional metric library whose code a pyiqa target runs
        out["pyiqa"] = version("pyiqa")
    except PackageNotFoundError:
        pass
    return out
