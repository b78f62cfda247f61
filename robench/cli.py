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
from rich.markup import escape
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
weights_app = typer.Typer(help="Weights cache: list, import, verify, fetch official files.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
bench_app = typer.Typer(help="Benchmarks measured side by side (speed, attack step).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
plot_app = typer.Typer(help="Plots on their own (robench report draws them all).", no_args_is_help=True)
app.add_typer(plot_app, name="plot")

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


# ------------------------------------------------------------------------------------------
# train / eval


def _parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RobenchError(f"{what} must look like key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _parse_nested(items: list[str] | None, flag: str, what: str) -> dict[str, dict[str, Any]]:
    """``["pgd.steps=20", "square.queries=100"]`` → ``{"pgd": {"steps": 20}, "square": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in _parse_kv(items, flag).items():
        if "." not in k:
            raise RobenchError(f"{flag} must look like {what}.param=value, got {k!r}")
        name, param = k.split(".", 1)
        out.setdefault(name, {})[param] = v
    return out


@app.command("train")
@user_errors
def train_cmd(
    model: str = typer.Option(..., help="Architecture to train: birqa, lpips.alex, lpips.vgg, topiq.fr."),
    dataset: str = typer.Option("mini", help="A pairs dataset (train split trains, val split selects)."),
    profile: str = typer.Option("quick", help="quick | paper"),
    epochs: Optional[int] = typer.Option(None, help="Override the profile's epochs."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default $ROBENCH_HOME/runs/train/...)."),
    seed: int = typer.Option(0),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    root: Optional[Path] = typer.Option(None, help="Dataset root (real datasets)."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="Architecture option key=value (e.g. width=0.5)."),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    defense: Optional[str] = typer.Option(None, help="Adversarial fine-tuning recipe r | at | aat (makes MODEL.<recipe>)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps of the recipe (default: the profile's)."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, help="Cap the steps of each clean-training epoch "
                                                      "(smoke tests, crash tests)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Clean training (eq. 5: MSE + λ(1 − PLCC)) or, with --defense, R-/AT-/AAT- fine-tuning; resumable."""
    from robench.train import train

    if defense == "diffpure":
        from robench.defenses.diffpure import train_diffpure

        r = train_diffpure(dataset=dataset, profile=profile, steps=steps, seed=seed,
                           dataset_options={**({"root": str(root)} if root else {}),
                                            **_parse_kv(dataset_option, "--dataset-option")})
        emit_json(r) if as_json else err.print(f"{r['name']}: {r['train_seconds']:.0f} s, final loss "
                                               f"{r['final_loss']:.4f}; weights {r['weights']}")
        return
    if defense:
        from robench.defenses.recipes import adversarial_train

        r = adversarial_train(model, defense, dataset=dataset, profile=profile, seed=seed, steps=steps, out=out,
                              dataset_options={**({"root": str(root)} if root else {}),
                                               **_parse_kv(dataset_option, "--dataset-option")})
        emit_json(r) if as_json else err.print(f"{r['name']}: {r['steps']} steps in {r['train_seconds']:.0f} s; "
                                               f"val SROCC {r['val_srocc']:.4f}; weights {r['weights']}")
        return

    r = train(model, dataset=dataset, profile=profile, epochs=epochs, out=out, seed=seed, lr=lr, batch_size=batch_size,
              dataset_options={**({"root": root} if root else {}), **_parse_kv(dataset_option, "--dataset-option")},
              model_options=_parse_kv(model_option, "--model-option"), max_steps_per_epoch=max_steps_per_epoch)
    res = {"name": r.name, "out": str(r.out), "weights": str(r.best_path), "sha256": r.sha256,
           "best_val_srocc": r.best_val_srocc, "best_epoch": r.best_epoch, "epochs": r.epochs,
           "train_seconds": round(r.train_seconds, 1)}
    emit_json(res) if as_json else err.print(f"{r.name}: best val SROCC {r.best_val_srocc:.4f} (epoch {r.best_epoch}), "
                                             f"{r.train_seconds:.0f} s; weights {r.best_path}")


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Option(...),
    dataset: str = typer.Option("mini"),
    split: str = typer.Option("test"),
    weights: Optional[str] = typer.Option(None, help="A weights file, or 'none' (default: best available)."),
    profile: str = typer.Option("quick", help="Sets the mini image size."),
    root: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0, help="Split seed."),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """SROCC / PLCC / KROCC of a target on a dataset split."""
    import robench
    from robench.profiles import get_profile
    from robench.train import evaluate

    target = robench.load_model(model, weights=weights)
    opts: dict[str, Any] = {"seed": seed}
    if dataset in ("mini", "mini-2afc"):
        opts["size"] = get_profile(profile).image_size
    if root is not None:
        opts["root"] = root
    opts.update(_parse_kv(dataset_option, "--dataset-option"))
    ds = robench.load_dataset(dataset, split=split, **opts)
    res = evaluate(target, ds, progress=not as_json)
    res.update({"model": model, "dataset": dataset, "split": split, "weights": target.card.weights.describe(),
                "weights_sha256": target.card.weights.sha256})
    emit_json(res) if as_json else err.print(
        f"{model} on {dataset}/{split}: SROCC {res['srocc']:.4f}  PLCC {res['plcc']:.4f}  KROCC {res['krocc']:.4f}  (n={res['n']})")


def _dataset_defaults(dataset: str, profile: str, root: Optional[Path], extra: list[str] | None) -> dict[str, Any]:
    from robench.profiles import get_profile

    opts: dict[str, Any] = {}
    if dataset in ("mini", "mini-2afc"):
        opts["size"] = get_profile(profile).image_size
    if root is not None:
        opts["root"] = str(root)
    opts.update(_parse_kv(extra, "--dataset-option"))
    return opts


@app.command("run")
@user_errors
def run_cmd(
    model: str = typer.Option(..., help="Target, e.g. birqa, lpips.alex, topiq.fr (arch.tag for a weights variant)."),
    attacks: str = typer.Option("all", help="'all' (the suite's eight: the paper's seven + PGD) or a comma-separated list (robench ls attacks)."),
    defense: Optional[str] = typer.Option(None, help="Defence (robench ls defenses); default none."),
    dataset: str = typer.Option("mini", help="Dataset (pairs: SROCC; 2afc: accuracy)."),
    split: str = typer.Option("test"),
    eps: Optional[str] = typer.Option(None, help="Budgets in /255 units, e.g. 2,4,6,8,10 (default: the profile's)."),
    profile: str = typer.Option("quick", help="quick | paper"),
    n: Optional[int] = typer.Option(None, help="Items (stratified by distortion); 0 = whole split; default: the profile's."),
    seed: int = typer.Option(0),
    weights: Optional[str] = typer.Option(None, help="A weights file, or 'none' (default: best available)."),
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    force: bool = typer.Option(False, "--force", help="Recompute cells already in the store."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cells already in the store (default)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root (real datasets)."),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    attack_option: Optional[list[str]] = typer.Option(None, "--attack-option",
                                                      help="attack.param=value, e.g. pgd.steps=20 (repeatable)."),
    defense_option: Optional[list[str]] = typer.Option(None, "--defense-option",
                                                       help="defence.param=value, e.g. jpeg.quality=50 (repeatable)."),
    executor: str = typer.Option("serial", help="serial (in process) | ray (cells as Ray tasks; pip install 'robench[ray]')."),
    address: Optional[str] = typer.Option(None, help="Ray cluster: auto | HOST:PORT (default: a local Ray)."),
    workers: Optional[int] = typer.Option(None, help="Local Ray: CPUs to start it with (default: all)."),
    cpus_per_cell: float = typer.Option(1.0, help="Ray: CPUs per cell (torch threads of its worker)."),
    gpus_per_cell: float = typer.Option(0.0, help="Ray: GPUs per cell (num_gpus; the cell runs on CUDA)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Attack targets across ε budgets; store every cell; print clean vs attacked SROCC (or 2AFC accuracy).
    --model and --defense take comma lists: the grid is every model × defence × attack."""
    from robench.runner import RunSpec, run_grid

    eps_list = None
    if eps:
        try:
            eps_list = [float(e) for e in eps.split(",") if e.strip()]
        except ValueError:
            raise RobenchError(f"--eps must be comma-separated numbers in /255 units, got {eps!r}") from None
    attack_params = _parse_nested(attack_option, "--attack-option", "attack")
    defense_params = _parse_nested(defense_option, "--defense-option", "defence")
    models = [m.strip() for m in model.split(",") if m.strip()]
    defenses = [d.strip() for d in defense.split(",") if d.strip()] if defense else [None]
    if weights is not None and len(models) > 1:
        raise RobenchError("--weights names one file: use it with a single --model")
    opts = _dataset_defaults(dataset, profile, root, dataset_option)
    specs = [RunSpec(model=m, attacks=attacks, dataset=dataset, eps=eps_list, profile=profile, n=n, seed=seed,
                     split=split, defense=None if d in (None, "none") else d, weights=weights, store=store,
                     force=force or not resume, dataset_options=dict(opts), attack_params=attack_params,
                     defense_options=defense_params) for m in models for d in defenses]
    ex_opts = {"address": address, "num_cpus": workers, "cpus_per_cell": cpus_per_cell,
               "gpus_per_cell": gpus_per_cell} if executor == "ray" else {}
    grid = run_grid(specs, progress=True, log=lambda m: err.print(f"[yellow]warning:[/] {m}"), executor=executor,
                    executor_options=ex_opts)
    if as_json:
        emit_json(grid["runs"][0] if len(specs) == 1 else grid)
    else:
        for report in grid["runs"]:
            print_summary(report)
    if any(c.get("status") == "failed" for r in grid["runs"] for c in r["cells"]):
        raise typer.Exit(1)


def print_summary(report: dict[str, Any]) -> None:
    out = Console()
    metric = "SROCC"
    table = Table(title=f"{report['target']} on {report['dataset']}/{report['split']} (n={report['n']}, "
                        f"profile {report['profile']}); store {report['store']}")
    for c in ("attack", "ε/255", "clean", "attacked", "mean gain", "queries", "status"):
        table.add_column(c, no_wrap=True)
    table.add_column("flags", overflow="fold", min_width=10)
    for c in report["cells"]:
        s = c.get("summary") or {}
        if not s:
            table.add_row(c["attack"], "—", "—", "—", "—", "—", c.get("status", "?"), c.get("error", "")[:60])
            continue
        if "clean_2afc" in s:
            metric, clean, att = "2AFC", s["clean_2afc"], s["attacked_2afc"]
        else:
            clean, att = s["clean_srocc"], s["attacked_srocc"]
        fl = c.get("flags") or {}
        bad = [k for k, v in fl.items() if (k in ("gain_monotone_in_eps", "moves_target", "iterative_ge_single_step")
                                            and v is False) or (k in ("eot_required", "suspect_gradient_masking") and v)
               or (k in ("zero_grad", "nan_grad") and v)]
        for k, e in enumerate(s["eps"]):
            table.add_row(c["attack"] if k == 0 else "", f"{e:g}", f"{clean:.3f}" if k == 0 else "", f"{att[k]:.3f}",
                          f"{s['mean_gain'][k]:+.4f}", f"{s['mean_queries'][k]:.0f}", c["status"] if k == 0 else "",
                          ", ".join(bad) if k == 0 else "")
    table.caption = (f"{metric} of oriented quality; {report['seconds']:.0f} s; harness overhead "
                     + (f"{100 * report['harness_overhead']:.1f} %" if report.get("harness_overhead") is not None else "—"))
    out.print(table)


# ------------------------------------------------------------------------------------------
# report, check, plot


@app.command("report")
@user_errors
def report_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    out: Path = typer.Option(Path("reports/latest"), help="Output folder (replaced as a whole)."),
    eps: Optional[float] = typer.Option(None, help="ε (/255) of the single-budget tables (default 8 if stored, else the largest)."),
    ot: str = typer.Option("neural", help="IR-Score OT map: neural (Korotin et al. 2023) | exact (quantile map)."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and the neural OT."),
    cluster: bool = typer.Option(True, "--cluster/--no-cluster", help="Resample by reference image where references repeat."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Compile report.tex when pdflatex is installed."),
    bench: Optional[Path] = typer.Option(None, help="`robench bench speed --json` output: draws accuracy vs speed."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Tables (.tex booktabs + .md) and plots from a store alone: robustness (Table 3), 2AFC (Table 7),
    purification (Table 9), ε sweep, paired-bootstrap significance."""
    from robench.report import write_report
    from robench.runner import default_store

    if n_boot < 10:
        raise RobenchError(f"--bootstrap must be at least 10, got {n_boot}")
    with _status(f"writing the report of {store or default_store()}"):
        res = write_report(store or default_store(), out, eps=eps, ot=ot, n_boot=n_boot, seed=seed, cluster=cluster,
                           plots=plots, pdf=pdf, bench=bench)
    if as_json:
        emit_json(res)
        return
    err.print(f"wrote {len(res['tables'])} tables ({', '.join(res['tables'])}) and {len(res['plots'])} plot files to "
              f"{res['out']}" + (f"; skipped (no cells): {', '.join(res['skipped'])}" if res["skipped"] else "")
              + (f"; PDF {res['pdf']}" if res.get("pdf") else "; no pdflatex: report.tex not compiled" if pdf else ""))


def _status(message: str):
    import contextlib

    return err.status(message) if err.is_terminal else contextlib.nullcontext()


@app.command("check")
@user_errors
def check_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    baseline: Path = typer.Option(Path("reports/baseline.json"), help="Baseline JSON."),
    tolerance: float = typer.Option(0.02, help="Allowed drop of SROCC / 2AFC accuracy before a cell can fail."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the significance of a drop."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline from the store instead of checking."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Baseline cells absent from the store pass (checking a subset)."),
    fail_on_flag: str = typer.Option("", "--fail-on-flag", help="Comma list of cell flag codes that fail the gate "
                                     "(nc, gm, eot, 0, mono, it, grad); every flagged cell is listed either way."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """CI gate: fail (exit 1) when a cell's attacked or clean metric drops by more than the tolerance
    and, with per-image rows, significantly (paired bootstrap), or a baseline cell failed or is missing.
    New cells are reported, not failed."""
    from robench.checks import check, make_baseline, write_baseline
    from robench.runner import default_store

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
            colour = {"fail": "red", "drop-not-significant": "yellow", "new": "cyan", "missing": "cyan"}.get(r["status"])
            num = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
            status = escape(r["status"] + (f": {r['reason']}" if r.get("reason") else ""))
            table.add_row(r["cell"], r["point"], num(r.get("baseline")), num(r.get("current")),
                          "—" if r.get("delta") is None else f"{r['delta']:+.3f}", ",".join(r.get("flags") or []) or "—",
                          f"[{colour}]{status}[/]" if colour else status)
        Console().print(table)
        if res["flagged"]:
            Console().print(f"[yellow]{len(res['flagged'])} flagged cell(s)[/]: "
                            + escape("; ".join(f"[{k}] {v}" for k, v in res["flag_legend"].items())))
        c = res["counts"]
        Console().print(("[bold green]PASSED[/]" if res["passed"] else "[bold red]FAILED[/]")
                        + f" — {c['ok']} ok, {c['fail']} failed, {c['drop-not-significant']} drops not significant, "
                          f"{c['new']} new, {c['missing']} missing")
    if not res["passed"]:
        raise typer.Exit(1)


@app.command("validate")
@user_errors
def validate_cmd(
    profile: Optional[str] = typer.Option(None, help="Dry-build this profile's grid (e.g. paper) instead of the "
                                                     "installation self-check."),
    sample: bool = typer.Option(True, "--sample/--no-sample", help="Time each target briefly to estimate costs."),
    device: str = typer.Option("cpu", help="Device of the timed sample (cpu, cuda)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Self-check an installation in seconds (registries, a tiny target's gradients, tiny attacks
    in budget, the store, the cache); with --profile paper, dry-build the paper grid (every target
    × defence × attack) without running it: size and estimated cost per cell on this machine."""
    if profile is None:
        from robench.validate import self_check

        if not sample or device != "cpu":
            raise RobenchError("--no-sample and --device apply to the dry build: add --profile paper")
        res = self_check(progress=None if as_json else (lambda m: err.print(m, style="dim")))
        if as_json:
            emit_json(res)
        else:
            table = Table(title=f"robench self-check ({res['seconds']:.1f} s)")
            for c in ("check", "result", "detail"):
                table.add_column(c, overflow="fold")
            for c in res["checks"]:
                table.add_row(c["check"], "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]", c["detail"])
            Console().print(table)
            Console().print("[bold green]installation OK[/]" if res["ok"] else "[bold red]installation has problems[/]")
        if not res["ok"]:
            raise typer.Exit(1)
        return
    from robench.validate import dry_build

    res = dry_build(profile, sample=sample, device=device, progress=lambda m: err.print(m) if not as_json else None)
    if as_json:
        emit_json(res)
        return
    out = Console()
    out.print(f"profile {res['profile']}: {len(res['targets'])} targets × {len(res['defenses'])} defences × "
              f"{len(res['attacks'])} attacks = [bold]{res['cells']} cells[/], {res['items_per_cell']} {res['dataset']} "
              f"{res['split']} images × {len(res['eps'])} budgets each ({res['attacked_images']:,} attacked images)")
    for a, r in res["attacks"].items():
        out.print(f"  {r}")
    est = res["estimate"]
    if est:
        table = Table(title=f"estimated seconds per cell on {res['device']} at {res['image_size']} ({est['kind']})")
        table.add_column("attack")
        for t in res["targets"]:
            table.add_column(t, justify="right")
        for a in res["attacks"]:
            table.add_row(a, *[f"{next(r['seconds'] for r in est['per_cell'] if r['target'] == t and r['attack'] == a):,.0f}"
                               for t in res["targets"]])
        out.print(table)
        out.print(f"attacks: {est['attack_hours']:,.1f} h; clean training: "
                  + ", ".join(f"{t} {h:,.0f} h" for t, h in est["clean_training_hours"].items())
                  + "; recipes: " + ", ".join(f"{t} {h:,.1f} h" for t, h in est["recipe_training_hours"].items())
                  + f"; total ≈ {est['total_hours']:,.0f} h on this device")


@plot_app.command("bound")
@user_errors
def plot_bound_cmd(
    log: Path = typer.Option(..., help="An AAT run folder or its steps.json."),
    out: Path = typer.Option(Path("reports/latest/plots/bound"), help="Output stem (.pdf and .png are written)."),
    log_y: bool = typer.Option(False, "--log-y", help="Logarithmic y axes."),
) -> None:
    """Theorem 1: bound vs empirical max error per AAT step, and the anchored loss (raw + EMA-20)."""
    from robench.plots import plot_bound

    names = plot_bound(log, out, log_y=log_y)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


@plot_app.command("sweep")
@user_errors
def plot_sweep_cmd(
    store: Optional[Path] = typer.Option(None, help="SQLite store."),
    out: Path = typer.Option(Path("reports/latest/plots/sweep"), help="Output stem."),
    n_boot: int = typer.Option(1000, "--bootstrap"),
    seed: int = typer.Option(0),
) -> None:
    """Metric vs ε per target × defence, one panel per attack, bootstrap bands."""
    from robench.plots import plot_sweep
    from robench.report import Reporter, load_cells
    from robench.runner import default_store

    cells, weights = load_cells(store or default_store())
    rep = Reporter(cells, weights, n_boot=n_boot, seed=seed)
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
    from robench.plots import clean_accuracy, plot_speed
    from robench.report import load_cells
    from robench.runner import default_store

    cells, _ = load_cells(store or default_store())
    names = plot_speed(bench, clean_accuracy(cells), out)
    err.print("wrote " + ", ".join(str(out.with_name(n)) for n in names))


# ------------------------------------------------------------------------------------------
# weights


@weights_app.command("ls")
@user_errors
def weights_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Cached weight files with their sha256 and provenance."""
    from robench.models import weights as W

    rows = [{"name": k, **v} for k, v in sorted(W.read_index().items())]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="robench weights")
    for c in ("name", "source", "sha256", "file"):
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["source"], r["sha256"][:16], r["file"])
    Console().print(table)


@weights_app.command("import")
@user_errors
def weights_import(
    path: Path = typer.Argument(..., help="A .pth/.pt (weights_only) or .safetensors file."),
    model: str = typer.Option(..., help="Target name it belongs to (e.g. lpips.alex, topiq.fr, birqa)."),
    role: Optional[str] = typer.Option(None, help="full | lin | trunk (LPIPS files); detected by default."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check that a file loads into the model (strict) and add it to the cache."""
    from robench.models import weights as W

    entry = W.import_weights(path, model, role)
    emit_json(entry) if as_json else err.print(f"imported {path} as {entry['name']} (sha256 {entry['sha256'][:16]}…)")


@weights_app.command("verify")
@user_errors
def weights_verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Recompute every cached file's sha256; exit 1 if any is missing or changed."""
    from robench.models import weights as W

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
    from robench.models import weights as W

    entries = W.fetch_official(model, url=url, sha256=sha256)
    emit_json(entries) if as_json else err.print("; ".join(f"{e['name']} ({e['sha256'][:16]}…)" for e in entries))


# ------------------------------------------------------------------------------------------
# bench


def _parse_size(size: str, example: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise RobenchError(f"--size must look like {example}, got {size!r}") from None
    return w, h


@bench_app.command("speed")
@user_errors
def bench_speed(
    models: str = typer.Option("birqa,topiq.fr,lpips.alex,lpips.vgg", help="Comma-separated targets."),
    size: str = typer.Option("512x384", help="WxH."),
    batch: int = typer.Option(1),
    rounds: int = typer.Option(5),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Images/s end to end (features included), parameter counts, ratios to topiq.fr."""
    from robench.bench import speed

    w, h = _parse_size(size, "512x384")
    res = speed([m.strip() for m in models.split(",") if m.strip()], (w, h), batch=batch, rounds=rounds, device=device)
    if as_json:
        emit_json(res)
        return
    table = Table(title=f"speed at {res['size']} ({res['machine']['device']}, {res['machine']['torch_threads']} threads)")
    for c in ("model", "images/s", "params", "× topiq.fr"):
        table.add_column(c)
    for r in res["results"]:
        ratio = r["ratio_to_topiq.fr"]
        table.add_row(r["model"], f"{r['images_per_s']:.2f}", f"{r['parameters'] / 1e6:.2f} M", f"{ratio:.2f}" if ratio else "—")
    Console().print(table)


@bench_app.command("attack")
@user_errors
def bench_attack(
    model: str = typer.Option(..., help="Target (random weights: speed does not depend on them)."),
    size: str = typer.Option("224x224", help="WxH."),
    batch: int = typer.Option(8),
    rounds: int = typer.Option(5),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One PGD step with the reference branch recomputed (naive) vs computed once (cached)."""
    from robench.bench import attack_step

    w, h = _parse_size(size, "224x224")
    res = attack_step(model, (w, h), batch=batch, rounds=rounds, device=device)
    if as_json:
        emit_json(res)
        return
    err.print(f"{model} at {res['size']}, batch {batch}: naive step {res['naive_step_s'] * 1e3:.0f} ms, cached "
              f"{res['cached_step_s'] * 1e3:.0f} ms → ratio {res['ratio']:.2f} (vs a textbook loop "
              f"{res['textbook_step_s'] * 1e3:.0f} ms: {res['ratio_vs_textbook']:.2f}); max |Δscore| "
              f"{res['max_abs_score_diff']:.2g}, max |Δgrad| {res['max_abs_grad_diff']:.2g}")


@bench_app.command("attack-strength")
@user_errors
def bench_attack_strength(
    model: str = typer.Option("ssim,ms-ssim,birqa,topiq.fr", help="Targets (comma list; trained weights are used)."),
    attacks: str = typer.Option("all", help="Attacks to compare with the converged reference (comma list or all)."),
    eps: float = typer.Option(8.0, help="ε in /255 units."),
    n: int = typer.Option(16, help="Items (stratified subset of the split)."),
    profile: str = typer.Option("quick", help="Profile whose attack settings are measured."),
    ref_steps: int = typer.Option(100, help="Steps of each reference PGD restart."),
    ref_restarts: int = typer.Option(3, help="Reference restarts (the first from δ = 0)."),
    curve: str = typer.Option("5,10,20,40", help="PGD step counts of the convergence curve (comma list; '' = none)."),
    seed: int = typer.Option(0),
    attack_option: list[str] = typer.Option([], "--attack-option", help="attack.param=value, e.g. pgd.steps=20 "
                                            "(repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each attack's mean gain as a fraction of a converged reference (many-step restarted PGD, best
    iterate; per image the best of the reference and every attack) on the same items, plus the
    reference's convergence curve. An attack far below 1.0 gives up early and fakes robustness."""
    from robench.bench import attack_strength
    from robench.runner import expand_attacks

    params = _parse_nested(attack_option, "--attack-option", "attack")
    res = attack_strength([m.strip() for m in model.split(",") if m.strip()], expand_attacks(attacks), eps=eps, n=n,
                          profile=profile, ref_steps=ref_steps, ref_restarts=ref_restarts, seed=seed,
                          attack_params=params, progress=not as_json,
                          curve_steps=tuple(int(k) for k in curve.split(",") if k.strip()))
    if as_json:
        emit_json(res)
        return
    table = Table(title=f"attack strength at ε = {eps:g}/255, {res['n']} items, {profile} profile vs PGD "
                        f"{ref_steps}×{ref_restarts} restarts")
    for c in ("model", "attack", "budget", "mean gain", "ratio", "gains on", "s"):
        table.add_column(c)
    for m in res["models"]:
        for r in m["attacks"]:
            table.add_row(m["model"], r["attack"], json.dumps(r["budget"]), f"{r['mean_gain']:.4g}",
                          f"{r['ratio']:.2f}", f"{r['gains_on']}/{res['n']}", f"{r['seconds']:.1f}")
    Console().print(table)


@bench_app.command("grid")
@user_errors
def bench_grid(
    executor: str = typer.Option("serial,ray", help="Executors to measure side by side (comma list)."),
    cells: int = typer.Option(8, help="Equal cells in the grid."),
    workers: int = typer.Option(2, help="Ray: local CPUs (workers)."),
    queries: int = typer.Option(300, help="Square queries per cell (sets the cell's cost)."),
    n: int = typer.Option(32, help="Items per cell."),
    image_size: Optional[int] = typer.Option(None, help="mini image size (default: the quick profile's 128)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Wall time of one CPU-bound grid per executor (fresh store each), and the speed-up over serial."""
    from robench.bench import grid
    from robench.executors import check_name

    names = [e.strip() for e in executor.split(",") if e.strip()]
    for e in names:
        check_name(e)
    res = grid(names, cells=cells, workers=workers, queries=queries, n=n, image_size=image_size, progress=not as_json)
    if as_json:
        emit_json(res)
        return
    for r in res["results"]:
        err.print(f"{r['executor']}: {cells} cells in {r['seconds']:.1f} s"
                  + (f" (× {r['speedup_vs_serial']:.2f} vs serial)" if r["speedup_vs_serial"] else ""))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
