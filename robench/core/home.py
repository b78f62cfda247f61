"""Where robench keeps its cache: ``$ROBENCH_HOME`` (default ``~/.cache/robench``)."""

from __future__ import annotations

import os
from pathlib import Path


def robench_home() -> Path:
    home = os.environ.get("ROBENCH_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "robench"
    path.mkdir(parents=True, exist_ok=True)
    return path
