"""The ``robench`` app, its command groups and the conventions every command shares.

Conventions: progress and logs go to stderr (rich); ``--json`` output is the only thing on
stdout; bad input (unknown names, missing or corrupt files) prints one clear ``error:`` line
and exits with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from robench.core.errors import RobenchError

app = typer.Typer(
    name="robench",
    help="Adversarial-robustness benchmark for full-reference image-quality metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help printed as written: rich markup would eat bracketed text ("robench[ray]", "[esc]") and
    # keep the docstrings' line breaks mid-sentence; click's formatter rewraps whole paragraphs
    rich_markup_mode=None,
)
data_app = typer.Typer(
    rich_markup_mode=None,
    help="Datasets: build the built-in set, inspect, fetch and verify real ones.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
weights_app = typer.Typer(
    rich_markup_mode=None, help="Weights cache: list, import, verify, fetch official files.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")
bench_app = typer.Typer(
    rich_markup_mode=None, help="Benchmarks measured side by side (speed, attack step).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
plot_app = typer.Typer(
    rich_markup_mode=None, help="Plots on their own (robench report draws them all).", no_args_is_help=True
)
app.add_typer(plot_app, name="plot")

# literal by default: messages name files, flags ([nc]) and extras (robench[ray]); the few
# styled lines pass markup=True with their user text escaped
err = Console(stderr=True, markup=False)


def out_console() -> Console:
    """The console of a command's tables on stdout. Written to a file or a pipe (a log, `make run
    > log`), rich assumes 80 columns and cut the flags column of the run summary off; there it
    gets 160. A terminal keeps its width, and ``COLUMNS`` wins either way."""
    import os
    import sys

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


#: the help of every ``--device`` (resolved and checked by robench.core.device.resolve_device)
DEVICE_HELP = (
    "Where to compute: auto (CUDA when torch.cuda.is_available(), else CPU) | cpu | cuda | cuda:N. "
    "Recorded with the results (device, GPU name); never part of a cell's key."
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RobenchError into `error: ...` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobenchError as exc:
            # the message literally: rich markup would eat bracketed text such as robench[ray] or [nc]
            err.print("[bold red]error:[/] " + escape(str(exc)), highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _print_version(value: bool) -> None:
    if value:
        from robench.core.provenance import git_commit
        from robench.core.version import __version__

        commit = git_commit()
        typer.echo(f"robench {__version__}" + (f" (commit {commit})" if commit else " (commit unknown)"))
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print the version (and commit) and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    from robench.core.device import tune_cpu_allocator

    tune_cpu_allocator()  # every command: large tensors reuse memory instead of page-faulting it in
