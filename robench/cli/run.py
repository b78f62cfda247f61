"""``robench run``, ``train`` and ``eval``: the commands that compute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from robench.cli.app import DEVICE_HELP, app, emit_json, err, out_console, user_errors
from robench.core.errors import RobenchError


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
    model: Optional[str] = typer.Option(
        None,
        help="Architecture to train: birqa, lpips.alex, lpips.vgg, topiq.fr "
        "(not needed for a defence's own weights: --defense diffpure).",
    ),
    dataset: str = typer.Option("mini", help="A pairs dataset (train split trains, val split selects)."),
    profile: str = typer.Option("quick", help="quick | paper"),
    epochs: Optional[int] = typer.Option(None, help="Override the profile's epochs."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default $ROBENCH_HOME/runs/train/...)."),
    seed: int = typer.Option(0),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    root: Optional[Path] = typer.Option(None, help="Dataset root (real datasets)."),
    model_option: Optional[list[str]] = typer.Option(
        None, "--model-option", help="Architecture option key=value (e.g. width=0.5)."
    ),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    defense: Optional[str] = typer.Option(
        None, help="Adversarial fine-tuning recipe r | at | aat (makes MODEL.<recipe>)."
    ),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps of the recipe (default: the profile's)."),
    inner: Optional[str] = typer.Option(
        None,
        "--inner",
        help="With --defense: what the inner PGD maximises: loss (the recipe's own, default) | up | mos-split.",
    ),
    train_seed: Optional[int] = typer.Option(
        None,
        "--train-seed",
        help="With --defense: the fine-tuning's seed, "
        "on --seed's data (default: --seed); k > 0 makes MODEL.<recipe>-s<k>.",
    ),
    max_steps_per_epoch: Optional[int] = typer.Option(
        None, help="Cap the steps of each clean-training epoch (smoke tests, crash tests)."
    ),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Clean training (loss MSE + λ(1 − PLCC), paper equation 5) or, with --defense, R-/AT-/AAT- fine-tuning;
    resumable."""
    from robench.core.device import resolve_device
    from robench.engine.train import train

    resolve_device(device)  # before any data is read
    own = _own_weights_trainer(defense)
    if own is None and not model:
        raise RobenchError("give --model (the architecture to train, e.g. --model birqa)")
    if train_seed is not None and (not defense or own is not None):
        raise RobenchError("--train-seed is the seed of a recipe's fine-tuning: give it with --defense r|at|aat")
    if own is not None:
        r = own(
            dataset=dataset,
            profile=profile,
            steps=steps,
            seed=seed,
            out=out,
            device=device,
            dataset_options={**({"root": str(root)} if root else {}), **_parse_kv(dataset_option, "--dataset-option")},
        )
        emit_json(r) if as_json else err.print(
            f"{r['name']}: {r['train_seconds']:.0f} s, final loss {r['final_loss']:.4f}; weights {r['weights']}"
        )
        return
    if defense:
        from robench.engine.finetune import adversarial_train

        r = adversarial_train(
            model,
            defense,
            dataset=dataset,
            profile=profile,
            seed=seed,
            steps=steps,
            out=out,
            train_seed=train_seed,
            device=device,
            inner=inner,
            dataset_options={**({"root": str(root)} if root else {}), **_parse_kv(dataset_option, "--dataset-option")},
        )
        emit_json(r) if as_json else err.print(
            f"{r['name']}: {r['steps']} steps in {r['train_seconds']:.0f} s; "
            f"val SROCC {r['val_srocc']:.4f}; weights {r['weights']}"
        )
        return

    r = train(
        model,
        dataset=dataset,
        profile=profile,
        epochs=epochs,
        out=out,
        seed=seed,
        lr=lr,
        batch_size=batch_size,
        dataset_options={**({"root": root} if root else {}), **_parse_kv(dataset_option, "--dataset-option")},
        model_options=_parse_kv(model_option, "--model-option"),
        max_steps_per_epoch=max_steps_per_epoch,
        device=device,
    )
    _print_trained(r, as_json)


def _own_weights_trainer(defense: str | None):
    """An inference defence that trains weights of its own (DiffPure's DDPM) declares
    ``train_weights``: that function; None for no defence or a recipe (r, at, aat: they fine-tune
    MODEL). The CLI names neither."""
    if not defense:
        return None
    from robench.core.registry import DEFENSES

    cls = DEFENSES.get(defense)
    if getattr(cls, "kind", None) != "inference":
        return None
    own = getattr(cls, "train_weights", None)
    if own is None:
        raise RobenchError(f"--defense {defense} has no weights to train (an inference-time defence)")
    return own


