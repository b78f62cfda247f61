"""``robench run``: expand a grid into cells, run the missing ones, store them, summarise.

A *cell* is one target (+ weights digest) × defence × attack (+ every resolved hyper-parameter)
× ε list × dataset (+ split + subset) × seed × profile. Its key is the sha256 of that canonical
config plus the code version, so rerunning a command skips what is already in the store
(``--resume``, the default) and recomputes it with ``--force``.

Data flows one way: dataset → items → target → attack → records → store. :func:`run_cell` is a
pure function of its inputs (an executor can send it elsewhere); the driver alone writes the store.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable


from robench.core.version import __version__
from robench.attacks import Attack
from robench.core.device import device_record, resolve_device
from robench.core.errors import RobenchError
from robench.core.home import robench_home
from robench.core.profiles import get_profile
from robench.core.registry import ATTACKS
from robench.core.config import RunConfig, RunSpec, dataset_options_for, expand_attacks  # noqa: F401
from robench.core.target import Target, speed_of
from robench.core.directions import DEFAULT as DEFAULT_DIRECTION, parse_directions
from robench.engine.cell import cell_config, cell_result, cross_cell_checks, direction_signs
from robench.engine.items import Items, load_items
from robench.engine.resolve import resolve_target, weights_records
from robench.engine.speed import check_speed
from robench.engine.store import Store, cell_key


def default_store() -> Path:
    return robench_home() / "runs" / "results.sqlite"


# --------------------------------------------------------------------------------------------
# items


# --------------------------------------------------------------------------------------------
# cells


# --------------------------------------------------------------------------------------------
# the driver


@dataclass
class Plan:
    """One target × defence of a grid: everything loaded once, and the tasks of its cells."""

    spec: RunSpec
    target: Target
    defense: dict[str, Any]
    items: Items
    eps: list[float]
    attacks: list[Attack]
    tasks: list[Any]
    report: dict[str, Any]


def plan(spec: RunSpec, progress: bool = True) -> Plan:
    """Check names, train what is missing, load target and items, and describe every cell."""
    prof = get_profile(spec.profile)
    device = resolve_device(spec.device)  # before any training: a missing GPU fails at once
    # the profile's dataset options (a built set's size) under the user's: the same for a spec
    # from the CLI, a config file or Python
    spec = replace(spec, dataset_options=dataset_options_for(spec.dataset, prof, spec.dataset_options))
    eps = _grid_eps(spec, prof)
    n = spec.n if spec.n is not None else prof.attack_n
    attacks = _grid_attacks(spec, prof)
    target, defense = resolve_target(spec, progress)
    target = target.to(device)  # the cells' items follow it there (the attack harness moves each batch)
    for a in attacks:  # refuse the whole grid before any compute; fix eot="auto" for this target
        a.check(target)
        a.resolve(target)
    items = load_items(spec.dataset, spec.split, n or None, spec.seed, spec.dataset_options)
    # --amp / --compile: agreement with float32 eager on the first items, refused beyond tolerance,
    # before any cell (and before the keys: the key holds the target's amp)
    speed = check_speed(
        target, items.dist, items.ref, [e / 255 for e in eps], spec.amp, spec.compile, prof.name, spec.seed
    )
    store_path = Path(spec.store) if spec.store else default_store()
    report: dict[str, Any] = {
        "store": str(store_path),
        "cells": [],
        "profile": prof.name,
        "eps": eps,
        "defense": defense,
        "weights": target.card.weights.describe(),
        "target": target.card.name,
        "dataset": spec.dataset,
        "split": spec.split,
        "n": len(items),
        "train_seed": defense.get("train_seed", 0) if defense.get("training") else None,
        "device": device_record(device),
        "speed": {**speed_of(target), "agreement": speed} if speed else None,
    }
    directions = parse_directions(spec.directions)
    for d in directions:  # a direction the items cannot take (mos-split on 2AFC) fails before any compute
        direction_signs(d, items)
    cells = [(a, d) for a in attacks for d in directions]
    tasks = [_cell_task(spec, prof, target, defense, a, eps, items, n, d, device) for a, d in cells]
    # one attack per task (zipped with the tasks by the driver)
    return Plan(spec, target, defense, items, eps, [a for a, _ in cells], tasks, report)


def _grid_eps(spec: RunSpec, prof) -> list[float]:
    # sorted and unique: `--eps 8,8` would write each row twice, and `8,2` is the same cell as `2,8`
    eps = sorted({float(e) for e in (spec.eps if spec.eps else prof.eps)})
    for e in eps:
        if not (0 < e <= 255):
            raise RobenchError(f"--eps values are in /255 units and must be in (0, 255], got {e:g}")
    return eps


def _grid_attacks(spec: RunSpec, prof) -> list:
    attacks = []
    for name in expand_attacks(spec.attacks):
        params = dict(spec.attack_params.get(name, {}))
        cls = ATTACKS.get(name)
        # an attack that trains on data (a generator) declares which parameters take the run's
        # dataset and its options, so it trains on the same dataset's train split
        run_data = {"dataset": spec.dataset, "dataset_options": dict(spec.dataset_options)}
        for k in cls.training_data_params:
            params.setdefault(k, run_data[k])
        attacks.append(cls(profile=prof.name, seed=spec.seed, **params))
    return attacks


def _cell_task(spec: RunSpec, prof, target, defense, a, eps, items, n, d, device):
    from robench.engine.executors import CellTask

    config = cell_config(target, defense, a, eps, spec, items, n, d)
    return CellTask(
        key=cell_key(config, __version__),
        spec={k: v for k, v in spec.__dict__.items() if k not in ("store", "force")},
        attack=a.name,
        attack_params=dict(a.params),
        eps=eps,
        batch_size=prof.attack_batch,
        n=n,
        home=str(robench_home()),
        device=str(device),
        label=f"{target.card.name} · {a.name}" + ("" if d == DEFAULT_DIRECTION else f" · {d}"),
        extra={"config": config},
        direction=d,
    )


def run(
    spec: RunSpec, progress: bool = True, log: Callable[[str], None] | None = None, executor: Any = "serial"
) -> dict[str, Any]:
    """One target × defence × attacks (the single-model form of ``run_grid``)."""
    return run_grid([spec], progress, log, executor)["runs"][0]


def run_grid(
    specs: list[RunSpec],
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    executor: Any = "serial",
    executor_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan every target × defence (training what is missing, in the driver), hand the cells that
    are not stored yet to the executor, and commit each returned cell in one transaction (the
    driver is the store's only writer)."""
    from robench.engine.executors import Executor, make_executor
    from robench.core.device import tune_cpu_allocator
    from robench.core.progress import progress_bar
    from robench.core.provenance import git_commit, versions

    tune_cpu_allocator()
    if isinstance(executor, str):
        from robench.engine.executors import check_name

        check_name(executor)
    store_path = _one_store(specs)
    plans = [plan(s, progress) for s in specs]
    commit, vers = git_commit(), versions()
    t_run = time.perf_counter()
    compute_total = 0.0
    harness_total = sum(p.items.load_seconds for p in plans)
    by_key: dict[str, tuple[Plan, Any, Attack]] = {}
    with Store(store_path) as store, progress_bar(progress) as bar:
        todo = _pending(store, plans, by_key)
        ex = executor if isinstance(executor, Executor) else None
        if ex is None and todo:
            ex = make_executor(executor, **(executor_options or {}))
        local = {}
        if ex is not None and ex.name == "serial":
            for t in todo:  # in process: reuse the loaded target and items, per-item progress
                p, _, a = by_key[t.key]
                local[t.key] = _local_cell(p, a, t, bar)
        overall = (
            bar.add_task(f"grid ({ex.name})", total=len(todo))
            if (bar and ex is not None and ex.name != "serial")
            else None
        )
        try:
            for t, result in ex.run(todo, local) if ex is not None else []:
                p, entry, a = by_key[t.key]
                compute, harness = _commit(store, t, result, p, entry, a, {"versions": vers, "git_commit": commit}, log)
                compute_total += compute
                harness_total += harness
                if overall is not None:
                    bar.advance(overall, 1)
        finally:
            if ex is not None and not isinstance(executor, Executor):
                ex.close()
        _settle(store, plans)
    seconds = time.perf_counter() - t_run
    for p in plans:
        p.report.update(
            seconds=seconds,
            attack_compute_seconds=compute_total,
            harness_overhead=harness_total / compute_total if compute_total > 0 else None,
        )
    return {
        "runs": [p.report for p in plans],
        "seconds": seconds,
        "executor": ex.name if ex is not None else "none",
        "store": str(store_path),
    }


