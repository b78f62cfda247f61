"""Progress bars: rich, on stderr (stdout is reserved for ``--json`` output)."""

from __future__ import annotations


class progress_bar:
    """``with progress_bar(enabled) as bar:`` gives a rich ``Progress`` or ``None``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True))
        self.bar.__enter__()
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
