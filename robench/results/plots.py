"""Plots (matplotlib, PDF + PNG, TrueType fonts so PDFs embed text as text: ``pdf.fonttype`` 42).

* ``sweep``: metric vs ε per model × defence, one panel per attack, 95 % bootstrap bands;
* ``bound``: Theorem 1 — theoretical bound vs empirical max error over AAT steps with the batch
  MOS range as a line (a bound above it is vacuous; the panel states the non-vacuous fraction),
  and the anchored loss raw + EMA-20 (paper Fig. 5), from a recipe's ``steps.json``;
* ``speed``: accuracy vs speed with parameter count as marker area (paper Fig. 3), from
  ``robench bench speed --json`` output and the store's clean SROCC.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from robench.core.errors import RobenchError
from robench.results.labels import BASE, recipe_declares


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def _save(fig, stem: Path) -> list[str]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("pdf", "png"):
        p = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: 'bound-birqa.aat' has a dot
        fig.savefig(p, bbox_inches="tight", dpi=150)
        paths.append(p.name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# the bound (paper Fig. 5)


def read_steps(path: str | Path) -> list[dict[str, Any]]:
    """A recipe's per-step log: ``steps.json`` or the run folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / "steps.json"
    if not p.is_file():
        raise RobenchError(f"no training log at {p} (an AAT run folder holds steps.json)")
    try:
        steps = json.loads(p.read_text())["steps"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RobenchError(f"{p} is not a robench steps.json ({exc})") from None
    if not steps:
        raise RobenchError(f"{p} has no logged steps")
    return steps


def ema(x, window: int = 20) -> np.ndarray:
    """Exponential moving average with the span-``window`` rate α = 2/(window+1), seeded by x[0]."""
    x = np.asarray(x, dtype=float)
    a, out = 2.0 / (window + 1), np.empty_like(x)
    for i, v in enumerate(x):
        out[i] = v if i == 0 else a * v + (1 - a) * out[i - 1]
    return out


from robench.defenses.aat import bound_summary  # noqa: E402  (re-exported: plots.bound_summary)


def plot_bound(log: str | Path, stem: str | Path, log_y: bool = False) -> list[str]:
    steps = read_steps(log)
    if "bound" not in steps[0]:
        raise RobenchError(f"{log}: not an AAT log (no 'bound' column); R- and AT- runs log no Theorem-1 terms")
    plt = _plt()
    s = np.array([r["step"] for r in steps])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss = np.array([r["anchored_loss"] for r in steps])
    a.plot(s, loss, lw=0.8, alpha=0.6, label="anchored loss (batch)")
    a.plot(s, ema(loss, 20), lw=1.6, label="EMA-20")
    a.set(xlabel="step", ylabel="anchored loss", title="(a) anchored-loss convergence")
    bound = np.array([r["bound"] for r in steps])
    err = np.array([r["emp_max_err"] for r in steps])
    b.plot(s, bound, lw=1.4, label="Theorem 1 bound δ + Δ + η·R")
    b.plot(s, err, lw=1.0, label="empirical max |ŷ − y|")
    if "mos_range" in steps[0]:  # a bound above this line is vacuous: it allows the labels' whole spread
        b.plot(s, [r["mos_range"] for r in steps], lw=1.0, ls="--", color="0.3", label="batch MOS range R")
    b.set(xlabel="step", ylabel="MOS units", title="(b) bound vs empirical error")
    sm = bound_summary(steps)
    b.text(0.02, 0.04, f"bound held on {sm['held']}/{sm['n_batches']} batches; non-vacuous (bound < R) on "
                       f"{sm['non_vacuous']}/{sm['n_batches']} ({100 * sm['non_vacuous_fraction']:.0f} %)",
           transform=b.transAxes, fontsize=7)
    for ax in (a, b):
        if log_y:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(stem))


# --------------------------------------------------------------------------------------------
# metric vs ε


