"""Benchmarks (``robench bench ...``): measured side by side in one process, so ratios compare
like with like. Figures depend on the machine; the JSON output names it."""

from __future__ import annotations

import os
import platform
import time
from functools import partial
from typing import Any

import torch

from robench.core.target import count_parameters


def machine(device: "str | torch.device" = "cpu") -> dict[str, Any]:
    from robench.core.device import device_record

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info.update(device_record(device))  # the device measured (and its GPU)
    return info


def _device_and_sync(device):
    """The resolved device (auto | cpu | cuda | cuda:N) and what waits for its queued work."""
    from robench.core.device import resolve_device

    device = resolve_device(device)
    return device, ((lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None))


def _random_pair(
    batch: int, w: int, h: int, seed: int = 0, device: "str | torch.device" = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded ``batch×3×h×w`` reference and a mildly noisy distorted copy (speed does not
    depend on content)."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(batch, 3, h, w, generator=gen).to(device)
    dist = (ref + 0.05 * torch.randn(batch, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    return ref, dist


def _time_step(f, dist: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds of one attack step of the bound target ``f`` (forward and ∂q/∂x), and q, ∂q/∂x."""
    t0 = time.perf_counter()
    x = dist.clone().requires_grad_(True)
    q = f(x)
    (g,) = torch.autograd.grad(q.sum(), x)
    return time.perf_counter() - t0, q.detach(), g


def speed(
    models: list[str],
    size: tuple[int, int] = (512, 384),
    batch: int = 1,
    rounds: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
    reference: str | None = None,
) -> dict[str, Any]:
    """Images per second, end to end (analytic features included), for each model on random
    ``batch×3×H×W`` pairs; rounds interleave the models so drift hits all alike."""
    from robench.models import load_model

    device, sync = _device_and_sync(device)
    w, h = size
    ref, dist = _random_pair(batch, w, h, seed, device)
    # speed does not depend on weight values: random initialisation needs no weight files
    targets = {m: load_model(m, weights="none", device=device) for m in models}
    times = {m: 0.0 for m in models}
    with torch.inference_mode():
        for m, t in targets.items():
            for _ in range(warmup):
                t(dist, ref)
        sync()
        for _ in range(rounds):
            for m, t in targets.items():
                t0 = time.perf_counter()
                t(dist, ref)
                sync()
                times[m] += time.perf_counter() - t0
    rows = []
    for m, t in targets.items():
        rows.append(
            {
                "model": m,
                "images_per_s": rounds * batch / times[m],
                "seconds_per_image": times[m] / (rounds * batch),
                "parameters": count_parameters(t) - count_parameters(t.calibration),
            }
        )
    # speed relative to a reference model of the run (the paper compares with TOPIQ-FR)
    ref_row = next((r for r in rows if r["model"] == reference), None)
    if reference is not None:
        for r in rows:
            r[f"ratio_to_{reference}"] = r["images_per_s"] / ref_row["images_per_s"] if ref_row else None
    return {"size": f"{w}x{h}", "batch": batch, "rounds": rounds, "machine": machine(device), "results": rows}


def attack_step(
    model: str,
    size: tuple[int, int] = (224, 224),
    batch: int = 8,
    rounds: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """One PGD step (forward, ∂q/∂x, signed update), three ways, interleaved round by round:

    * ``naive``: the harness's settings (eval mode, frozen parameters, ``autograd.grad`` w.r.t.
      the image) with the reference branch recomputed every step;
    * ``cached``: the same with the reference branch computed once (``Target.reference``); the
      goal figure is ``ratio = cached / naive`` (caching alone);
    * ``textbook``: the loop most attack code writes — the model as loaded (parameters
      requiring grad), ``target(x, ref)`` and ``loss.backward()`` — for context
      (``ratio_vs_textbook``: everything the harness saves together).

    The largest score and gradient differences between naive and cached are reported: caching
    changes where the work is done, not what is computed."""
    from robench.attacks import ModeGuard
    from robench.models import load_model

    device, sync = _device_and_sync(device)
    w, h = size
    ref, dist = _random_pair(batch, w, h, seed, device)
    target = load_model(model, weights="none", device=device)
    trainable = [p for p in target.parameters() if p.requires_grad]
    times: dict[str, list[float]] = {"naive": [], "cached": [], "textbook": []}
    results = {}
    with ModeGuard(target):
        # one bind per attack (the cached path computes the reference branch here, once)
        bound = {mode: target.bind(ref, cache=(mode == "cached")) for mode in ("naive", "cached")}
        for i in range(warmup + rounds):
            for mode in times:
                t0 = time.perf_counter()
                x = dist.clone().requires_grad_(True)
                if mode == "textbook":
                    for p in trainable:
                        p.requires_grad_(True)
                    target.orient(target(x, ref)).sum().backward()
                    g = x.grad
                else:
                    q = bound[mode](x)
                    (g,) = torch.autograd.grad(q.sum(), x)
                    results[mode] = (q.detach(), g)
                (x.detach() + (2 / 255) * g.sign()).clamp_(0, 1)
                sync()
                if i >= warmup:
                    times[mode].append(time.perf_counter() - t0)
                if mode == "textbook":
                    for p in trainable:
                        p.grad = None
                        p.requires_grad_(False)
        t0 = time.perf_counter()
        target.bind(ref, cache=True)
        sync()
        ref_seconds = time.perf_counter() - t0
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    (qn, gn), (qc, gc) = results["naive"], results["cached"]
    return {
        "model": model,
        "size": f"{w}x{h}",
        "batch": batch,
        "rounds": rounds,
        "machine": machine(device),
        "naive_step_s": med["naive"],
        "cached_step_s": med["cached"],
        "textbook_step_s": med["textbook"],
        "ratio": med["cached"] / med["naive"],
        "ratio_vs_textbook": med["cached"] / med["textbook"],
        "reference_once_s": ref_seconds,
        "max_abs_score_diff": float((qn - qc).abs().max()),
        "max_abs_grad_diff": float((gn - gc).abs().max()),
        "grad_scale": float(gn.abs().max()),
    }


def peak_gflops(threads: int, rounds: int = 3) -> dict[str, float]:
    """The machine's measured fp32 peak at ``threads`` threads: a 2048³ matmul, and a 3×3
    convolution (128 channels, 32×32, batch 32, channels-last: oneDNN's fastest layout here)
    forward. The best of ``rounds``; what a step's GFLOP/s is compared with."""
    import torch.nn.functional as F

    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        x = torch.randn(32, 128, 32, 32).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3).contiguous(memory_format=torch.channels_last)
        out = {}
        for name, fn, flop in (
            ("matmul", lambda: a @ b, 2 * 2048**3),
            ("conv3x3", lambda: F.conv2d(x, w, padding=1), 2 * 32 * 128 * 128 * 9 * 32 * 32),
        ):
            fn()
            best = min(_timed(fn) for _ in range(rounds))
            out[name] = flop / best / 1e9
        return out
    finally:
        torch.set_num_threads(was)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_flops(f, x: torch.Tensor) -> float:
    """Matmul and convolution FLOPs of one forward + ∂q/∂x (torch.utils.flop_counter; element-wise
    work is not counted, so GFLOP/s understates what a memory-bound step does)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        x = x.clone().requires_grad_(True)
        f(x).sum().backward()  # (the counter's hooks refuse autograd.grad on a leaf)
    return float(counter.get_total_flops())


def kernels(
    models: list[str],
    sizes: list[tuple[int, int]] = ((128, 128), (512, 384)),
    batch: int = 32,
    threads: list[int] = (1, 2),
    rounds: int = 5,
    seed: int = 0,
    batch_large: int = 8,
    log: Any = None,
    isolated: bool = False,
) -> dict[str, Any]:
    """The attack step (forward of the distorted branch + ∂q/∂x, reference branch cached) of each
    target, today's code path beside the new one, interleaved round by round in this process:

    * ``reference``: the textbook kernels (robench.models.kernels.reference_kernels) and glibc's
      default allocator (robench.core.device.tune_cpu_allocator(False));
    * ``fast``: robench's kernels and the tuned allocator (what a run uses).

    Per model × size × threads: median seconds per image, the speed-up, matmul/conv GFLOP per
    image and the achieved GFLOP/s of each path against the machine's measured peak, and the
    largest relative score and gradient differences between the paths (≤ 1e-5: a test holds the
    kernels to it). Sizes over 256×256 px use ``batch_large`` (TOPIQ-FR's step at 512×384 and
    batch 32 needs more than the 24 GiB of the reference machine). ``isolated`` also times each
    path in a process of its own (:func:`isolated_step`)."""
    from robench.attacks import ModeGuard
    from robench.core.device import tune_cpu_allocator
    from robench.models import load_model
    from robench.models import reference_kernels

    was = torch.get_num_threads()
    out: dict[str, Any] = {
        "batch": batch,
        "batch_large": batch_large,
        "rounds": rounds,
        "machine": machine("cpu"),
        "peaks": {},
        "results": [],
    }
    try:
        for nt in threads:
            out["peaks"][str(nt)] = peak_gflops(nt)
        for w, h in sizes:
            bsz = batch if w * h <= 256 * 256 else batch_large
            ref, dist = _random_pair(bsz, w, h, seed)
            for name in models:
                target = load_model(name, weights="none")
                with ModeGuard(target):
                    bound = {}
                    for mode in ("reference", "fast"):
                        with reference_kernels(mode == "reference"):
                            bound[mode] = target.bind(ref, cache=True)
                    flops = step_flops(bound["fast"], dist)
                    for nt in threads:
                        torch.set_num_threads(nt)
                        row = _kernel_row(name, bound, dist, (w, h), bsz, nt, rounds, flops, out["peaks"][str(nt)])
                        if isolated:
                            iso = {
                                m: isolated_step(name, (w, h), bsz, nt, m, rounds, seed) for m in ("reference", "fast")
                            }
                            row.update(
                                isolated_reference_ms_per_image=1e3 * iso["reference"],
                                isolated_fast_ms_per_image=1e3 * iso["fast"],
                                isolated_speedup=iso["reference"] / iso["fast"],
                            )
                        out["results"].append(row)
                        if log is not None:
                            log(_kernel_line(row, isolated))
                del target, bound
    finally:
        torch.set_num_threads(was)
        tune_cpu_allocator(True)
    return out


def _kernel_row(name, bound: dict, dist, size, bsz: int, nt: int, rounds: int, flops: float, peak: dict) -> dict:
    """One model × size × threads: both paths' steps interleaved round by round (round 0 warms up)."""
    from robench.core.device import tune_cpu_allocator
    from robench.models import reference_kernels

    times: dict[str, list[float]] = {"reference": [], "fast": []}
    last = {}
    for r in range(rounds + 1):
        for mode in times:
            tune_cpu_allocator(mode == "fast")
            with reference_kernels(mode == "reference"):
                seconds, q, g = _time_step(bound[mode], dist)
            last[mode] = (q, g)
            if r:
                times[mode].append(seconds)
    med = {m: sorted(v)[len(v) // 2] / bsz for m, v in times.items()}
    (q0, g0), (q1, g1) = last["reference"], last["fast"]
    row = {
        "model": name,
        "size": f"{size[0]}x{size[1]}",
        "batch": bsz,
        "threads": nt,
        "reference_ms_per_image": 1e3 * med["reference"],
        "fast_ms_per_image": 1e3 * med["fast"],
        "speedup": med["reference"] / med["fast"],
        "gflop_per_image": flops / bsz / 1e9,
    }
    for m in times:
        gf = flops / bsz / med[m] / 1e9
        row[f"{m}_gflops"] = gf
        row[f"{m}_fraction_of_peak"] = gf / max(peak.values())
    row["score_rel_diff"] = float((q0 - q1).abs().max() / q0.abs().max().clamp_min(1e-12))
    row["grad_rel_diff"] = float((g0 - g1).abs().max() / g0.abs().max().clamp_min(1e-12))
    return row


def _kernel_line(row: dict, isolated: bool) -> str:
    return (
        f"{row['model']} {row['size']} batch {row['batch']}, {row['threads']} thread(s): "
        f"{row['reference_ms_per_image']:.1f} → {row['fast_ms_per_image']:.1f} ms/img ({row['speedup']:.2f}×)"
        + (
            f"; own processes {row['isolated_reference_ms_per_image']:.1f} → "
            f"{row['isolated_fast_ms_per_image']:.1f} ({row['isolated_speedup']:.2f}×)"
            if isolated
            else ""
        )
    )


def own_process_step(
    model: str, size: tuple[int, int], batch: int, threads: int, path: str, rounds: int = 5, seed: int = 0
) -> float:
    """Median seconds per image of ``model``'s attack step on one ``path`` ("reference": textbook
    kernels and glibc's default allocator; "fast": what a run uses), in this process: meant to
    run in a fresh one (:func:`isolated_step`)."""
    from robench.attacks import ModeGuard
    from robench.core.device import tune_cpu_allocator
    from robench.models import load_model
    from robench.models import reference_kernels

    tune_cpu_allocator(path == "fast")
    torch.set_num_threads(int(threads))
    target = load_model(model, weights="none")
    ref, dist = _random_pair(batch, size[0], size[1], seed)
    with ModeGuard(target), reference_kernels(path == "reference"):
        f = target.bind(ref, cache=True)
        times = [_time_step(f, dist)[0] for _ in range(int(rounds) + 1)][1:]  # the first warms up
    return sorted(times)[len(times) // 2] / batch


def isolated_step(
    model: str, size: tuple[int, int], batch: int, threads: int, path: str, rounds: int = 5, seed: int = 0
) -> float:
    """:func:`own_process_step` in a fresh Python process: the allocator's state is the process's,
    so only a process of its own shows what each path costs alone (in one process the paths
    share the heap the other left)."""
    import json as _json
    import subprocess
    import sys

    args = _json.dumps([model, list(size), batch, threads, path, rounds, seed])
    code = (
        "import json, sys\nfrom robench.engine.bench import own_process_step\n"
        "print(json.dumps(own_process_step(*json.loads(sys.argv[1]))))"
    )
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return float(_json.loads(out.stdout.strip().splitlines()[-1]))


def grid(
    executors: list[str],
    model: str,
    attack: str,
    cells: int = 8,
    workers: int = 2,
    queries: int = 300,
    n: int = 32,
    image_size: int | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """The same CPU-bound grid — ``cells`` equal cells (a query attack with ``queries`` queries
    on ``n`` test images of the default dataset; the cells differ only by seed) — computed by
    each executor into its own fresh store, wall time end to end (planning, Ray start-up and
    store writes included)."""
    import tempfile
    from pathlib import Path

    from robench.core.config import RunSpec
    from robench.core.device import resolve_device
    from robench.engine.grid import run_grid

    if cells < 1:
        raise ValueError("cells must be ≥ 1")
    ds_opts = {"size": image_size} if image_size else {}
    out: dict[str, Any] = {
        "cells": cells,
        "model": model,
        "attack": f"{attack}, {queries} queries",
        "n": n,
        "image_size": image_size or "profile default",
        "workers": workers,
        "machine": machine(resolve_device(device)),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in executors:
            store = Path(tmp) / f"{name}.sqlite"
            specs = [
                RunSpec(
                    model=model,
                    attacks=[attack],
                    eps=[8],
                    n=n,
                    seed=s,
                    store=store,
                    dataset_options=dict(ds_opts),
                    attack_params={attack: {"queries": queries}},
                    device=device,
                )
                for s in range(cells)
            ]
            opts = {"num_cpus": workers} if name == "ray" else {}
            t0 = time.perf_counter()
            res = run_grid(specs, progress=progress, executor=name, executor_options=opts)
            wall = time.perf_counter() - t0
            done = sum(c["status"] == "done" for r in res["runs"] for c in r["cells"])
            out["results"].append(
                {
                    "executor": name,
                    "seconds": wall,
                    "cells_done": done,
                    "cell_compute_seconds": res["runs"][0]["attack_compute_seconds"],
                }
            )
    base = next((r for r in out["results"] if r["executor"] == "serial"), None)
    for r in out["results"]:
        r["speedup_vs_serial"] = base["seconds"] / r["seconds"] if base else None
    return out


def attack_strength(
    models: list[str],
    attacks: list[str],
    eps: "float | list[float]" = (2.0, 4.0, 8.0),
    n: int = 32,
    profile: str = "quick",
    ref_steps: int = 100,
    ref_restarts: int = 3,
    ref_inertia: float = 0.25,
    seed: int = 0,
    dataset: str | None = None,
    split: str = "test",
    attack_params: dict[str, dict] | None = None,
    curve_steps: tuple[int, ...] = (),
    directions: tuple[str, ...] = ("up", "down"),
    progress: bool = False,
    device: str = "cpu",
    n_resamples: int = 1000,
    log: Any = None,
) -> dict[str, Any]:
    """Each attack at the profile's settings against a converged reference on the same items, per
    target × direction × ε: the reference is restarted many-step PGD on the directed objective
    (restart 0 from δ = 0, the rest random, cosine step with ``ref_inertia`` heavy ball — without
    it a sign walk stalled at 0.42 of the best move on some BiRQA items downwards — best iterate); per
    item the best directed move of the reference *and* every attack measured, so no attack can
    exceed 1.0 by beating a weak reference. ``ratio`` = the attack's mean directed move / that
    best's, with a percentile interval over resampled photos (items when there are too few
    photos; the unit is named). ``directions`` are core.directions names (``up``, ``down``: every
    item moved one way). ``curve_steps``: PGD at k steps for each k (the profile's other settings)."""
    import sys

    from robench.core.config import dataset_options_for
    from robench.core.directions import get_direction
    from robench.core.profiles import get_profile
    from robench.core.registry import ATTACKS, default_dataset
    from robench.engine.items import load_items
    from robench.models import load_model
    from robench.core.stats import bootstrap_units, bootstrap_weights

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    device, _ = _device_and_sync(device)
    prof = get_profile(profile)
    epses = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    dataset = dataset or default_dataset()
    opts = dataset_options_for(dataset, prof, {})
    curve_name = next(a for a in ATTACKS.names() if getattr(ATTACKS.get(a), "convergence_curve", False))
    items = load_items(dataset, split, n, seed, opts)
    x, r = items.dist[:], items.ref[:]
    mos = items.labels.get("mos") if items.kind == "pairs" else None
    clusters, unit = bootstrap_units("auto", items.labels.get("source"), "the items")
    weights = bootstrap_weights(len(items), n_resamples, seed, clusters)
    ref = {"steps": ref_steps, "restarts": ref_restarts, "schedule": "cosine", "inertia": ref_inertia}
    out: dict[str, Any] = {
        "machine": machine(device),
        "eps": epses,
        "directions": list(directions),
        "n": len(items),
        "profile": prof.name,
        "dataset": dataset,
        "split": split,
        "interval": f"95 % {unit}",
        "reference": {"attack": curve_name, **ref, "first": "zero, then random"},
        "references": [],
        "rows": [],
    }
    for name in models:
        target = load_model(name, device=device).eval().requires_grad_(False)
        for direction in directions:
            signs = torch.from_numpy(get_direction(direction).signs(mos, len(items))[0]).float()
            for e255 in epses:
                e = e255 / 255
                run = partial(
                    _strength_run, target=target, x=x, r=r, e=e, signs=signs, prof=prof, overrides=attack_params
                )
                # the reference: the curve attack itself, many steps × starts, through the public API
                ref_run = run(ATTACKS.get(curve_name)(profile=prof.name, seed=seed, **ref, first="zero", patience=0))
                curve = {
                    k: run(ATTACKS.get(curve_name)(profile=prof.name, seed=seed, steps=int(k))) for k in curve_steps
                }
                moves = {
                    a: run(ATTACKS.get(a)(profile=prof.name, seed=seed, **dict((attack_params or {}).get(a, {}))))
                    for a in attacks
                }
                for line in _strength_records(
                    out, name, direction, e255, signs.numpy(), weights, ref_run, moves, curve
                ):
                    log(line)
    return out


def _strength_run(atk, *, target, x, r, e, signs, prof, overrides) -> dict[str, Any]:
    """One attack on the strength items: per-item directed move, time, budget and settings."""
    from robench.core.directions import directed_gain

    t1 = time.perf_counter()
    res = atk(target, x, r, eps=[e], return_images=False, batch_size=prof.attack_batch, signs=signs)
    q_clean, q_adv = (v.numpy() for v in res.oriented(target.lower_better))
    return {
        "g": directed_gain(q_clean, q_adv[0], signs.numpy()),
        "seconds": time.perf_counter() - t1,
        "budget": {k: atk.params[k] for k in atk.budget_params if k in atk.params},
        # what the profile (and any override) set: starts, early exit, …
        "settings": {
            k: atk.params[k] for k in {**atk.budgets.get(prof.name, {}), **dict((overrides or {}).get(atk.name, {}))}
        },
        "kept_clean": int(res.probes.get("kept_clean", [0])[0]),
    }


def _strength_ratio(g, best, m, w) -> tuple[float, float, float]:
    """Mean move of ``g`` over the per-item best on items ``m``, with its resampled interval."""
    import numpy as np

    best_w = w @ best[m]
    b = np.divide(w @ g[m], best_w, out=np.full(len(best_w), np.nan), where=best_w > 0)
    b = b[np.isfinite(b)]
    lo, hi = np.percentile(b, [2.5, 97.5]) if b.size else (float("nan"), float("nan"))
    mb = float(best[m].mean())
    return (float(g[m].mean()) / mb if mb > 0 else float("nan")), float(lo), float(hi)


def _strength_records(out, name, direction, e255, signs, weights, ref_run, moves, curve) -> list[str]:
    """Append one target × direction × ε's rows and reference records to ``out``; the log lines."""
    import numpy as np

    g_ref, ref_seconds = ref_run["g"], ref_run["seconds"]
    best = np.max(np.stack([g_ref] + [v["g"] for v in moves.values()] + [v["g"] for v in curve.values()]), axis=0).clip(
        min=0
    )
    # a mixed direction (mos-split) is also measured on each half: its downward items are
    # the high-MOS ones, where dist ≈ ref and a zero start is weakest
    groups = [("all", np.ones(len(best), bool))]
    if (signs > 0).any() and (signs < 0).any():
        groups += [("up", signs > 0), ("down", signs < 0)]
    lines = []
    for group, m in groups:
        w = weights[:, m]
        ratios = {a: _strength_ratio(v["g"], best, m, w) for a, v in moves.items()}
        curve_ratios = {str(k): _strength_ratio(v["g"], best, m, w)[0] for k, v in curve.items()}
        for a, v in moves.items():
            rt, lo, hi = ratios[a]
            out["rows"].append(
                {
                    "model": name,
                    "direction": direction,
                    "items": group,
                    "eps": e255,
                    "attack": a,
                    "budget": v["budget"],
                    "settings": v["settings"],
                    "n": int(m.sum()),
                    "mean_move": float(v["g"][m].mean()),
                    "ratio": rt,
                    "lo": lo,
                    "hi": hi,
                    "moved": int((v["g"][m] > 0).sum()),
                    "kept_clean": v["kept_clean"],
                    "seconds": round(v["seconds"], 2),
                }
            )
        out["references"].append(
            {
                "model": name,
                "direction": direction,
                "items": group,
                "eps": e255,
                "best_move": float(best[m].mean()),
                "reference_move": float(g_ref[m].mean()),
                "reference_ratio": _strength_ratio(g_ref, best, m, w)[0],
                "reference_seconds": round(ref_seconds, 1),
                "pgd_curve": curve_ratios,
            }
        )
        lines.append(
            f"{name} {direction}{'' if group == 'all' else ' (' + group + ' items)'} ε {e255:g}/255: "
            f"best move {best[m].mean():.4g} (reference {ref_seconds:.0f} s); "
            + ", ".join(f"{a} {v[0]:.3f}" for a, v in ratios.items())
            + ("; PGD curve " + ", ".join(f"{k}: {v:.2f}" for k, v in curve_ratios.items()) if curve else "")
        )
    return lines