def _one_store(specs: list[RunSpec]) -> Path:
    """The store every spec writes (one grid, one store: the driver is its only writer)."""
    stores = {str(Path(s.store) if s.store else default_store()) for s in specs}
    if len(stores) != 1:
        raise RobenchError(f"one grid writes one store, got {sorted(stores)}")
    return Path(stores.pop())


def _pending(store: Store, plans: list[Plan], by_key: dict) -> list:
    """Each plan's cells into its report; the tasks not stored yet (or reopened) into ``by_key``."""
    todo = []
    for p in plans:
        store.record_weights(weights_records(p.target))
        for t, a in zip(p.tasks, p.attacks):
            entry = {"key": t.key, "attack": a.name, "direction": t.direction, "repr": repr(a)}
            p.report["cells"].append(entry)
            done = store.status(t.key) == "done"
            if done and p.spec.escalate and _reopens(store.cell_flags(t.key), p.spec.escalate):
                entry["reopened"] = "not converged at a smaller --escalate"  # replaced when it is committed
            elif done and p.spec.keep_images == "all" and not store.has_images(t.key):
                entry["reopened"] = "stored without its images (--keep-images)"
            if not p.spec.force and done and "reopened" not in entry:
                entry["status"] = "cached"
            else:
                todo.append(t)
                by_key[t.key] = (p, entry, a)
    return todo