def _print_trained(r, as_json: bool) -> None:
    """A clean training's result: JSON on stdout, or one line on stderr."""
    res = {
        "name": r.name,
        "out": str(r.out),
        "weights": str(r.best_path),
        "sha256": r.sha256,
        "best_val_srocc": r.best_val_srocc,
        "best_epoch": r.best_epoch,
        "epochs": r.epochs,
        "train_seconds": round(r.train_seconds, 1),
    }
    emit_json(res) if as_json else err.print(
        f"{r.name}: best val SROCC {r.best_val_srocc:.4f} (epoch {r.best_epoch}), "
        f"{r.train_seconds:.0f} s; weights {r.best_path}"
    )


@app.command("eval")
@user_errors
def eval_cmd(
    model: str = typer.Option(...),
    dataset: Optional[str] = typer.Option(None, help="Dataset; default: the built-in offline set."),
    split: str = typer.Option("test"),
    weights: Optional[str] = typer.Option(None, help="A weights file, or 'none' (default: best available)."),
    profile: str = typer.Option("quick", help="Sets a built dataset's image size."),
    root: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0, help="Split seed."),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """SROCC / PLCC / KROCC of a target on a dataset split."""
    import robench
    from robench.core.device import device_record
    from robench.core.registry import default_dataset
    from robench.engine.train import evaluate

    target = robench.load_model(model, weights=weights, device=device)
    dataset = dataset or default_dataset()
    opts = {"seed": seed, **_dataset_defaults(dataset, profile, root, dataset_option)}
    ds = robench.load_dataset(dataset, split=split, **opts)
    res = evaluate(target, ds, progress=not as_json)
    res.update(
        {
            "model": model,
            "dataset": dataset,
            "split": split,
            "weights": target.card.weights.describe(),
            "weights_sha256": target.card.weights.sha256,
            **device_record(target.device),
        }
    )
    emit_json(res) if as_json else err.print(
        f"{model} on {dataset}/{split}: SROCC {res['srocc']:.4f}  PLCC {res['plcc']:.4f}  "
        f"KROCC {res['krocc']:.4f}  (n={res['n']})"
    )


def _dataset_defaults(
    dataset: Optional[str], profile: str, root: Optional[Path], extra: list[str] | None
) -> dict[str, Any]:
    """The profile's options for the dataset (its declaration), then --root and --dataset-option."""
    from robench.core.config import dataset_options_for
    from robench.core.registry import default_dataset

    opts: dict[str, Any] = {}
    if root is not None:
        opts["root"] = str(root)
    opts.update(_parse_kv(extra, "--dataset-option"))
    return dataset_options_for(dataset or default_dataset(), profile, opts)


