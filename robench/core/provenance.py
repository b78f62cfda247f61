"""What reproduces a result besides its config: the code's git commit and the library versions."""

from __future__ import annotations

from pathlib import Path

import torch


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import platform

    import numpy
    import scipy

    from robench.core.version import __version__

    return {"robench": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}