def _commit(store: Store, t, result, p: Plan, entry: dict, a: Attack, prov: dict, log) -> tuple[float, float]:
    """Commit one returned cell (or its failure) in one transaction and fill its report entry;
    the attack's compute seconds and the harness's."""
    t_commit = time.perf_counter()
    # where it ran: provenance beside the key, never in it (an executor reports its worker's)
    ran_on = result.get("device") if isinstance(result, dict) else None
    if ran_on is None and t.device != p.report["device"].get("device"):
        # a cell that failed before saying where it ran: the device it was sent to
        # (a Ray GPU cell), not the driver's
        ran_on = {"device": t.device, "reported": False}
    # with the speed options and their agreement check (how it ran: provenance too)
    speed = {"speed": p.report["speed"]} if p.report.get("speed") else {}
    cell = {
        "config": t.extra["config"],
        **prov,
        "device": {**(ran_on or p.report["device"]), **speed},
    }
    if isinstance(result, BaseException) or "failed" in result:
        msg = str(result) if isinstance(result, BaseException) else result["failed"]
        store.record_failure(t.key, cell, msg)
        entry.update(status="failed", error=msg)
        if log:
            log(f"cell {t.label} failed: {msg}")
        return 0.0, 0.0
    record = result["record"]
    images = record.pop("images", None)
    if images is not None:  # content-addressed files first: the rows name them
        from robench.engine.cell import direction_signs
        from robench.engine.images import images_folder, keep_rows

        keep_rows(
            result["rows"],
            images,
            p.items,
            direction_signs(t.direction, p.items)[0].numpy(),
            p.target.lower_better,
            p.spec.keep_images,
            images_folder(store.path),
            p.eps,
        )
    if result.get("attempts", 1) > 1:  # a worker died and Ray re-ran the cell: say so
        record = {**record, "flags": {**(record.get("flags") or {}), "retried": result["attempts"] - 1}}
        entry["retried"] = result["attempts"] - 1
    written = store.commit_cell(
        t.key,
        {**cell, **record},
        result["rows"],
        replace=p.spec.force or "reopened" in entry,
        before_commit=_fault_hook(a.name),
    )
    wall = result.get("wall", record["seconds"]) + (time.perf_counter() - t_commit)
    entry.update(status="done" if written else "cached", seconds=wall, attack_seconds=record["attack_seconds"])
    return record["attack_seconds"], wall - record["attack_seconds"]