@app.command("run")
@user_errors
def run_cmd(
    model: Optional[str] = typer.Option(
        None,
        help="Target, e.g. birqa, lpips.alex, topiq.fr (arch.tag for a weights variant); a comma list makes a grid.",
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="A run configuration (TOML; the resolved config.toml of an earlier run reproduces it). "
        "Not combined with the grid flags.",
    ),
    attacks: str = typer.Option(
        "all", help="'all' (every attack that declares a suite place: robench ls attacks) or a comma-separated list."
    ),
    defense: Optional[str] = typer.Option(
        None, help="Defence (robench ls defenses); default none; a comma list makes a grid."
    ),
    dataset: Optional[str] = typer.Option(
        None, help="Dataset (pairs: SROCC; 2afc: accuracy); default: the built-in offline set."
    ),
    split: str = typer.Option("test"),
    eps: Optional[str] = typer.Option(None, help="Budgets in /255 units, e.g. 2,4,6,8,10 (default: the profile's)."),
    direction: Optional[str] = typer.Option(
        None,
        "--direction",
        help="Attack direction(s), comma list: up (raise "
        "every score: score inflation, default), down, mos-split (the ranking "
        "attack: items with MOS above the items' mean pushed down, the rest up). "
        "One cell per attack × direction; keyed.",
    ),
    profile: str = typer.Option("quick", help="quick | paper"),
    n: Optional[str] = typer.Option(
        None,
        help="Items per cell (stratified by distortion), a whole number ≥ 1, or "
        "'all' for the whole split; default: the profile's.",
    ),
    eps_units: str = typer.Option(
        "255",
        "--eps-units",
        help="Units of --eps: 255 (default: 8 means 8/255) or 1 "
        "(fractions of the pixel range: 0.031 means 0.031, stored as 7.9/255).",
    ),
    seed: int = typer.Option(0, help="Split/item seed (which items, the attacks' randomness)."),
    seeds: Optional[str] = typer.Option(
        None,
        "--seeds",
        help="Training seeds, e.g. 0,1,2: each recipe defence "
        "(r, at, aat) is fine-tuned and attacked once per seed (M.<recipe>-s<k>); "
        "the report shows mean ± s.d. over seeds. Default: one.",
    ),
    weights: Optional[str] = typer.Option(None, help="A weights file, or 'none' (default: best available)."),
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    force: bool = typer.Option(False, "--force", help="Recompute cells already in the store."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cells already in the store (default)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root (real datasets)."),
    dataset_option: Optional[list[str]] = typer.Option(None, "--dataset-option", help="Dataset option key=value."),
    attack_option: Optional[list[str]] = typer.Option(
        None, "--attack-option", help="attack.param=value, e.g. pgd.steps=20 (repeatable)."
    ),
    defense_option: Optional[list[str]] = typer.Option(
        None, "--defense-option", help="defence.param=value, e.g. jpeg.quality=50 (repeatable)."
    ),
    executor: str = typer.Option(
        "serial", help="serial (in process) | ray (cells as Ray tasks; pip install 'robench[ray]')."
    ),
    address: Optional[str] = typer.Option(None, help="Ray cluster: auto | HOST:PORT (default: a local Ray)."),
    workers: Optional[int] = typer.Option(None, help="Local Ray: CPUs to start it with (default: all)."),
    cpus_per_cell: float = typer.Option(1.0, help="Ray: CPUs per cell (torch threads of its worker)."),
    gpus_per_cell: float = typer.Option(0.0, help="Ray: GPUs per cell (num_gpus; the cell runs on CUDA)."),
    device: Optional[str] = typer.Option(
        None,
        "--device",
        help=DEVICE_HELP + " Default: cpu, or the --config file's; "
        "with --config it overrides the file's (where, not what, is computed).",
    ),
    amp: Optional[str] = typer.Option(
        None,
        "--amp",
        help="Autocast precision of targets and attacks: none (float32, "
        "default) | bf16. bf16 cells are keyed apart from float32 ones (other numbers). "
        "First checked against float32 eager on a few items (clean scores within 3 %, "
        "mean attack gains within 5 % of the scores' spread): refused (exit 2) beyond.",
    ),
    compile_: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the targets' score functions (a C compiler "
        "on CPU; the first batches pay the compile time). Recorded with each cell, not "
        "keyed; first checked against eager like --amp (within 1e-4 / 1e-3 of the spread). "
        "With --config it overrides the file's.",
    ),
    escalate: int = typer.Option(
        0,
        "--escalate",
        min=0,
        max=6,
        help="Budget doublings allowed for a cell the "
        "half-budget check flags not converged: it is run again at 2×, 4×, … the attack's "
        "budget until the rule holds or the cap is spent (flag [esc]; still [nc] past the cap). Not keyed: "
        "a stored flagged cell is re-run by a larger cap. With --config it overrides the file's.",
    ),
    keep_images: bool = typer.Option(
        False,
        "--keep-images",
        help="Store every cell's adversarial images beside the "
        "store (<store>-images/, lossless float32 .npy named by sha256: 196 736 bytes an "
        "image at 128 px) for robench transfer. Not keyed; a stored cell without "
        "images is computed again. With --config it overrides the file's. Without it, "
        "each cell keeps its 4 most-moved items (adversarial at every ε, distorted, "
        "reference: ≈ 2.4 MB a cell at 128 px and 2 ε) for the report's gallery.",
    ),
    no_gallery: bool = typer.Option(False, "--no-gallery", help="Keep no images at all (not even the gallery's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Attack targets across ε budgets; store every cell; print clean vs attacked SROCC (or 2AFC accuracy).
    --model and --defense take comma lists: the grid is every model × defence × attack. The
    settings form one run configuration (written beside the store as config.toml)."""
    from robench.core.target import check_amp
    from robench.engine.grid import run_config

    amp = check_amp(amp)  # an unknown value fails here, naming the allowed ones
    n_items = parse_n(n)
    eps = parse_eps(eps, eps_units)
    keep = "all" if keep_images else "none" if no_gallery else None
    if config is not None:
        given = {
            "--model": model,
            "--defense": defense,
            "--dataset": dataset,
            "--eps": eps,
            "--n": n,
            "--seeds": seeds,
            "--weights": weights,
            "--root": root,
            "--dataset-option": dataset_option,
            "--attack-option": attack_option,
            "--defense-option": defense_option,
            "--address": address,
            "--workers": workers,
            "--amp": amp,
            "--direction": direction,
        }
        changed = (
            ("--attacks", attacks, "all"),
            ("--split", split, "test"),
            ("--profile", profile, "quick"),
            ("--seed", seed, 0),
            ("--executor", executor, "serial"),
        )
        clash = [k for k, v in given.items() if v] + [k for k, v, d in changed if v != d]
        if clash:
            raise RobenchError(f"--config {config} holds the settings: drop {', '.join(clash)} (edit the file instead)")
        cfg = _config_from_file(config, store, device, compile_, escalate, keep, force or not resume)
    else:
        cfg = _config_from_flags(
            model=model, attacks=attacks, defense=defense, dataset=dataset, split=split, eps=eps, profile=profile,
            n=n_items, seed=seed, seeds=seeds, weights=weights, store=store, force=force or not resume, root=root,
            dataset_option=dataset_option, attack_option=attack_option, defense_option=defense_option,
            executor=executor, address=address, workers=workers, cpus_per_cell=cpus_per_cell,
            gpus_per_cell=gpus_per_cell, device=device, amp=amp, compile_=compile_, escalate=escalate, keep=keep,
            direction=direction,
        )  # fmt: skip
    grid = run_config(cfg, progress=True, log=lambda m: err.print("[yellow]warning:[/] " + escape(m), markup=True))
    if as_json:
        emit_json(grid["runs"][0] if len(grid["runs"]) == 1 else grid)
    else:
        for report in grid["runs"]:
            print_summary(report)
        err.print(f"run configuration: {grid['config']}")
    if any(c.get("status") == "failed" for r in grid["runs"] for c in r["cells"]):
        raise typer.Exit(1)


def _config_from_flags(
    *,
    model, attacks, defense, dataset, split, eps, profile, n, seed, seeds, weights, store, force, root,
    dataset_option, attack_option, defense_option, executor, address, workers, cpus_per_cell, gpus_per_cell,
    device, amp, compile_, escalate, keep, direction,
):  # fmt: skip
    """The run configuration the command line's flags give (no --config)."""
    from robench.core.config import RunConfig
    from robench.engine.executors import check_name

    if not model:
        raise RobenchError("give --model (e.g. --model birqa) or --config run.toml")
    check_name(executor)
    opts: dict[str, Any] = {} if root is None else {"root": str(root)}
    opts.update(_parse_kv(dataset_option, "--dataset-option"))
    ex_opts = (
        {"address": address, "num_cpus": workers, "cpus_per_cell": cpus_per_cell, "gpus_per_cell": gpus_per_cell}
        if executor == "ray"
        else {}
    )
    return RunConfig.from_dict(
        {
            "targets": model,
            "attacks": attacks,
            "defenses": defense or "none",
            "dataset": dataset,
            "split": split,
            "eps": eps,
            "profile": profile,
            "n": n,
            "seed": seed,
            "seeds": seeds,
            "weights": weights,
            "store": str(store) if store else None,
            "force": force,
            "dataset_options": opts,
            "attack_params": _parse_nested(attack_option, "--attack-option", "attack"),
            "defense_options": _parse_nested(defense_option, "--defense-option", "defence"),
            "executor": executor,
            "executor_options": ex_opts,
            "device": device or "cpu",
            "amp": amp,
            "compile": compile_,
            "escalate": escalate,
            "keep_images": keep or "top",
            **({"directions": direction} if direction else {}),
        },
        where="robench run",
    )


def _config_from_file(
    path: Path, store: Path | None, device: str | None, compile_: bool, escalate: int, keep: str | None, force: bool
):
    """``--config FILE``: its settings, with the flags that may override a file's."""
    from robench.core.config import RunConfig

    cfg = RunConfig.from_toml(path)
    if store is not None:
        cfg.store = str(store)
    if device is not None:
        cfg.device = device
    if compile_:
        cfg.compile = True
    if escalate:
        cfg.escalate = escalate
    if keep is not None:
        cfg.keep_images = keep
    cfg.force = cfg.force or force
    return cfg


def parse_n(n: str | None) -> int | None:
    """``--n``: a whole number ≥ 1, or ``all`` (the whole split: 0 in the run configuration)."""
    if n is None:
        return None
    if str(n).strip().lower() == "all":
        return 0
    try:
        v = int(str(n))
    except ValueError:
        raise RobenchError(f"--n must be a whole number of items ≥ 1 or 'all', got {n!r}") from None
    if v < 1:
        raise RobenchError(f"--n must be ≥ 1 (or 'all' for the whole split), got {v}")
    return v


def parse_eps(eps: str | None, units: str) -> str | None:
    """``--eps`` in /255 units (``--eps-units 255``, the default) or as fractions of the pixel
    range (``--eps-units 1``, converted). A /255 value below 1 is refused: 0.031 would be an attack
    of 0.031/255, almost surely a fraction meant as 8/255."""
    if units not in ("255", "1"):
        raise RobenchError(f"--eps-units must be 255 or 1, got {units!r}")
    if eps is None:
        return None
    try:
        vals = [float(e) for e in eps.split(",") if e.strip()]
    except ValueError:
        raise RobenchError(f"--eps must be comma-separated numbers, got {eps!r}") from None
    if units == "1":
        bad = [v for v in vals if not 0 < v <= 1]
        if bad:
            raise RobenchError(f"--eps {bad[0]:g} with --eps-units 1 must be a fraction in (0, 1]")
        return ",".join(repr(v * 255) for v in vals)
    small = [v for v in vals if 0 < v < 1]
    if small:
        raise RobenchError(
            f"--eps {small[0]:g} is in /255 units (that is {small[0]:g}/255 = {small[0] / 255:.2g} of "
            f"the pixel range); for {small[0]:g} of the range give --eps {small[0] * 255:.3g} or "
            f"--eps-units 1"
        )
    return eps


def _label(cell: dict[str, Any]) -> str:
    """The attack, with its direction when it is not the default ``up``."""
    d = cell.get("direction", "up")
    return cell["attack"] if d == "up" else f"{cell['attack']} · {d}"


def print_summary(report: dict[str, Any]) -> None:
    out = out_console()
    metric = "SROCC"
    table = Table(
        title=f"{report['target']} on {report['dataset']}/{report['split']} (n={report['n']}, "
        f"profile {report['profile']}); store {report['store']}"
    )
    from robench.core import flags as FL

    for c in ("attack", "ε/255", "clean", "attacked", "mean gain", "queries", "status"):
        table.add_column(c, no_wrap=True)
    codes_seen: set[str] = set()
    table.add_column("flags", overflow="fold", min_width=10)
    for c in report["cells"]:
        s = c.get("summary") or {}
        if not s:
            table.add_row(_label(c), "—", "—", "—", "—", "—", c.get("status", "?"), escape(c.get("error", "")[:60]))
            continue
        if "clean_2afc" in s:
            metric, clean, att = "2AFC", s["clean_2afc"], s["attacked_2afc"]
        else:
            clean, att = s["clean_srocc"], s["attacked_srocc"]
        bad = FL.labels(c.get("flags"))  # the same flag registry as the report and `check`
        codes_seen.update(bad)
        for k, e in enumerate(s["eps"]):
            table.add_row(
                _label(c) if k == 0 else "",
                f"{e:g}",
                f"{clean:.3f}" if k == 0 else "",
                f"{att[k]:.3f}",
                f"{s['mean_gain'][k]:+.4f}",
                f"{s['mean_queries'][k]:.0f}",
                c["status"] if k == 0 else "",
                ", ".join(bad) if k == 0 else "",
            )
    table.caption = (
        f"{metric} of oriented quality; {report['seconds']:.0f} s; harness overhead "
        + (f"{100 * report['harness_overhead']:.1f} %" if report.get("harness_overhead") is not None else "—")
        + (
            "; mean gain: directed, sign · (q_adv − q_clean); mos-split: the ranking attack"
            if any(c.get("direction", "up") != "up" for c in report["cells"])
            else ""
        )
        + (". " + escape(FL.legend(codes_seen)) if codes_seen else "")
    )
    out.print(table)
