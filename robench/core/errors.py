"""User-facing errors.

Every error a user can cause by bad input (an unknown name, a missing file, a corrupt image,
a tampered archive) is a :class:`RobenchError`. The CLI prints its message to stderr and exits
with code 2; library callers can catch it. Anything else escaping is a bug.
"""

from __future__ import annotations


class RobenchError(Exception):
    """Bad input or environment: message names the offending file or value."""

    exit_code = 2


class UnknownNameError(RobenchError, KeyError):
    """A registry lookup failed; the message carries a did-you-mean suggestion."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(RobenchError):
    """A dataset file is missing, corrupt, or does not match its label file."""


class IntegrityError(RobenchError):
    """A checksum does not match, or an archive is unsafe to extract."""


class MissingWeightsError(RobenchError):
    """A target has no weights in the cache (none official offline, none trained here): the run
    trains them, anything else reports how to add them. Caught by type, never by message."""


class OutOfMemory(RobenchError):
    """A batch ran out of accelerator memory even at batch size 1 (the harness halves the batch
    of an out-of-memory error down to 1 first): the cell fails with this message."""
