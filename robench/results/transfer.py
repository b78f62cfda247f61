"""The N×N transfer matrices (``robench transfer`` rows) and the certified-interval tables
(``robench certify`` rows), read from the store alone, as report tables, JSON and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from robench.core.directions import directed_gain, item_signs, protocol_of
from robench.core.stats import bootstrap_units, bootstrap_weights

N_BOOT = 1000


def _resamples(sources: np.ndarray, n_boot: int, seed: int) -> tuple[list[np.ndarray], str]:
    """Index arrays of the report's one bootstrap (core.stats, ``auto``): source photos with all
    their items when there are enough photos, else items — with the unit's label."""
    clusters, unit = bootstrap_units("auto", sources, "the transfer items")
    w = bootstrap_weights(len(sources), n_boot, seed, clusters)
    return [np.repeat(np.arange(len(sources)), row) for row in w], unit


def _srocc(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def transfer_data(store, n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """One entry per (source cell, to target, ε): mean directed gain of the to target in units of
    its clean-score SD and SROCC of its scores of the adversarial images vs MOS, each with a 95 %
    interval of the report's one bootstrap (photos when there are ≥ 10, else items; named in
    ``interval``), the same resamples for every entry of one item set."""
    if not _has_table(store, "transfer_runs"):  # a reader: never creates tables in the store it reads
        return []
    runs = store.db.execute(
        "SELECT source_key, to_target, to_weights_sha256, to_lower_better FROM transfer_runs ORDER BY finished"
    ).fetchall()
    if not runs:
        return []
    cells = store.cells(status="done").set_index("key")
    out = []
    resamples: dict[str, tuple[list[np.ndarray], str]] = {}
    for src_key, to, sha, lb in runs:
        if src_key not in cells.index:
            continue
        cell = cells.loc[src_key]
        cfg = cell["config"]
        res = store.results(src_key)
        tr = _transfer_rows(store, src_key, to, sha)
        direction = cfg.get("direction") or "up"
        first = res[np.isclose(res["eps"], res["eps"].iloc[0])].sort_values("item")
        mos = first["mos"].to_numpy(float) if cfg["dataset"]["kind"] == "pairs" else None
        sources = (first["source"].fillna(first["ref_id"]) if "source" in first else first["ref_id"]).to_numpy(str)
        signs = item_signs(direction, mos, len(first))
        if cfg["dataset"]["items_sha256"] not in resamples:
            resamples[cfg["dataset"]["items_sha256"]] = _resamples(sources, n_boot, seed)
        rs, unit = resamples[cfg["dataset"]["items_sha256"]]
        orient = -1.0 if lb else 1.0
        for e, grp in tr.groupby("eps"):
            grp = grp.sort_values("item")
            q0 = orient * grp["clean_score"].to_numpy(float)
            q = orient * grp["score"].to_numpy(float)
            g = directed_gain(q0, q, signs)

            def gain_sd(i):
                sd = np.std(q0[i], ddof=1)
                return float(np.mean(g[i]) / sd) if sd > 0 else float("nan")

            entry = {
                "source": cell["target"],
                "source_key": src_key,
                "attack": cell["attack"],
                "direction": direction,
                "protocol": protocol_of(direction),
                "to": to,
                "to_weights_sha256": sha,
                "eps": float(e),
                "n": int(len(grp)),
                "photos": int(len(np.unique(sources))),
                "interval": f"95 % {unit}",
                "white_box": to == cell["target"],
                "gain_sd": gain_sd(slice(None)),
                "gain_sd_ci": _ci([gain_sd(i) for i in rs]),
            }
            if mos is not None:
                entry.update(
                    srocc=_srocc(q, mos), srocc_clean=_srocc(q0, mos), srocc_ci=_ci([_srocc(q[i], mos[i]) for i in rs])
                )
            out.append(entry)
    return out


def _transfer_rows(store, src_key: str, to: str, sha: str) -> pd.DataFrame:
    """The to target's clean and adversarial scores of one source cell's images, by ε and item."""
    return pd.read_sql_query(
        "SELECT item, eps, clean_score, score FROM transfer_rows WHERE source_key=? AND "
        "to_target=? AND to_weights_sha256=? ORDER BY eps, item",
        store.db,
        params=(src_key, to, sha),
    )


def _ci(vals: list[float]) -> list[float] | None:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None


def _cell(value: float, ci: list[float] | None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def transfer_tables(entries: list[dict[str, Any]]):
    """One table per attack × direction at its largest ε: rows = source, columns = to target.
    Score inflation shows gain/SD; the ranking attack shows SROCC (clean SROCC of each to
    target in the last row)."""
    from robench.results.table import Table

    tables = []
    for attack, direction, e, sel, srcs, tos in _groups(entries):
        stat, what = (
            ("srocc", "SROCC vs MOS of the to target's scores of the adversarial images")
            if direction == "mos-split"
            else ("gain_sd", "mean directed gain of the to target, in units of its clean-score SD")
        )
        data = [
            [
                next((_cell(x[stat], x.get(stat + "_ci")) for x in sel if x["source"] == s and x["to"] == t), "—")
                for t in tos
            ]
            for s in srcs
        ]
        if stat == "srocc":
            data.append([next((f"{x['srocc_clean']:.3f}" for x in sel if x["to"] == t), "—") for t in tos])
            srcs = srcs + ["(clean)"]
        df = pd.DataFrame(data, index=pd.Index(srcs, name="crafted against"), columns=tos)
        n = sorted({x["n"] for x in sel})
        photos = sorted({x["photos"] for x in sel})
        units = sorted({x["interval"] for x in sel})
        tables.append(
            Table(
                f"transfer-{attack}" + ("" if direction == "up" else f"-{direction}"),
                f"Transfer between metrics: {attack}, {protocol_of(direction)}, ε = {e:g}/255",
                df,
                caption=(
                    f"{what}; rows: the target the {attack} images were crafted against (white-box on the "
                    f"diagonal), columns: the target scoring them. Protocol: {protocol_of(direction)}; "
                    f"ε = {e:g}/255 (L∞); {'/'.join(map(str, n))} items over {'/'.join(map(str, photos))} photos; "
                    f"[{'; '.join(units)}]."
                ),
                footnote=(
                    "Gains are directed (sign · (q_adv − q_clean), oriented quality, higher = better for every "
                    "target) and divided by the scoring target's clean-score SD on the same items, so columns of "
                    "different metrics compare. Images are the ones each source cell scored (kept losslessly); no "
                    "attack was recomputed."
                ),
                direction=direction,
                protocol=protocol_of(direction),
            )
        )
    return tables


def _groups(entries):
    """Per attack × direction, its entries at its largest ε: (attack, direction, ε, entries,
    sources, to targets), sources and targets in first-seen order."""
    out = []
    for key in dict.fromkeys((x["attack"], x["direction"]) for x in entries):
        grp = [x for x in entries if (x["attack"], x["direction"]) == key]
        e = max(x["eps"] for x in grp)
        sel = [x for x in grp if x["eps"] == e]
        out.append(
            (*key, e, sel, list(dict.fromkeys(x["source"] for x in sel)), list(dict.fromkeys(x["to"] for x in sel)))
        )
    return out


def plot_transfer(entries: list[dict[str, Any]], folder: Path) -> list[str]:
    """A heatmap per attack × direction at its largest ε (diagonal outlined: white-box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for attack, direction, e, sel, srcs, tos in _groups(entries):
        ranking = direction == "mos-split"
        stat = "srocc" if ranking else "gain_sd"
        m = np.full((len(srcs), len(tos)), np.nan)
        for x in sel:
            m[srcs.index(x["source"]), tos.index(x["to"])] = x[stat]
        fig, ax = plt.subplots(figsize=(1.3 * len(tos) + 2.5, 1.0 * len(srcs) + 1.8))
        if ranking:
            im = ax.imshow(m, cmap="RdBu", vmin=-1, vmax=1)
        else:
            im = ax.imshow(m, cmap="magma_r", vmin=min(0.0, float(np.nanmin(m))), vmax=max(1e-9, float(np.nanmax(m))))
        for i in range(len(srcs)):
            for j in range(len(tos)):
                if np.isfinite(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if (abs(m[i, j]) > 0.6 if ranking else m[i, j] > 0.6 * np.nanmax(m)) else "black",
                    )
                if srcs[i] == tos[j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="tab:green"))
        ax.set_xticks(range(len(tos)), tos, rotation=30, ha="right")
        ax.set_yticks(range(len(srcs)), srcs)
        ax.set_xlabel("scored by")
        ax.set_ylabel("crafted against")
        label = "SROCC vs MOS under the ranking attack" if ranking else "gain / clean SD (score inflation)"
        fig.colorbar(im, ax=ax, label=label, shrink=0.85)
        ax.set_title(f"Transfer of {attack} images, ε = {e:g}/255\n(green: white-box)", fontsize=10)
        fig.tight_layout()
        name = f"transfer-{attack}-{direction}.png"
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# certified intervals


def _has_table(store, name: str) -> bool:
    return store.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def certified_data(store) -> list[dict[str, Any]]:
    from robench.engine.certify import load_certified

    if not _has_table(store, "certify_runs"):
        return []
    out = []
    for rec in load_certified(store):
        cfg = rec["config"]
        for s in rec["summary"]:
            out.append(
                {
                    "key": rec["key"],
                    "target": cfg["target"]["name"],
                    "defense": cfg["defense"]["name"],
                    "sigma": cfg["sigma"],
                    "samples": cfg["samples"],
                    "alpha": cfg["alpha"],
                    "dataset": cfg["dataset"]["name"],
                    "split": cfg["dataset"]["split"],
                    "calibration": rec["calibration"].get("source"),
                    "check_attack": cfg.get("check_attack"),
                    **s,
                }
            )
    return out


#: the certificate table's columns, in the order certified_table fills them
CERTIFIED_COLUMNS = (
    "items",
    "abstained",
    "median width (q)",
    "median width (MOS)",
    "within ±0.5 MOS",
    "certified ranking",
    "… in MOS order",
    "violations",
    "estimate outside",
)


def certified_table(entries: list[dict[str, Any]]):
    from robench.results.table import Table

    if not entries:
        return None
    rows, data = [], []
    for x in entries:
        rows.append((x["target"], x["defense"], f"{x['sigma']:g}", f"{x['radius']:g}"))
        data.append(
            [
                x["items"],
                x["abstained"],
                x["median_width"],
                x["median_width_mos"],
                x["within_half_mos"],
                x["certified_ranking"],
                x["certified_ranking_correct"],
                f"{x['violations']}/{x['checked']}" if x["checked"] else "—",
                f"{x.get('outside', 0)}/{x['checked']}" if x["checked"] else "—",
            ]
        )
    df = pd.DataFrame(
        data,
        index=pd.MultiIndex.from_tuples(rows, names=["target", "defence", "σ", "R (L2)"]),
        columns=list(CERTIFIED_COLUMNS),
    )
    df["items"] = df["items"].astype(object)
    df["abstained"] = df["abstained"].astype(object)
    cal = sorted({f"{x['target']}: {x['calibration']}" for x in entries})
    samples = sorted({(x["samples"], x["alpha"]) for x in entries})
    return Table(
        "certified",
        "Certified score intervals (median smoothing)",
        df,
        caption=(
            "Median smoothing (Chiang et al. 2020): the smoothed score is the median of the target's "
            "oriented score over Gaussian noise N(0, σ²) on the distorted image (reference untouched); "
            "for every L2 perturbation of norm ≤ R it stays in [lower, upper] with confidence 1 − α "
            f"({', '.join(f'{n} draws, α = {a:g}' for n, a in samples)}). Median width of the "
            "certified intervals; the fraction whose interval stays within ±0.5 MOS of the smoothed "
            "score; certified ranking: the fraction of pairs of items of one reference whose order is "
            "guaranteed at R (and guaranteed in the MOS order); violations: items where the check "
            "attack (L2 PGD on the smoothed score, both directions) moved the smoothed score out of the "
            "interval with confidence 1 − α (its own order-statistic interval wholly outside); estimate "
            "outside: items where the attacked point's 100-draw median estimate left the interval (Monte-"
            "Carlo error of the estimate, or a violation)."
        ),
        footnote=(
            "MOS scale: " + "; ".join(cal) + ". An L2 ball of radius R on a 3×128×128 image contains the L∞ "
            "ball of ε = R/221.7 only (R = 0.12: ε = 0.14/255): these certificates cover far smaller "
            "perturbations than the L∞ attacks' ε."
        ),
        col_precision={"items": 0, "abstained": 0},
    )


def plot_certified(entries: list[dict[str, Any]], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not entries:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((x["target"], x["defense"], x["sigma"]) for x in entries):
        sel = sorted([x for x in entries if (x["target"], x["defense"], x["sigma"]) == key], key=lambda x: x["radius"])
        w = [x["median_width_mos"] if x["median_width_mos"] is not None else np.nan for x in sel]
        lab = key[0] + ("" if key[1] == "none" else f"+{key[1]}") + f" (σ {key[2]:g})"
        ax.plot([x["radius"] for x in sel], w, marker="o", label=lab)
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.text(ax.get_xlim()[0], 1.0, " ±0.5 MOS", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("certified L2 radius R (pixel units)")
    ax.set_ylabel("median certified interval width (MOS)")
    ax.set_title("Certified score intervals by median smoothing", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "certified-width.png", dpi=120)
    plt.close(fig)
    return ["certified-width.png"]
