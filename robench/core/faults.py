"""Fault injection for the crash tests (README "Reliability"): ``ROBENCH_FAULT=<point>`` sends
SIGKILL to this process when it reaches ``<point>``, so a test can kill it at an exact place
(between two writes) as well as at random moments from outside."""

from __future__ import annotations

import os
import signal


def armed(point: str) -> bool:
    return os.environ.get("ROBENCH_FAULT") == point


def fault(point: str) -> None:
    if armed(point):
        os.kill(os.getpid(), signal.SIGKILL)
