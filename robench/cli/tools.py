"""``robench ls``, ``validate`` and ``bench …``."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from robench.cli.app import DEVICE_HELP, app, bench_app, emit_json, err, out_console, user_errors
from robench.core.errors import RobenchError
from robench.cli.run import _parse_nested


@app.command("ls")
@user_errors
def ls(
    kind: str = typer.Argument(..., help="models | attacks | defenses | datasets | targets"),
    name: Optional[str] = typer.Argument(None, help="attacks only: one attack, with its parameters"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable list on stdout."),
) -> None:
    """List what is registered; ``targets``: every target (robench's and pyiqa's full-reference
    metrics) with whether it runs here, offline; ``attacks NAME``: that attack's parameters."""
    from robench.core.registry import ATTACKS, REGISTRIES

    if kind == "targets":
        return _print_rows("targets", _targets(), as_json)
    if kind not in REGISTRIES:
        import difflib

        close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RobenchError(f"unknown registry {kind!r}{hint} (choose from {', '.join(REGISTRIES)}, targets)")
    if name is not None:
        if REGISTRIES[kind] is not ATTACKS:
            raise RobenchError(f"a NAME lists one attack's parameters; got it with {kind!r}")
        return _print_rows(f"attack {name}: parameters", _attack_params(ATTACKS.get(name)), as_json)
    _print_rows(kind, REGISTRIES[kind].info(), as_json)


def _attack_params(cls) -> list[dict]:
    """One row per hyper-parameter: its default, each profile's value, whether it is a budget."""
    from robench.attacks.base import declared_params

    return [
        {
            "name": k,
            "summary": p.doc,
            "default": p.default,
            **{f"{prof}": v[k] for prof, v in cls.budgets.items() if k in v},
            "budget": p.budget,
        }
        for k, p in declared_params(cls).items()
    ]


def _targets() -> list[dict]:
    """robench's targets with their weights' offline status, then pyiqa's FR metrics (when installed)."""
    import importlib.util

    from robench.core import weights as W
    from robench.core.registry import MODELS
    from robench.models import pyiqa_catalogue

    rows = []
    for r in MODELS.info():
        if not getattr(MODELS.get(r["name"]), "requires_weights", True):
            status, detail = "ok", "no weights (analytic)"
        elif (w := W.lookup(r["name"])) is not None:
            status, detail = "ok", f"weights {w['source']}: {w['path']}"
        else:
            status, detail = (
                "weights",
                f"no weights here: `robench train --model {r['name']}` or `robench weights import`",
            )
        rows.append({**r, "status": status, "detail": detail})
    if importlib.util.find_spec("pyiqa") is None:
        err.print("pyiqa is not installed: its metrics are not listed (pip install --no-deps pyiqa==0.1.16)")
        return rows
    return rows + pyiqa_catalogue()


def _print_rows(kind: str, rows: list[dict], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"robench {kind}")
    # nested values (parameters, budgets) are unreadable in a cell: --json, or `ls attacks NAME`
    nested = {k for r in rows for k, v in r.items() if isinstance(v, (dict, list))}
    cols = ["name", "summary"] + sorted({k for r in rows for k in r} - {"name", "summary", "origin"} - nested)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    out_console().print(table)