def plot_sweep(rep, stem: Path, kind: str = "pairs") -> list[str]:
    """One panel per attack; one line per model × defence; clean at ε = 0; bootstrap bands."""
    from robench.results.labels import attack_order, defense_label
    from robench.results.stats import bootstrap_ci, mean_weighted, srocc_weighted

    rows = rep.rows(kind)
    if not rows:
        return []
    attacks = attack_order(c.attack for c in rep.cells if c.row in rows)
    plt = _plt()
    ncol = min(4, len(attacks))
    nrow = -(-len(attacks) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False, sharey=True)
    metric = "SROCC" if kind == "pairs" else "2AFC accuracy"
    for ax, a in zip(axes.ravel(), attacks):
        for row in rows:
            c = rep.cell(row, a)
            if c is None:
                continue
            xs = [0.0] + list(c.eps)
            qs = [c.q_clean] + list(c.q_adv)
            cl = rep.units(c)[0]  # the report's resampling unit (photo or item)
            ys, lo, hi = [], [], []
            for q in qs:
                ys.append(c.metric_of(q))
                if kind == "pairs":
                    band = bootstrap_ci(q, c.mos, stat=srocc_weighted, n_resamples=rep.n_boot, seed=rep.seed, clusters=cl)
                else:
                    band = bootstrap_ci(c.item_values(q), stat=mean_weighted, n_resamples=rep.n_boot, seed=rep.seed,
                                        clusters=cl)
                lo.append(band[0])
                hi.append(band[1])
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{row[0]} {defense_label(row[1])}")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set(title=a, xlabel="ε (/255)")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in axes.ravel()[len(attacks):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(f"{metric} vs attack budget (95 % bootstrap bands, {rep.n_boot} resamples)", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


# --------------------------------------------------------------------------------------------
# accuracy vs speed (paper Fig. 3)


def read_bench(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        rows = data["results"]
        _ = [(r["model"], r["images_per_s"], r["parameters"]) for r in rows]
    except FileNotFoundError:
        raise RobenchError(f"no benchmark file at {p} (write one with `robench bench speed --json > {p}`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RobenchError(f"{p} is not `robench bench speed --json` output ({exc})") from None
    return data


def plot_speed(bench: str | Path, accuracy: dict[str, float], stem: Path) -> list[str]:
    """x: images per second (log), y: clean SROCC from the store, area ∝ parameters."""
    data = read_bench(bench)
    pts = [(r["model"], r["images_per_s"], r["parameters"], accuracy.get(r["model"])) for r in data["results"]]
    pts = [p for p in pts if p[3] is not None and np.isfinite(p[3])]
    if not pts:
        raise RobenchError(f"none of the benchmarked models ({', '.join(r['model'] for r in data['results'])}) has a "
                           "clean SROCC in the store")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    pmax = max(p[2] for p in pts) or 1
    for name, ips, params, acc in pts:
        ax.scatter(ips, acc, s=30 + 600 * params / pmax, alpha=0.6)
        ax.annotate(f"{name}\n{params / 1e6:.1f} M", (ips, acc), fontsize=7, ha="center", va="bottom")
    ax.set_xscale("log")
    dev = data.get("machine", {}).get("gpu") or data.get("machine", {}).get("processor", "cpu")
    ax.set(xlabel=f"images / s ({data.get('size', '?')}, batch {data.get('batch', '?')}, {dev})", ylabel="clean SROCC",
           title="accuracy vs speed (area ∝ parameters)")
    fig.tight_layout()
    return _save(fig, stem)


def clean_accuracy(cells) -> dict[str, float]:
    """Clean SROCC of each model's undefended row (the accuracy axis of the speed plot)."""
    acc: dict[str, float] = {}
    for c in cells:
        if c.kind == "pairs" and c.defense == BASE:
            acc[c.arch] = c.clean_metric()  # cells come oldest first: the latest wins, as in the tables
    return acc


def draw_all(rep, folder: Path, bench: str | Path | None = None, rename_to: Path | None = None) -> list[str]:
    """Every plot the store supports: sweeps, Theorem-1 plots of AAT runs whose logs exist, and
    accuracy vs speed when a benchmark file is given. Returns paths (under ``rename_to``)."""
    names: list[str] = []
    for kind in ("pairs", "2afc"):
        names += plot_sweep(rep, folder / f"sweep-{kind}", kind)
    for sha, w in rep.weights.items():
        run = w["provenance"].get("run")
        if recipe_declares(w["provenance"].get("recipe"), "logs_bound", False) and run and (Path(run) / "steps.json").is_file():
            names += plot_bound(run, folder / f"bound-{w['name']}-{sha[:8]}")
    if bench is not None:
        names += plot_speed(bench, clean_accuracy(rep.cells), folder / "speed")
    base = rename_to if rename_to is not None else folder
    return [str(base / n) for n in names]