def _settle(store: Store, plans: list[Plan]) -> None:
    """The cross-cell checks of each plan's stored cells, then each report entry's stored state."""
    for p in plans:
        cross_cell_checks(store, [c["key"] for c in p.report["cells"] if c.get("status") in ("done", "cached")])
    table = store.cells(status=None)
    for p in plans:
        for entry in p.report["cells"]:
            row = table[table["key"] == entry["key"]]
            if len(row):
                r = row.iloc[0]
                entry.update(summary=r["summary"], flags=r["flags"], status_in_store=r["status"])


def _reopens(flags: dict[str, Any] | None, escalate: int) -> bool:
    """A stored cell flagged not converged whose run allowed fewer budget doublings than this
    one: computed again (with the larger cap) and replaced, so ``--escalate`` upgrades a store."""
    flags = flags or {}
    return bool(flags.get("not_converged")) and int((flags.get("convergence") or {}).get("escalate", 0)) < int(escalate)


def _local_cell(p: Plan, attack: Attack, task, bar) -> Callable[[], dict[str, Any]]:
    def go() -> dict[str, Any]:
        t0 = time.perf_counter()
        prog = bar.add_task(task.label, total=len(p.items)) if bar else None
        tick = (lambda k: bar.advance(prog, k)) if bar else None
        out = cell_result(
            task.key,
            p.target,
            attack,
            p.items,
            p.eps,
            task.batch_size,
            tick,
            escalate=p.spec.escalate,
            direction=task.direction,
            keep_images=p.spec.keep_images,
        )
        out["wall"] = time.perf_counter() - t0
        return out

    return go


def _fault_hook(attack_name: str):
    """Fault injection for the crash tests: ``ROBENCH_FAULT=kill-before-commit:<attack>`` sends
    SIGKILL to this process inside the cell's transaction, after its rows are written."""
    from robench.core.faults import armed, fault

    point = f"kill-before-commit:{attack_name}"
    return (lambda: fault(point)) if armed(point) else None


def run_config(config: RunConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a :class:`RunConfig` (the CLI's flags, a config file and ``robench.run`` all end here):
    resolve it, run its grid, and write the resolved config beside the store as
    ``<store>-runs/<digest>/config.toml`` (``robench run --config`` of it reproduces the run)."""
    from robench.core.provenance import git_commit

    resolved = config.resolve()
    specs = resolved.specs()
    store_path = Path(resolved.store) if resolved.store else default_store()
    text = resolved.to_toml()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = run_grid(specs, progress, log, executor=resolved.executor, executor_options=resolved.executor_options)
    folder = store_path.parent / f"{store_path.stem}-runs" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    tmp = path.with_name(f".config.toml.{os.getpid()}.tmp")
    tmp.write_text(
        "# the resolved run configuration: robench run --config <this file> reproduces the run\n"
        + resolved.to_toml(header={"version": __version__, "git_commit": git_commit() or "unknown"})
    )
    os.replace(tmp, path)
    out["config"] = str(path)
    for r in out["runs"]:
        r["config"] = str(path)
    return out