@app.command("validate")
@user_errors
def validate_cmd(
    profile: Optional[str] = typer.Option(
        None, help="Dry-build this profile's grid (e.g. paper) instead of the installation self-check."
    ),
    sample: bool = typer.Option(True, "--sample/--no-sample", help="Time each target briefly to estimate costs."),
    device: str = typer.Option(
        "cpu",
        "--device",
        help=DEVICE_HELP + " Here: where the self-check's tiny target "
        "and attacks run, or the dry build's timed sample.",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Self-check an installation in seconds (registries, a tiny target's gradients, tiny attacks
    in budget, the store, the cache); with --profile paper, dry-build the paper grid (every target
    × defence × attack) without running it: size and estimated cost per cell on this machine."""
    if profile is None:
        from robench.engine.validate import self_check

        if not sample:
            raise RobenchError("--no-sample applies to the dry build: add --profile paper")
        res = self_check(progress=None if as_json else (lambda m: err.print(m, style="dim")), device=device)
        if as_json:
            emit_json(res)
        else:
            table = Table(title=f"robench self-check ({res['seconds']:.1f} s)")
            for c in ("check", "result", "detail"):
                table.add_column(c, overflow="fold")
            for c in res["checks"]:
                table.add_row(c["check"], "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]", c["detail"])
            con = out_console()
            con.print(table)
            con.print("[bold green]installation OK[/]" if res["ok"] else "[bold red]installation has problems[/]")
        if not res["ok"]:
            raise typer.Exit(1)
        return
    from robench.engine.validate import dry_build

    res = dry_build(profile, sample=sample, device=device, progress=lambda m: err.print(m) if not as_json else None)
    if as_json:
        emit_json(res)
        return
    out = out_console()
    out.print(
        f"profile {res['profile']}: {len(res['targets'])} targets × {len(res['defenses'])} defences × "
        f"{len(res['attacks'])} attacks = [bold]{res['cells']} cells[/], {res['items_per_cell']} {res['dataset']} "
        f"{res['split']} images × {len(res['eps'])} budgets each ({res['attacked_images']:,} attacked images)"
    )
    for a, r in res["attacks"].items():
        out.print(f"  {r}")
    est = res["estimate"]
    if est:
        table = Table(title=f"estimated seconds per cell on {res['device']} at {res['image_size']} ({est['kind']})")
        table.add_column("attack")
        for t in res["targets"]:
            table.add_column(t, justify="right")
        for a in res["attacks"]:
            table.add_row(
                a,
                *[
                    f"{next(r['seconds'] for r in est['per_cell'] if r['target'] == t and r['attack'] == a):,.0f}"
                    for t in res["targets"]
                ],
            )
        out.print(table)
        out.print(
            f"attacks: {est['attack_hours']:,.1f} h; clean training: "
            + ", ".join(f"{t} {h:,.0f} h" for t, h in est["clean_training_hours"].items())
            + "; recipes: "
            + ", ".join(f"{t} {h:,.1f} h" for t, h in est["recipe_training_hours"].items())
            + f"; total ≈ {est['total_hours']:,.0f} h on this device"
        )


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
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    reference: str = typer.Option("topiq.fr", help="Model the speed ratios are relative to (the paper's: TOPIQ-FR)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Images/s end to end (features included), parameter counts, ratios to a reference model."""
    from robench.engine.bench import speed

    w, h = _parse_size(size, "512x384")
    res = speed(
        [m.strip() for m in models.split(",") if m.strip()],
        (w, h),
        batch=batch,
        rounds=rounds,
        device=device,
        reference=reference,
    )
    if as_json:
        emit_json(res)
        return
    table = Table(
        title=f"speed at {res['size']} ({res['machine']['device']}, {res['machine']['torch_threads']} threads)"
    )
    for c in ("model", "images/s", "params", f"× {reference}"):
        table.add_column(c)
    for r in res["results"]:
        ratio = r.get(f"ratio_to_{reference}")
        table.add_row(
            r["model"], f"{r['images_per_s']:.2f}", f"{r['parameters'] / 1e6:.2f} M", f"{ratio:.2f}" if ratio else "—"
        )
    out_console().print(table)


@bench_app.command("attack")
@user_errors
def bench_attack(
    model: str = typer.Option(..., help="Target (random weights: speed does not depend on them)."),
    size: str = typer.Option("224x224", help="WxH."),
    batch: int = typer.Option(8),
    rounds: int = typer.Option(5),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One PGD step with the reference branch recomputed (naive) vs computed once (cached)."""
    from robench.engine.bench import attack_step

    w, h = _parse_size(size, "224x224")
    res = attack_step(model, (w, h), batch=batch, rounds=rounds, device=device)
    if as_json:
        emit_json(res)
        return
    err.print(
        f"{model} at {res['size']}, batch {batch}: naive step {res['naive_step_s'] * 1e3:.0f} ms, cached "
        f"{res['cached_step_s'] * 1e3:.0f} ms → ratio {res['ratio']:.2f} (vs a textbook loop "
        f"{res['textbook_step_s'] * 1e3:.0f} ms: {res['ratio_vs_textbook']:.2f}); max |Δscore| "
        f"{res['max_abs_score_diff']:.2g}, max |Δgrad| {res['max_abs_grad_diff']:.2g}"
    )


@bench_app.command("kernels")
@user_errors
def bench_kernels(
    models: str = typer.Option("birqa,lpips.alex,topiq.fr", help="Comma-separated targets (random weights)."),
    sizes: str = typer.Option("128x128,512x384", help="Comma-separated WxH."),
    batch: int = typer.Option(32),
    batch_large: int = typer.Option(8, help="Batch for sizes over 256×256 px (memory)."),
    threads: str = typer.Option("1,2", help="Comma-separated torch thread counts."),
    rounds: int = typer.Option(5),
    isolated: bool = typer.Option(False, "--isolated", help="Also time each path in a fresh process of its own."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The attack step (forward + gradient to the image) of each target: today's textbook
    kernels and glibc's default allocator beside robench's fast kernels and tuned allocator, in
    one process, with GFLOP/s against the machine's measured matmul/conv peak (CPU)."""
    from robench.engine.bench import kernels

    size_list = [_parse_size(s_.strip(), "128x128") for s_ in sizes.split(",") if s_.strip()]
    try:
        thread_list = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        raise RobenchError(f"--threads must be comma-separated integers, got {threads!r}") from None
    if not thread_list or min(thread_list) < 1 or min(batch, batch_large, rounds) < 1:
        raise RobenchError("--threads, --batch, --batch-large and --rounds must be ≥ 1")
    res = kernels(
        [m.strip() for m in models.split(",") if m.strip()],
        size_list,
        batch=batch,
        threads=thread_list,
        rounds=rounds,
        batch_large=batch_large,
        log=lambda m: err.print(m),
        isolated=isolated,
    )
    if as_json:
        emit_json(res)
        return
    peaks = ", ".join(
        f"{t} thread(s): matmul {p['matmul']:.0f}, conv {p['conv3x3']:.0f}" for t, p in res["peaks"].items()
    )
    table = Table(title=f"attack step (peak GFLOP/s {peaks})")
    for c in (
        "model",
        "size",
        "batch",
        "threads",
        "today ms/img",
        "new ms/img",
        "speed-up",
        "GFLOP/img",
        "today GFLOP/s (peak %)",
        "new GFLOP/s (peak %)",
        "max rel Δ score / grad",
    ):
        table.add_column(c)
    for r in res["results"]:
        table.add_row(
            r["model"],
            r["size"],
            str(r["batch"]),
            str(r["threads"]),
            f"{r['reference_ms_per_image']:.1f}",
            f"{r['fast_ms_per_image']:.1f}",
            f"{r['speedup']:.2f}×",
            f"{r['gflop_per_image']:.2f}",
            f"{r['reference_gflops']:.0f} ({100 * r['reference_fraction_of_peak']:.0f} %)",
            f"{r['fast_gflops']:.0f} ({100 * r['fast_fraction_of_peak']:.0f} %)",
            f"{r['score_rel_diff']:.1e} / {r['grad_rel_diff']:.1e}",
        )
    Console(width=200).print(table)


@bench_app.command("attack-strength")
@user_errors
def bench_attack_strength(
    model: str = typer.Option("ssim,birqa,lpips.alex", help="Targets (comma list; trained weights are used)."),
    attacks: str = typer.Option("all", help="Attacks to compare with the converged reference (comma list or all)."),
    eps: str = typer.Option("2,4,8", help="ε in /255 units (comma list)."),
    direction: str = typer.Option("up,down", "--direction", help="Directions (comma list: up, down, mos-split)."),
    n: int = typer.Option(32, help="Items (stratified subset of the split)."),
    profile: str = typer.Option("quick", help="Profile whose attack settings are measured."),
    ref_steps: int = typer.Option(100, help="Steps of each reference PGD restart."),
    ref_restarts: int = typer.Option(3, help="Reference restarts (the first from δ = 0, the rest random)."),
    curve: str = typer.Option("", help="PGD step counts of a convergence curve (comma list; '' = none)."),
    seed: int = typer.Option(0),
    attack_option: list[str] = typer.Option(
        [], "--attack-option", help="attack.param=value, e.g. pgd.steps=20 (repeatable)."
    ),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each attack's mean directed move as a fraction of a converged reference (many-step PGD from
    δ = 0 and random starts, best iterate; per item the best of the reference and every attack) on
    the same items, per target × direction × ε, with a photo-bootstrap interval. An attack far
    below 1.0 gives up early and fakes robustness."""
    from robench.core.directions import get_direction
    from robench.engine.bench import attack_strength
    from robench.engine.grid import expand_attacks

    params = _parse_nested(attack_option, "--attack-option", "attack")
    dirs = tuple(d.strip() for d in direction.split(",") if d.strip())
    for d in dirs:
        get_direction(d)  # an unknown name fails before any compute
    try:
        eps_list = [float(v) for v in eps.split(",") if v.strip()]
    except ValueError:
        raise RobenchError(f"--eps must be a comma list of numbers in /255 units, got {eps!r}") from None
    res = attack_strength(
        [m.strip() for m in model.split(",") if m.strip()],
        expand_attacks(attacks),
        eps=eps_list,
        n=n,
        profile=profile,
        ref_steps=ref_steps,
        ref_restarts=ref_restarts,
        seed=seed,
        attack_params=params,
        progress=not as_json,
        device=device,
        directions=dirs,
        curve_steps=tuple(int(k) for k in curve.split(",") if k.strip()),
    )
    if as_json:
        emit_json(res)
        return
    Console(width=160).print(strength_table(res))


def strength_table(res: dict) -> Table:
    """The attack-strength rows as a table (scripts/strength_table.py merges runs into markdown)."""
    table = Table(
        title=f"attack strength: mean directed move / converged reference's, {res['n']} items, "
        f"{res['profile']} profile, {res['interval']}"
    )
    for c in ("model", "direction", "items", "ε/255", "attack", "budget", "ratio", "interval", "moved", "s"):
        table.add_column(c)
    for r in res["rows"]:
        table.add_row(
            r["model"],
            r["direction"],
            r["items"],
            f"{r['eps']:g}",
            r["attack"],
            json.dumps(r.get("settings", r["budget"])),
            f"{r['ratio']:.3f}",
            f"{r['lo']:.3f}–{r['hi']:.3f}",
            f"{r['moved']}/{r['n']}",
            f"{r['seconds']:.1f}",
        )
    return table


@bench_app.command("grid")
@user_errors
def bench_grid(
    executor: str = typer.Option("serial,ray", help="Executors to measure side by side (comma list)."),
    cells: int = typer.Option(8, help="Equal cells in the grid."),
    workers: int = typer.Option(2, help="Ray: local CPUs (workers)."),
    model: str = typer.Option("ssim", help="Target of every cell (cheap: the grid measures the executor)."),
    attack: str = typer.Option("square", help="A query attack (its `queries` set the cell's cost)."),
    queries: int = typer.Option(300, help="Queries per cell (sets the cell's cost)."),
    n: int = typer.Option(32, help="Items per cell."),
    image_size: Optional[int] = typer.Option(None, help="mini image size (default: the quick profile's 128)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Wall time of one CPU-bound grid per executor (fresh store each), and the speed-up over serial."""
    from robench.engine.bench import grid
    from robench.engine.executors import check_name

    names = [e.strip() for e in executor.split(",") if e.strip()]
    for e in names:
        check_name(e)
    res = grid(
        names,
        model=model,
        attack=attack,
        cells=cells,
        workers=workers,
        queries=queries,
        n=n,
        image_size=image_size,
        progress=not as_json,
        device=device,
    )
    if as_json:
        emit_json(res)
        return
    for r in res["results"]:
        err.print(
            f"{r['executor']}: {cells} cells in {r['seconds']:.1f} s"
            + (f" (× {r['speedup_vs_serial']:.2f} vs serial)" if r["speedup_vs_serial"] else "")
        )
