"""``robench report``, ``check`` and ``plot …``: they read a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from robench.cli.app import app, emit_json, err, out_console, plot_app, user_errors
from robench.core import flags as FL
from robench.core.errors import RobenchError


@app.command("report")
@user_errors
def report_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    out: Path = typer.Option(
        Path("reports/latest"),
        help="Output folder: new, empty, or a previous report (replaced "
        "as a whole); a folder holding other files is refused.",
    ),
    eps: Optional[float] = typer.Option(
        None, help="ε (/255) of the single-budget tables (default 8 if stored, else the largest)."
    ),
    ot: str = typer.Option("neural", help="IR-Score OT map: neural (Korotin et al. 2023) | exact (quantile map)."),
    n_boot: int = typer.Option(1000, "--resamples", help="Bootstrap resamples."),
    bootstrap: str = typer.Option(
        "auto",
        "--bootstrap",
        help="Resampling unit: photo (source photos with all their items; "
        "needs ≥ 10 photos, else exit 2) | item | auto (photo when ≥ 10, else item, labelled).",
    ),
    correction: str = typer.Option(
        "holm",
        help="Multiplicity correction across the report's comparisons: holm "
        "(family-wise) | bh (Benjamini–Hochberg, false-discovery rate).",
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap and the neural OT."),
    cluster: bool = typer.Option(True, "--cluster/--no-cluster", help="--no-cluster: the same as --bootstrap item."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Compile report.tex when pdflatex is installed."),
    bench: Optional[Path] = typer.Option(None, help="`robench bench speed --json` output: draws accuracy vs speed."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Tables (.tex booktabs + .md) and plots from a store alone: robustness (Table 3), 2AFC (Table 7),
    purification (Table 9), ε sweep, paired-bootstrap significance."""
    from robench.results.report import write_report
    from robench.engine.grid import default_store

    if n_boot < 10:
        raise RobenchError(f"--resamples must be at least 10, got {n_boot}")
    with _status(f"writing the report of {store or default_store()}"):
        res = write_report(
            store or default_store(),
            out,
            eps=eps,
            ot=ot,
            n_boot=n_boot,
            seed=seed,
            cluster=cluster,
            bootstrap=bootstrap,
            correction=correction,
            plots=plots,
            pdf=pdf,
            bench=bench,
        )
    if as_json:
        emit_json(res)
        return
    err.print(
        f"wrote {len(res['tables'])} tables ({', '.join(res['tables'])}) and {len(res['plots'])} plot files to "
        f"{res['out']}"
        + (f"; skipped (no cells): {', '.join(res['skipped'])}" if res["skipped"] else "")
        + (f"; PDF {res['pdf']}" if res.get("pdf") else "; no pdflatex: report.tex not compiled" if pdf else "")
    )


def _status(message: str):
    import contextlib

    return err.status(message) if err.is_terminal else contextlib.nullcontext()


