"""``robench data …`` and ``robench weights …``: datasets and the weights cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from robench.cli.app import data_app, emit_json, err, out_console, user_errors, weights_app
from robench.core.errors import RobenchError


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
    from robench.core.registry import DATASETS

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
    crops: Optional[int] = typer.Option(None, help="Crops per source photo (default: the build's, 2)."),
    workers: Optional[int] = typer.Option(None, help="Processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if cached."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build the built-in offline dataset into $ROBENCH_HOME (atomic; cached)."""
    if name not in ("mini", "mini-2afc"):
        from robench.core.registry import DATASETS

        DATASETS.entry(name)  # unknown names get did-you-mean
        raise RobenchError(f"{name!r} is a real dataset: use `robench data fetch {name}` or pass --root to loaders")
    from robench.data.mini import DEFAULT_CROPS, build_mini

    t0 = time.perf_counter()
    path = build_mini(
        size=size, seed=seed, crops_per_source=DEFAULT_CROPS if crops is None else crops, workers=workers, force=force
    )
    meta = json.loads((path / "meta.json").read_text())
    out = {
        "name": "mini",
        "path": str(path),
        "n_pairs": meta["n_pairs"],
        "build_seconds": meta["build_seconds"],
        "elapsed_seconds": round(time.perf_counter() - t0, 2),
    }
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
        if k == "sources_per_split" and isinstance(v, dict):  # the source photos of each split, one row each
            for s, d in v.items():
                table.add_row(f"sources {s} ({d['n_sources']})", ", ".join(d["sources"]))
            continue
        table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    out_console().print(table)


@data_app.command("verify")
@user_errors
def data_verify(
    name: str = typer.Argument(...),
    root: Optional[Path] = typer.Option(None),
    split: str = typer.Option("all"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Decode every image of a dataset split; the first bad file is named (exit 2)."""
    from robench.core.progress import progress_bar

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
    trust_on_first_use: bool = typer.Option(
        False, "--trust-on-first-use", help="No pin known: record this download's sha256 and enforce it later."
    ),
    url: Optional[str] = typer.Option(None, help="Override the archive URL (a mirror)."),
    archive: Optional[str] = typer.Option(None, help="Fetch only this archive file of the dataset."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Download a dataset's public archive(s), verify sha256, extract safely."""
    from robench.core.fetch import fetch_archive
    from robench.core.registry import DATASETS

    cls = DATASETS.get(name)
    archives = list(getattr(cls, "archives", ()))
    if not archives:
        raise RobenchError(
            f"{name!r} has no public archive robench can fetch; obtain it from its authors and pass --root"
        )
    if archive is not None:
        archives = [a for a in archives if a.filename == archive]
        if not archives:
            raise RobenchError(
                f"{name!r} has no archive {archive!r} (has: {', '.join(a.filename for a in cls.archives)})"
            )
    if (url or sha256) and len(archives) > 1:
        raise RobenchError(f"{name!r} has {len(archives)} archives: pick one with --archive to use --url/--sha256")
    paths = [
        str(fetch_archive(a, root, sha256=sha256, trust_on_first_use=trust_on_first_use, url=url)) for a in archives
    ]
    out = {"name": name, "root": str(root), "extracted": paths}
    emit_json(out) if as_json else err.print(f"{name}: extracted to {', '.join(paths)}; load with root={root}")


@weights_app.command("ls")
@user_errors
def weights_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Cached weight files with their sha256 and provenance."""
    from robench.core import weights as W

    own = W.read_index()
    rows = [{"name": k, **v} for k, v in sorted(own.items())]
    # the package's shipped files, marked when this machine's own weights take their place
    rows += [
        {"name": k, **{x: y for x, y in v.items() if x != "path"}, "file": v["path"], "in_use": k not in own}
        for k, v in sorted(W.shipped().items())
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="robench weights")
    for c in ("name", "source", "sha256", "file"):
        table.add_column(c, overflow="fold")
    for r in rows:
        src = r["source"] + ("" if r.get("in_use", True) else " (not used: this machine's own comes first)")
        table.add_row(r["name"], src, r["sha256"][:16], r["file"])
    out_console().print(table)


@weights_app.command("import")
@user_errors
def weights_import(
    path: Path = typer.Argument(..., help="A .pth/.pt (weights_only) or .safetensors file."),
    model: str = typer.Option(..., help="Target name it belongs to (e.g. lpips.alex, topiq.fr, birqa)."),
    role: Optional[str] = typer.Option(None, help="full | lin | trunk (LPIPS files); detected by default."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check that a file loads into the model (strict) and add it to the cache."""
    from robench.engine import hub as H

    entry = H.import_weights(path, model, role)
    emit_json(entry) if as_json else err.print(f"imported {path} as {entry['name']} (sha256 {entry['sha256'][:16]}…)")


@weights_app.command("verify")
@user_errors
def weights_verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Recompute every cached file's sha256; exit 1 if any is missing or changed."""
    from robench.core import weights as W

    rows = W.verify_all()
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            err.print(f"{r['status']:>16}  {r['name']}  {r['file']}")
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(1)


@weights_app.command("fetch")
@user_errors
def weights_fetch(
    model: str = typer.Argument(...),
    url: Optional[str] = typer.Option(None, help="Mirror URL (single-file cards)."),
    sha256: Optional[str] = typer.Option(None, help="Expected full sha256 (overrides the published prefix)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Download a target's official weights (URLs in its card), verify, import."""
    from robench.engine import hub as H

    entries = H.fetch_official(model, url=url, sha256=sha256)
    emit_json(entries) if as_json else err.print("; ".join(f"{e['name']} ({e['sha256'][:16]}…)" for e in entries))
