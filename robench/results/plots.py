"""Plots (matplotlib, PDF + PNG, TrueType fonts so PDFs embed text as text: ``pdf.fonttype`` 42).

* ``sweep``: metric vs ε, one panel per target (× attack), one line per defence (≤ 6 a panel),
  95 % bootstrap bands, the legend outside the panels;
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

from robench.core import flags as FL
from robench.core.errors import RobenchError
from robench.core.stats import bound_summary  # noqa: F401  (plots.bound_summary: the plot and report read it)
from robench.results.labels import BASE, recipe_declares


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
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
    b.text(
        0.02,
        0.04,
        f"bound held on {sm['held']}/{sm['n_batches']} batches; non-vacuous (bound < R) on "
        f"{sm['non_vacuous']}/{sm['n_batches']} ({100 * sm['non_vacuous_fraction']:.0f} %)",
        transform=b.transAxes,
        fontsize=7,
    )
    for ax in (a, b):
        if log_y:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(stem))


def read_heldout(path: str | Path) -> list[dict[str, Any]]:
    """The held-out evaluations of a recipe's run (``steps.json``'s ``heldout``; empty when the
    run was not monitored)."""
    p = Path(path)
    if p.is_dir():
        p = p / "steps.json"
    read_steps(p)  # the same refusals for a missing or malformed log
    return list(json.loads(p.read_text()).get("heldout") or [])


def _stop_line(log: str | Path, held: list[dict[str, Any]], last: int) -> tuple[int, str]:
    """Where and why the run ended, as its log records it (``stopped``: settled by the held-out
    rule, the scale guard, the cap); older logs without it: a settled evaluation, else the cap."""
    p = Path(log)
    rec = json.loads((p / "steps.json" if p.is_dir() else p).read_text())
    why, at = rec.get("stopped"), rec.get("stopped_at")
    names = {"settled": "settled", "scale-collapse": "scale guard", "cap": "cap"}
    if why in names:
        at = int(at if at is not None else last)
        kept = ((rec.get("scale_guard") or {}).get("collapsed") or {}).get("kept_step")
        return at, f"{names[why]} at {at}" + (f" (weights of step {kept} kept)" if kept is not None else "")
    settled = [r["step"] for r in held if r.get("settled")]
    end = settled[0] if settled else last
    return end, ("settled" if settled else "cap") + f" at {end}"


def plot_training(log: str | Path, stem: str | Path) -> list[str]:
    """A recipe's fine-tune as it ran: (a) the training loss per step and its EMA-20, (b) the
    held-out objective the stopping rule watches (each evaluation and its EMA, the step where it
    settled or the cap), (c) the clean scale the collapse guard watches (SD ratio to step 0 and
    calibrated R² on its val items)."""
    steps, held = read_steps(log), read_heldout(log)
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.2))
    s = np.array([r["step"] for r in steps])
    loss = np.array([r["loss"] for r in steps])
    a.plot(s, loss, lw=0.8, alpha=0.6, label="batch loss")
    a.plot(s, ema(loss, 20), lw=1.6, label="EMA-20")
    a.set(xlabel="step", ylabel="training loss", title="(a) training objective")
    if held:
        hs = np.array([r["step"] for r in held])
        b.plot(hs, [r["loss"] for r in held], "o", ms=3, alpha=0.6, label="held-out objective")
        b.plot(hs, [r["ema"] for r in held], "-o", ms=2, lw=1.6, label="its EMA (the stopping rule's)")
        x, why = _stop_line(log, held, int(s.max()))
        b.axvline(x, color="0.3", ls="--", lw=1.0, label=why)
        c.plot(hs, [r.get("clean_sd_ratio", np.nan) for r in held], "-o", ms=2, lw=1.4, label="clean SD / step-0 SD")
        c.plot(hs, [r.get("clean_r2", np.nan) for r in held], "-o", ms=2, lw=1.4, label="calibrated R²")
    else:
        b.text(0.5, 0.5, "not monitored (no held-out split)", ha="center", transform=b.transAxes, fontsize=8)
    b.set(xlabel="step", ylabel="held-out objective", title="(b) held-out objective")
    c.set(xlabel="step", title="(c) clean scale")
    for ax in (a, b, c):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(stem))


# --------------------------------------------------------------------------------------------
# metric vs ε


#: most lines one sweep panel carries; a target with more defences is split over further panels
MAX_LINES = 6
_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<")  # 9 vs 10 colours: 90 distinct (colour, marker) pairs


def defence_styles(defences) -> dict[str, dict[str, Any]]:
    """One (colour, marker) per defence label, fixed by the order given, the same in every panel."""
    return {
        d: {"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)]}
        for i, d in enumerate(dict.fromkeys(defences))
    }


def facet_chunks(defences: list[str], max_lines: int = MAX_LINES, keep: str | None = None) -> list[list[str]]:
    """Split one target's defence lines into panels of at most ``max_lines``, as evenly as
    possible; ``keep`` (the undefended base, when present) is repeated in every panel as the
    reference line."""
    if len(defences) <= max_lines:
        return [list(defences)]
    ref = [keep] if keep in defences else []
    rest = [d for d in defences if d not in ref]
    per = max_lines - len(ref)
    n = -(-len(rest) // per)
    size = -(-len(rest) // n)
    return [ref + rest[i : i + size] for i in range(0, len(rest), size)]


def sweep_series(rep, kind: str = "pairs") -> list[dict[str, Any]]:
    """The points of the metric-vs-ε figure, one series per row (target × defence) × attack:
    ``target`` (the row's label without its defence, with its setting when the store mixes
    several), ``defence`` (its label), ``attack``, ``eps`` (0 = clean, then the cell's ε in /255),
    ``y`` (the metric), and ``lo``/``hi`` — the 95 % bootstrap interval the reporter's resampling
    unit gives at every point (NaN where it has none)."""
    from robench.results.labels import attack_order
    from robench.core.stats import bootstrap_ci, mean_weighted, srocc_weighted

    out = []
    rows = rep.rows(kind)
    for a in attack_order(c.attack for c in rep.cells if c.row in rows):
        for row in rows:
            c = rep.cell(row, a)
            if c is None:
                continue
            cl = rep.units(c)[0]  # the report's resampling unit (photo or item)
            ys, lo, hi = [], [], []
            for q in [c.q_clean] + list(c.q_adv):
                ys.append(c.metric_of(q))
                if kind == "pairs":
                    band = bootstrap_ci(
                        q, c.mos, stat=srocc_weighted, n_resamples=rep.n_boot, seed=rep.seed, clusters=cl
                    )
                else:
                    band = bootstrap_ci(
                        c.item_values(q), stat=mean_weighted, n_resamples=rep.n_boot, seed=rep.seed, clusters=cl
                    )
                lo.append(band[0])
                hi.append(band[1])
            label = rep.label(row)
            out.append(
                {
                    "target": " · ".join(label[:-1]),
                    "defence": label[-1],
                    "attack": a,
                    "eps": [0.0] + [float(e) for e in c.eps],
                    "y": ys,
                    "lo": lo,
                    "hi": hi,
                }
            )
    return out


def _eps_axis(ax, eps: list[float]) -> None:
    """Ticks at every ε of the run; a symlog axis when a geometric budget ladder would crowd the
    small budgets on a linear one (linear below the smallest non-zero ε, so ε = 0 stays on it)."""
    eps = sorted(set(eps))
    nz = [e for e in eps if e > 0]
    span = (eps[-1] - eps[0]) or 1.0
    gaps = np.diff(eps) if len(eps) > 1 else np.array([span])
    if nz and len(nz) > 2 and gaps.min() < span / 12 and nz[-1] / nz[0] >= 8:
        ax.set_xscale("symlog", linthresh=nz[0], linscale=0.6)
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:g}" for e in eps], fontsize=7)
    ax.minorticks_off()


def draw_sweep(
    series: list[dict[str, Any]],
    stem: Path,
    *,
    metric: str = "SROCC",
    note: str = "",
    max_lines: int = MAX_LINES,
    setting: str = "",
) -> list[str]:
    """The metric-vs-ε figure from :func:`sweep_series` points: one panel per target (per attack
    when the series hold several), one line per defence with the same colour and marker in
    every panel, at most ``max_lines`` lines a panel (more: the target is split, "birqa (1/2)",
    the base repeated in each part), ticks at every ε of the run, a band wherever the series
    carry a finite interval, and one legend outside the panels, right of the grid."""
    from robench.results.labels import BASE_LABEL

    if not series:
        return []
    plt = _plt()
    attacks = list(dict.fromkeys(s["attack"] for s in series))
    defences = list(dict.fromkeys(s["defence"] for s in series))
    if BASE_LABEL in defences:  # the reference first: the same colour (blue, circles) in every figure
        defences.remove(BASE_LABEL)
        defences.insert(0, BASE_LABEL)
    style = defence_styles(defences)
    all_eps = sorted({e for s in series for e in s["eps"]})
    panels = _sweep_panels(series, attacks, defences, max_lines)
    fig, axes, slots = _panel_grid(plt, panels, attacks)
    nrow = axes.shape[0]
    banded = False
    for ax, (_, title, ss) in zip(slots, panels):
        for s in ss:
            banded |= _draw_series(ax, s, style[s["defence"]])
        ax.set_title(title, fontsize=8)
        _eps_axis(ax, all_eps)
        ax.set_xlabel("ε (/255, 0 = clean)", fontsize=8)
        ax.tick_params(labelleft=True)
    for r in range(nrow):
        axes[r, 0].set_ylabel(metric)
    handles = [
        plt.Line2D([], [], color=style[d]["color"], marker=style[d]["marker"], ms=5, lw=1.3, label=d) for d in defences
    ]
    fig.suptitle(
        f"{metric} vs attack budget ε"
        + (f" — {attacks[0]}" if len(attacks) == 1 else "")
        + (" (bands: 95 % bootstrap CI" + (f", {note}" if note else "") + ")" if banded else "")
        + (f"\n{setting}" if setting else ""),
        fontsize=9,
    )
    fig.tight_layout()
    # right of the whole grid, in figure coordinates: never over a panel (bbox_inches="tight" keeps it)
    fig.legend(
        handles=handles,
        title="defence",
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    return _save(fig, stem)


def _sweep_panels(series: list[dict], attacks: list, defences: list, max_lines: int) -> list[tuple]:
    """(attack, title, [series]) in attack order, target order, chunk order."""
    from robench.results.labels import BASE_LABEL

    panels = []
    for a in attacks:
        mine = [s for s in series if s["attack"] == a]
        for t in dict.fromkeys(s["target"] for s in mine):
            by_def = {s["defence"]: s for s in mine if s["target"] == t}
            order = [d for d in defences if d in by_def]
            chunks = facet_chunks(order, max_lines, keep=BASE_LABEL)
            for i, ch in enumerate(chunks):
                title = t + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else "")
                if len(attacks) > 1:
                    title += f"\n{a}"
                panels.append((a, title, [by_def[d] for d in ch]))
    return panels


def _panel_grid(plt, panels: list[tuple], attacks: list):
    """The figure and its axes, every attack starting a new row of panels; the panels' axes in order."""
    per_attack = [sum(p[0] == a for p in panels) for a in attacks]
    ncol = min(4, max(per_attack))
    rows_of = [-(-n // ncol) for n in per_attack]
    nrow = sum(rows_of)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 2.7 * nrow), squeeze=False, sharey=True)
    slots = []
    r0 = 0
    for n, nr in zip(per_attack, rows_of):
        slots += [axes[r0 + k // ncol, k % ncol] for k in range(n)]
        for k in range(n, nr * ncol):
            axes[r0 + k // ncol, k % ncol].axis("off")
        r0 += nr
    return fig, axes, slots


def _draw_series(ax, s: dict, st: dict) -> bool:
    """One defence's line, and its band where the series carry a finite interval (True if drawn)."""
    xs, ys = np.asarray(s["eps"], float), np.asarray(s["y"], float)
    ax.plot(xs, ys, color=st["color"], marker=st["marker"], ms=4, lw=1.3, label=s["defence"])
    lo, hi = s.get("lo"), s.get("hi")
    if lo is None or hi is None:
        return False
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():  # only where an interval exists; nothing drawn in its place elsewhere
        return False
    ax.fill_between(
        xs, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), where=ok, color=st["color"], alpha=0.10, lw=0
    )
    return True


def plot_sweep(rep, stem: Path, kind: str = "pairs") -> list[str]:
    """Metric vs ε faceted by target (:func:`draw_sweep`): one panel per target (× attack), one
    line per defence, clean at ε = 0, 95 % bootstrap bands. Returns the written file names."""
    series = sweep_series(rep, kind)
    metric = "SROCC" if kind == "pairs" else "2AFC accuracy"
    cells = [c for c in rep.cells if c.kind == kind]
    where = "; ".join(sorted({f"{c.dataset}/{c.split}" for c in cells}))
    n = "/".join(str(x) for x in sorted({c.n for c in cells}))
    seeds = ",".join(str(x) for x in sorted({c.seed for c in cells}))
    protocol = getattr(rep, "protocol", None)
    setting = f"{protocol + ' · ' if protocol else ''}{where}, {n} items, seed {seeds}" if cells else ""
    return draw_sweep(series, stem, metric=metric, note=f"{rep.n_boot} resamples", setting=setting)


#: the leaderboard figure needs this many undefended targets (fewer: the sweep plot says it all)
LEADERBOARD_MIN_TARGETS = 4


def leaderboard_series(rep) -> list[dict[str, Any]]:
    """Per undefended target of ``rep`` (one protocol): SROCC clean and, per stored ε, the lowest
    SROCC over its attacks at that ε; sorted most robust first (by the value at the largest ε)."""
    from robench.results.labels import BASE, attack_order

    out = []
    for row in rep.rows("pairs", lambda c: c.defense == BASE and not c.inference):
        attacks = attack_order(c.attack for c in rep.cells if c.row == row)
        cells = [c for c in (rep.cell(row, a) for a in attacks) if c is not None]
        if not cells:
            continue
        eps = sorted({e for c in cells for e in c.eps})
        worst = [min(c.metric(e) for c in cells if c.eps_index(e) is not None) for e in eps]
        flagged = sorted({f for c in cells for f in FL.active(c.flags)})
        out.append({"target": row[0], "clean": cells[0].clean_metric(), "eps": eps, "worst": worst, "flags": flagged})
    # a target without the largest stored ε ranks after those with it
    top = max((s["eps"][-1] for s in out), default=0.0)
    return sorted(out, key=lambda s: (s["eps"][-1] < top, -s["worst"][-1]))


def plot_leaderboard(rep, stem: Path) -> list[str]:
    """One panel: each undefended target's SROCC against ε under its worst attack (clean at 0),
    most robust first in the legend; nothing when the store holds fewer than
    LEADERBOARD_MIN_TARGETS targets."""
    series = leaderboard_series(rep)
    if len(series) < LEADERBOARD_MIN_TARGETS:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cmap = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    for i, s in enumerate(series):
        x, y = [0.0, *s["eps"]], [s["clean"], *s["worst"]]
        codes = f" [{','.join(s['flags'])}]" if s["flags"] else ""
        ax.plot(x, y, marker="os^vDP<>"[i % 8], ms=4, lw=1.3, color=cmap(i % 20), label=f"{s['target']}{codes}")
    _eps_axis(ax, sorted({0.0, *(e for s in series for e in s["eps"])}))
    ax.set_xlabel("ε (/255 of [0, 1])")
    ax.set_ylabel("SROCC under the worst attack")
    cells = [c for c in rep.cells if c.kind == "pairs"]
    n = "/".join(str(x) for x in sorted({c.n for c in cells}))
    ax.set_title(f"{getattr(rep, 'protocol', '')}: {n} items, each target's strongest attack per ε", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="most robust first [flags]")
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
        raise RobenchError(
            f"none of the benchmarked models ({', '.join(r['model'] for r in data['results'])}) has a "
            "clean SROCC in the store"
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    pmax = max(p[2] for p in pts) or 1
    for name, ips, params, acc in pts:
        ax.scatter(ips, acc, s=30 + 600 * params / pmax, alpha=0.6)
        ax.annotate(f"{name}\n{params / 1e6:.1f} M", (ips, acc), fontsize=7, ha="center", va="bottom")
    ax.set_xscale("log")
    dev = data.get("machine", {}).get("gpu") or data.get("machine", {}).get("processor", "cpu")
    ax.set(
        xlabel=f"images / s ({data.get('size', '?')}, batch {data.get('batch', '?')}, {dev})",
        ylabel="clean SROCC",
        title="accuracy vs speed (area ∝ parameters)",
    )
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
    """Every plot the store supports: sweeps, training curves of the recipes' runs and Theorem-1
    plots of AAT runs whose logs exist, and
    accuracy vs speed when a benchmark file is given. Returns paths (under ``rename_to``)."""
    names: list[str] = []
    for kind in ("pairs", "2afc"):
        names += plot_sweep(rep, folder / f"sweep-{kind}", kind)
    for sha, w in rep.weights.items():
        run = w["provenance"].get("run")
        if not (run and (Path(run) / "steps.json").is_file()):
            continue
        if w["provenance"].get("recipe"):
            names += plot_training(run, folder / f"training-{w['name']}-{sha[:8]}")
        if recipe_declares(w["provenance"].get("recipe"), "logs_bound", False):
            names += plot_bound(run, folder / f"bound-{w['name']}-{sha[:8]}")
    if bench is not None:
        names += plot_speed(bench, clean_accuracy(rep.cells), folder / "speed")
    base = rename_to if rename_to is not None else folder
    return [str(base / n) for n in names]
