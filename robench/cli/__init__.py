"""The ``robench`` command line (typer), one module per command group: run.py (run, train,
eval), results.py (report, check, plot), data.py (data, weights), tools.py (ls, validate, bench).

Conventions: progress and logs go to stderr (rich); ``--json`` output is the only thing on
stdout; bad input (unknown names, missing or corrupt files) prints one clear ``error:`` line
and exits with code 2.
"""

from __future__ import annotations

from robench.cli import analyses, data, results, run, tools  # noqa: F401  (each registers its commands)
from robench.cli.app import app, emit_json, err, user_errors  # noqa: F401


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
