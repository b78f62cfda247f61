"""``robench report``: every output of a store, rendered from its results model.

Nothing is recomputed: :class:`~robench.results.model.ResultsModel` reads the store once and
computes every number; this module writes its tables (.tex, .md), the standalone ``report.tex``
(and PDF when pdflatex exists), paper.md, the plots, report.json and index.html into a temporary
folder that replaces the report folder as a whole.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from robench.core.errors import RobenchError
from robench.results.model import ReportOptions, ResultsModel
from robench.results.render import STANDALONE, compile_pdf, to_latex, to_markdown


def write_report(
    store: str | Path,
    out: str | Path,
    *,
    eps: float | None = None,
    ot: str = "neural",
    n_boot: int = 1000,
    seed: int = 0,
    cluster: bool = True,
    plots: bool = True,
    pdf: bool = True,
    bench: str | Path | None = None,
    ot_options: dict | None = None,
    progress: bool = False,
    bootstrap: str = "auto",
    correction: str = "holm",
) -> dict[str, Any]:
    """Every table (.tex, .md), the standalone ``report.tex`` (and PDF when pdflatex exists), the
    plots, and ``report.json`` with all numbers, under ``out``. Written to a temporary folder and
    moved into place, so a failure leaves no half report."""
    out = Path(out)
    check_report_folder(out)  # before any work: a folder of someone else's files is refused
    opts = ReportOptions(
        eps=eps,
        ot=ot,
        n_boot=n_boot,
        seed=seed,
        cluster=cluster,
        ot_options=ot_options,
        bootstrap=bootstrap,
        correction=correction,
    )
    model = ResultsModel.load(store, opts)
    model.primary  # noqa: B018  (refuses an empty store before any folder is made)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a private temporary folder beside the target: concurrent reports cannot delete each other's
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would become the report's permissions
    try:
        written = _write(model, out, tmp, plots, pdf, bench)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({"robench_report": 1, "files": files}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # swap: the old report moves aside, the new one in, then the old one goes (a kill in between
    # leaves a complete report under one of the two names, never half of one)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / "report")
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return written


#: written into every report folder: the files robench wrote there (what a rerun may replace)
MANIFEST = ".robench-report.json"
#: what a report folder written before the manifest holds (a rerun may replace such a folder)
_REPORT_SUFFIXES = {".md", ".tex", ".json", ".pdf", ".png", ".aux", ".log", ".out", ".html"}


def check_report_folder(out: Path) -> None:
    """``robench report --out`` replaces its folder as a whole, so it never touches a folder holding
    anything robench did not write there: a missing or empty folder is fine; so is a previous
    report whose manifest lists every file in it (or, written before the manifest, whose
    report.json is robench's and whose files are all report files). Anything else is refused,
    naming a foreign file."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RobenchError(f"--out {out} is a file, not a folder")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink())
    if not files and not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    listed: set[str] | None = None
    if manifest.is_file():
        try:
            listed = set(json.loads(manifest.read_text())["files"]) | {MANIFEST}
        except (json.JSONDecodeError, KeyError, TypeError):
            listed = None
    else:  # a report written before the manifest: robench's report.json and report files only
        try:
            legacy = {"tables", "cells"} <= set(json.loads((out / "report.json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            legacy = False
        if legacy:
            listed = {f for f in files if Path(f).suffix in _REPORT_SUFFIXES}
    foreign = [f for f in files if listed is None or f not in listed]
    if foreign:
        raise RobenchError(
            f"--out {out} holds files robench did not write (e.g. {foreign[0]!r}); a report replaces its "
            "folder as a whole, so give a new or empty folder, or a previous report's"
        )


def aat_bounds_markdown(bounds: list[dict[str, Any]]) -> str:
    if not bounds:
        return ""
    lines = [
        "### Theorem 1 during AAT training",
        "",
        "A batch is *vacuous* when its bound δ + Δ + η·R is at least its MOS range R: such a bound allows errors "
        "as large as the labels' whole spread and holds regardless of training, so it is not evidence. "
        "Only the non-vacuous batches support the bound.",
        "",
    ]
    for b in bounds:
        lines.append(
            f"- `{b['weights']}` ({b['sha256'][:12]}): bound held on {b['held']}/{b['n_batches']} batches; "
            f"non-vacuous on {b['non_vacuous']}/{b['n_batches']} "
            f"({100 * b['non_vacuous_fraction']:.0f} %), held there on {b['held_non_vacuous']}; "
            f"median bound/R {b['median_bound_rel']:.2f}"
        )
    return "\n".join(lines) + "\n"


def _write(model: ResultsModel, out: Path, tmp: Path, plots: bool, pdf: bool, bench) -> dict[str, Any]:
    """Render ``model`` into ``tmp`` (the report folder-to-be, named ``out`` once moved)."""
    from robench.results import plots as P
    from robench.results.html import write_index
    from robench.results.paper import write_paper

    tables, skipped = model.built
    reps, rep = model.analyses, model.primary
    written: dict[str, Any] = {
        "store": str(model.store),
        "out": str(out),
        "tables": [],
        "plots": [],
        "skipped": list(skipped),
        "protocols": {d: r.protocol for d, r in reps.items()},
    }
    for t in tables:
        (tmp / f"{t.name}.tex").write_text(to_latex(t))
        (tmp / f"{t.name}.md").write_text(to_markdown(t))
        written["tables"].append(t.name)
    (tmp / "report.tex").write_text(STANDALONE % "\n\\clearpage\n".join(f"\\input{{{t.name}.tex}}" for t in tables))
    bounds = model.bounds  # Theorem-1 evidence from the AAT training logs (the bound plots' source)
    (tmp / "report.md").write_text(
        f"# robench report\n\nStore: `{model.store}`\n\n"
        + "\n".join(to_markdown(t) for t in tables)
        + ("\n" + aat_bounds_markdown(bounds) if bounds else "")
    )
    (tmp / "report.json").write_text(json.dumps(model.document, indent=1))
    # the paper's Tables 3, 7, 9 beside robench's measurements, with the claims table
    written["paper"] = write_paper(rep, tmp, ranking=reps.get("mos-split"))
    figures = []
    if plots:
        from robench.results.transfer import plot_certified, plot_transfer

        # transfer and certificate figures first: their PNG bytes depend on what matplotlib drew before
        figures += plot_transfer(model.transfer, tmp / "plots") if model.transfer else []
        figures += plot_certified(model.certified, tmp / "plots")
        written["plots"] = P.draw_all(rep, tmp / "plots", bench=bench, rename_to=out / "plots")
        for d, r in reps.items():  # the ε figure of every other protocol, named by it
            if r is not rep:
                written["plots"] += [
                    str(out / "plots" / n) for n in P.plot_sweep(r, tmp / "plots" / f"sweep-pairs-{d}")
                ]
        # metric × ε at a glance: the ranking attack's when stored (the leaderboard's protocol)
        board = reps.get("mos-split") or rep
        written["plots"] += [str(out / "plots" / n) for n in P.plot_leaderboard(board, tmp / "plots" / "leaderboard")]
    written["plots"] += [str(out / "plots" / n) for n in figures]
    # index.html: the browsable, self-contained report over the same numbers
    write_index(tmp, model)
    written["html"] = str(out / "index.html")
    if pdf:
        try:
            pdf_path = compile_pdf(tmp / "report.tex")
        except subprocess.TimeoutExpired as exc:
            raise RobenchError(f"pdflatex timed out: {exc}") from None
        written["pdf"] = str(out / pdf_path.name) if pdf_path else None
    return written
