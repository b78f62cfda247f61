"""The ``robench`` command line (typer).

Conventions: progress and logs go to stderr (rich); ``--json`` output is the only thing on
stdout; bad input (unknown names, missing or corrupt files) prints one clear ``error:`` line
and exits with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from robench.errors import RobenchError

app = typer.Typer(
    name="robench",
    help="Adversarial-robustness benchmark for full-reference image-quality metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: build the built-in set, inspect, fetch and verify real ones.", no_args_is_help=True)
app.add_typer(data_app, name="data")

err = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RobenchError into `error: ...` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobenchError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        from robench import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


# ------------------------------------------------------------------------------------------
# ls


@app.command("ls")
@user_errors
def ls(
    kind: str = typer.Argument(..., help="models | attacks | defenses | datasets"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout."),
) -> None:
    """List what is registered."""
    from robench.registry import REGISTRIES

    if kind not in REGISTRIES:
        import difflib

        close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise RobenchError(f"unknown registry {kind!r};{hint} (choose from {', '.join(REGISTRIES)})")
    rows = REGISTRIES[kind].info()
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"robench {kind}")
    cols = ["name", "summary"] + sorted({k for r in rows for k in r} - {"name", "summary", "origin"})
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    Console().print(table)


# ------------------------------------------------------------------------------------------
# data


def _dataset_options(root: Optional[Path], size: Optional[int], seed: Optional[int]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if root is not None:
        opts["root"] = root
    if size is not None:
        opts["size"] = size
    if seed is not None:
        opts["seed"] = seed
    return opts


def _open_dataset(name: str, split: str, opts: dict[str, Any]):
    from robench.registry import DATASETS

    cls = DATASETS.get(name)
    try:
        return cls(split=split, **opts)
    except TypeError as exc:
        raise RobenchError(f"dataset {name!r} does not accept {', '.join(opts)}: {exc}") from None


@data_app.command("build")
@user_errors
def data_build(
    name: str = typer.Argument("mini", help="Only the built-in set is built: mini."),
    size: int = typer.Option(128, help="Reference crop size in pixels (quick profile: 128)."),
    seed: int = typer.Option(0, help="Seed for distortion randomness and splits."),
    crops: int = typer.Option(4, help="Crops per source image."),
    workers: Optional[int] = typer.Option(None, help="Processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if cached."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build the built-in offline dataset into $ROBENCH_HOME (atomic; cached)."""
    if name not in ("mini", "mini-2afc"):
        from robench.registry import DATASETS

        DATASETS.entry(name)  # unknown names get did-you-mean
        raise RobenchError(f"{name!r} is a real dataset: use `robench data fetch {name}` or pass --root to loaders")
    from robench.data.mini import build_mini

    t0 = time.perf_counter()
    path = build_mini(size=size, seed=seed, crops_per_source=crops, workers=workers, force=force)
    meta = json.loads((path / "meta.json").read_text())
    out = {"name": "mini", "path": str(path), "n_pairs": meta["n_pairs"], "build_seconds": meta["build_seconds"],
           "elapsed_seconds": round(time.perf_counter() - t0, 2)}
    if as_json:
        emit_json(out)
    else:
        err.print(f"mini: {out['n_pairs']} pairs at {path} (built in {meta['build_seconds']} s)")


@data_app.command("info")
@user_errors
def data_info(
    name: str = typer.Argument(..., help="Dataset name (robench ls datasets)."),
    root: Optional[Path] = typer.Option(None, help="Folder with the official layout (real datasets)."),
    split: str = typer.Option("all", help="train | val | test | all"),
    size: Optional[int] = typer.Option(None, help="mini only: image size."),
    seed: Optional[int] = typer.Option(None, help="Split seed."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts of pairs, references, sources, distortions, levels and per-split sizes."""
    ds = _open_dataset(name, split, _dataset_options(root, size, seed))
    info = ds.info()
    if as_json:
        emit_json(info)
        return
    table = Table(title=f"{name} ({split})", show_header=False)
    for k, v in info.items():
        table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    Console().print(table)


@data_app.command("verify")
@user_errors
def data_verify(
    name: str = typer.Argument(...),
    root: Optional[Path] = typer.Option(None),
    split: str = typer.Option("all"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Decode every image of a dataset split; the first bad file is named (exit 2)."""
    from robench.progress import progress_bar

    ds = _open_dataset(name, split, _dataset_options(root, None, None))
    with progress_bar(True) as bar:
        task = bar.add_task(f"verifying {name}", total=len(ds))
        for i in range(len(ds)):
            ds[i]
            bar.advance(task)
    out = {"name": name, "split": split, "verified": len(ds)}
    emit_json(out) if as_json else err.print(f"{name}: {len(ds)} items decode cleanly")


@data_app.command("fetch")
@user_errors
def data_fetch(
    name: str = typer.Argument(...),
    root: Path = typer.Option(..., help="Where to download and extract."),
    sha256: Optional[str] = typer.Option(None, help="Expected sha256 of the archive."),
    trust_on_first_use: bool = typer.Option(False, "--trust-on-first-use",
                                            help="No pin known: record this download's sha256 and enforce it later."),
    url: Optional[str] = typer.Option(None, help="Override the archive URL (a mirror)."),
    archive: Optional[str] = typer.Option(None, help="Fetch only this archive file of the dataset."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Download a dataset's public archive(s), verify sha256, extract safely."""
    from robench.data.fetch import fetch_archive
    from robench.registry import DATASETS

    cls = DATASETS.get(name)
    archives = list(getattr(cls, "archives", ()))
    if not archives:
        raise RobenchError(f"{name!r} has no public archive robench can fetch; obtain it from its authors and pass --root")
    if archive is not None:
        archives = [a for a in archives if a.filename == archive]
        if not archives:
            raise RobenchError(f"{name!r} has no archive {archive!r} (has: {', '.join(a.filename for a in cls.archives)})")
    if (url or sha256) and len(archives) > 1:
        raise RobenchError(f"{name!r} has {len(archives)} archives: pick one with --archive to use --url/--sha256")
    paths = [str(fetch_archive(a, root, sha256=sha256, trust_on_first_use=trust_on_first_use, url=url)) for a in archives]
    out = {"name": name, "root": str(root), "extracted": paths}
    emit_json(out) if as_json else err.print(f"{name}: extracted to {', '.join(paths)}; load with root={root}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
