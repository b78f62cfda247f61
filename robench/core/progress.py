"""Progress bars: rich, on stderr (stdout is reserved for ``--json`` output)."""

from __future__ import annotations


class progress_bar:
    """``with progress_bar(enabled) as bar:`` gives a rich ``Progress`` or ``None``.

    Nested use (a FACPA generator trained inside a ``robench run``) reuses the live bar and adds
    a task to it: rich allows one live display at a time."""

    _active = None

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        if progress_bar._active is not None:
            return progress_bar._active
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.bar.__enter__()
        progress_bar._active = self.bar
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            progress_bar._active = None
            self.bar.__exit__(*exc)
        return False