@app.command("check")
@user_errors
def check_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    baseline: Path = typer.Option(Path("reports/baseline.json"), help="Baseline JSON."),
    tolerance: float = typer.Option(0.02, help="Allowed drop of SROCC / 2AFC accuracy before a cell can fail."),
    n_boot: int = typer.Option(
        1000,
        "--resamples",
        "--bootstrap",
        help="Bootstrap resamples for the significance of a drop (--bootstrap: the old name).",
    ),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline from the store instead of checking."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Baseline cells absent from the store pass (checking a subset)."
    ),
    fail_on_flag: str = typer.Option(
        "",
        "--fail-on-flag",
        help="Comma list of cell flag codes that fail the gate "
        f"({', '.join(FL.LEGEND)}); every flagged cell is listed either way.",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """CI gate: fail (exit 1) when a cell's attacked or clean metric drops by more than the tolerance
    and, with per-image rows, significantly (paired bootstrap), or a baseline cell failed or is missing.
    New cells are reported, not failed."""
    from robench.results.checks import check, make_baseline, write_baseline
    from robench.engine.grid import default_store

    store = store or default_store()
    if update:
        b = make_baseline(store)
        write_baseline(b, baseline)
        if as_json:
            emit_json({"baseline": str(baseline), "cells": len(b["cells"]), "updated": True})
        else:
            err.print(f"wrote {baseline}: {len(b['cells'])} cells from {store}")
        return
    fail_on = tuple(f.strip() for f in fail_on_flag.split(",") if f.strip())
    res = check(store, baseline, tolerance=tolerance, n_boot=n_boot, allow_missing=allow_missing, fail_on=fail_on)
    if as_json:
        emit_json(res)
    else:
        table = Table(title=f"robench check: {store} vs {baseline} (tolerance {tolerance})")
        for c in ("cell", "point", "baseline", "current", "Δ", "flags", "status"):
            table.add_column(c, overflow="fold")
        order = {"fail": 0, "drop-not-significant": 1, "new": 2, "missing": 3, "ok": 4}
        for r in sorted(res["rows"], key=lambda r: order[r["status"]]):
            colour = {"fail": "red", "drop-not-significant": "yellow", "new": "cyan", "missing": "cyan"}.get(
                r["status"]
            )
            num = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
            status = escape(r["status"] + (f": {r['reason']}" if r.get("reason") else ""))
            table.add_row(
                r["cell"],
                r["point"],
                num(r.get("baseline")),
                num(r.get("current")),
                "—" if r.get("delta") is None else f"{r['delta']:+.3f}",
                ",".join(r.get("flags") or []) or "—",
                f"[{colour}]{status}[/]" if colour else status,
            )
        con = out_console()
        con.print(table)
        if res["flagged"]:
            con.print(
                f"[yellow]{len(res['flagged'])} flagged cell(s)[/]: "
                + escape("; ".join(f"[{k}] {v}" for k, v in res["flag_legend"].items()))
            )
        c = res["counts"]
        con.print(
            ("[bold green]PASSED[/]" if res["passed"] else "[bold red]FAILED[/]")
            + f" — {c['ok']} ok, {c['fail']} failed, {c['drop-not-significant']} drops not significant, "
            f"{c['new']} new, {c['missing']} missing"
        )
    if not res["passed"]:
        raise typer.Exit(1)


@plot_app.command("bound")
@user_errors
def plot_bound_cmd(
    log: Path = typer.Option(..., help="An AAT run folder or its steps.json."),
    out: Path = typer.Option(Path("reports/latest/plots/bound"), help="Output stem (.pdf and .png are written)."),
    log_y: bool = typer.Option(False, "--log-y", help="Logarithmic y axes."),
) -> None:
    """Theorem 1: bound vs empirical max error per AAT step, and the anchored loss (raw + EMA-20)."""
    from robench.results.plots import plot_bound

    names = plot_bound(log, out, log_y=log_y)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


@plot_app.command("training")
@user_errors
def plot_training_cmd(
    log: Path = typer.Option(..., help="A recipe's run folder or its steps.json."),
    out: Path = typer.Option(Path("reports/latest/plots/training"), help="Output stem (.pdf and .png are written)."),
) -> None:
    """A fine-tune's curves: training loss, the held-out objective the stopping rule watches, the clean scale."""
    from robench.results.plots import plot_training

    names = plot_training(log, out)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


@plot_app.command("sweep")
@user_errors
def plot_sweep_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store."),
    out: Path = typer.Option(Path("reports/latest/plots/sweep"), help="Output stem."),
    n_boot: int = typer.Option(
        1000, "--resamples", "--bootstrap", help="Bootstrap resamples (--bootstrap: the old name)."
    ),
    seed: int = typer.Option(0),
) -> None:
    """Metric vs ε: one panel per target (× attack), one line per defence (≤ 6 a panel), bootstrap bands."""
    from robench.results.plots import plot_sweep
    from robench.results.analysis import Analysis
    from robench.results.cells import load_cells
    from robench.engine.grid import default_store

    cells, weights = load_cells(store or default_store())
    rep = Analysis(cells, weights, n_boot=n_boot, seed=seed)
    names = []
    for kind in ("pairs", "2afc"):
        names += plot_sweep(rep, out.with_name(f"{out.name}-{kind}"), kind)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


@plot_app.command("speed")
@user_errors
def plot_speed_cmd(
    bench: Path = typer.Option(..., help="`robench bench speed --json` output."),
    store: Optional[Path] = typer.Option(None, help="SQLite store holding the models' clean SROCC."),
    out: Path = typer.Option(Path("reports/latest/plots/speed"), help="Output stem."),
) -> None:
    """Accuracy (clean SROCC from the store) vs images/s, marker area ∝ parameters (paper Fig. 3)."""
    from robench.results.plots import clean_accuracy, plot_speed
    from robench.results.cells import load_cells
    from robench.engine.grid import default_store

    cells, _ = load_cells(store or default_store())
    names = plot_speed(bench, clean_accuracy(cells), out)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


@app.command("export")
@user_errors
def export_cmd(
    format_: str = typer.Option(
        "records",
        "--format",
        help="records: one JSON record per target × defence (model "
        "card: weights and provenance, clean and robust metrics per attack, ε and protocol "
        "with intervals, flags, version and commit), valid against the shipped JSON Schema.",
    ),
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    out: Path = typer.Option(Path("reports/records"), help="Output folder (new, empty, or earlier records)."),
    n_boot: int = typer.Option(1000, "--resamples", help="Bootstrap resamples of each interval."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the store as standard JSON records; robench check --baseline FOLDER accepts them."""
    from robench.engine.grid import default_store
    from robench.results.records import write_records

    if format_ != "records":
        raise RobenchError(f"--format must be records, got {format_!r}")
    names = write_records(store or default_store(), out, n_boot=n_boot, seed=seed)
    if as_json:
        emit_json({"records": names, "schema": "robench/results/record.schema.json"})
    else:
        err.print(f"wrote {len(names)} records to {out} (schema: robench/results/record.schema.json)")
