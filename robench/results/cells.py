"""The store read once into per-cell arrays (:class:`CellData`), with the flags computed across
cells (the scale check) attached: what every reader of results (report, check, records, html)
starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robench.core import flags as FL
from robench.core.directions import directed_gain, item_signs, protocol_of
from robench.core.errors import RobenchError
from robench.results.labels import BASE
from robench.core.stats import correlations, twoafc_scores


# --------------------------------------------------------------------------------------------
# the store, read once into per-cell arrays


@dataclass
class CellData:
    key: str
    target: str
    arch: str
    defense: str
    training: str | None
    inference: list[str]
    attack: str
    needs: str
    kind: str  # pairs | 2afc
    dataset: str
    split: str
    profile: str
    seed: int
    items_sha: str
    weights_sha: str
    eps: list[float]
    item_ids: np.ndarray
    ref_ids: np.ndarray
    sources: np.ndarray | None  # source photo per item (None: a store written before they were recorded)
    mos: np.ndarray | None
    judge: np.ndarray | None
    side: np.ndarray | None
    q_other: np.ndarray | None
    q_clean: np.ndarray  # oriented quality (higher = better), per item
    q_adv: np.ndarray  # K × n
    seconds: float | None = None
    flags: dict = field(default_factory=dict)
    attack_params: dict = field(default_factory=dict)
    psnr: np.ndarray | None = None  # K × n, adversarial vs unattacked distorted (NaN: δ = 0 or not stored)
    ssim: np.ndarray | None = None
    train_seed: int = 0  # the recipe's training seed (--seeds; 0: the weights M.<recipe>, and every non-recipe cell)
    amp: str = "fp32"  # --amp: bf16 cells are another measurement (keyed apart), so another row
    direction: str = "up"  # core.directions: which way each item was pushed (the protocol)
    clean_scale: dict | None = None  # SD / MSE / R² of the clean scores on the MOS scale (engine.cell.clean_scale)
    signs: np.ndarray | None = None  # per item ±1 of the direction (None: all +1)

    @property
    def protocol(self) -> str:
        return protocol_of(self.direction)

    @property
    def clean_sd(self) -> float:
        """Sample SD of the clean oriented scores: the unit of gains per own SD (NaN below 2 items)."""
        return float(np.std(self.q_clean, ddof=1)) if self.n > 1 else float("nan")

    def directed_gain(self, k: int) -> np.ndarray:
        """Per item ``sign · (q_adv − q_clean)`` at ε index ``k`` (≥ 0 by the harness)."""
        return directed_gain(self.q_clean, self.q_adv[k], self.signs)

    @property
    def active_flags(self) -> list[str]:
        return FL.active(self.flags)

    def perceptibility(self, eps: float) -> tuple[float, float]:
        """Mean PSNR over the changed images and mean SSIM at ``eps`` (NaN when not stored)."""
        k = self.eps_index(eps)
        if k is None or self.psnr is None:
            return float("nan"), float("nan")
        p, q = self.psnr[k], self.ssim[k]
        p = p[np.isfinite(p)]
        q = q[np.isfinite(q)]
        return (float(p.mean()) if p.size else float("nan"), float(q.mean()) if q.size else float("nan"))

    @property
    def n(self) -> int:
        return len(self.item_ids)

    @property
    def row(self) -> tuple:
        """Cells sharing a row of a table: one model behind one defence on one item set."""
        return (self.arch, self.defense, self.dataset, self.split, self.kind, self.profile, self.seed, self.amp)

    @property
    def metric_name(self) -> str:
        return "SROCC" if self.kind == "pairs" else "2AFC acc."

    def eps_index(self, eps: float) -> int | None:
        return next((k for k, e in enumerate(self.eps) if abs(e - eps) < 1e-9), None)

    def item_values(self, q: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Per-item 2AFC scores of attacked-side quality ``q`` (the other image unattacked);
        ``idx``: ``q`` is for these rows of the cell only."""
        i = slice(None) if idx is None else idx
        q0 = np.where(self.side[i] == 0, q, self.q_other[i])
        q1 = np.where(self.side[i] == 1, q, self.q_other[i])
        return twoafc_scores(q0, q1, self.judge[i])

    #: people agree strongly on a 2AFC triplet when the share preferring one side is ≤ 0.2 or ≥ 0.8
    STRONG = 0.2

    def flip_rate(self, k: int, strong: bool = False) -> float:
        """2AFC: the fraction of triplets whose metric decision (which image is better) differs
        between the clean and the attacked image at ε index ``k`` (Ghildyal & Liu 2023's decision
        flips); ``strong``: over the triplets people agree on strongly (judge ≤ 0.2 or ≥ 0.8)."""

        def decide(q):
            return np.sign(np.where(self.side == 0, q, self.q_other) - np.where(self.side == 1, q, self.q_other))

        flipped = decide(self.q_clean) != decide(self.q_adv[k])
        if strong:
            keep = (self.judge <= self.STRONG) | (self.judge >= 1 - self.STRONG)
            return float(flipped[keep].mean()) if keep.any() else float("nan")
        return float(flipped.mean())

    def metric_of(self, q: np.ndarray, idx: np.ndarray | None = None) -> float:
        """SROCC vs MOS, or mean 2AFC score, of quality ``q`` (``idx``: of these rows only)."""
        if self.kind == "pairs":
            return correlations(q, self.mos if idx is None else self.mos[idx])["srocc"]
        return float(self.item_values(q, idx).mean())

    def clean_metric(self) -> float:
        return self.metric_of(self.q_clean)

    def metric(self, eps: float) -> float:
        k = self.eps_index(eps)
        return float("nan") if k is None else self.metric_of(self.q_adv[k])

    def q_at(self, eps: float | None) -> np.ndarray | None:
        if eps is None:
            return self.q_clean
        k = self.eps_index(eps)
        return None if k is None else self.q_adv[k]


def load_cells(store_path: str | Path) -> tuple[list[CellData], dict[str, dict]]:
    """Every finished cell of a store with its per-image arrays, and the weights provenance."""
    cells, weights, _ = load_store(store_path)
    return cells, weights


def load_store(
    store_path: str | Path, status: str | None = "done"
) -> tuple[list[CellData], dict[str, dict], pd.DataFrame]:
    """:func:`load_cells` and the store's cell rows of ``status`` (None: every cell, failed ones
    too), from one read of the store."""
    from robench.engine.store import Store

    with Store(existing_store(store_path), readonly=True) as st:
        cells, weights, raw, _ = read_store(st, status)
    return cells, weights, raw


def existing_store(store_path: str | Path) -> Path:
    """The store's path; a missing one is refused, naming how to make it."""
    path = Path(store_path)
    if not path.is_file():
        raise RobenchError(f"no store at {path} (run `robench run ... --store {path}` first)")
    return path


def read_store(st, status: str | None = "done"):
    """From an open store: its finished cells with their arrays, the weights, the cell rows of
    ``status`` and the per-image rows by cell."""
    raw, rows = st.cells(status), results_by_cell(st.results())
    cells, weights = read_cells(raw[raw["status"] == "done"], rows, st.weights())
    return cells, weights, raw, rows


def results_by_cell(res: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A store's per-image rows split by cell, each in the store's order (ε, item) and indexed
    from 0 as ``Store.results(key)`` returns them."""
    return {k: g.reset_index(drop=True) for k, g in res.groupby("cell_key")} if len(res) else {}


def _cell_data(c, rows: pd.DataFrame) -> CellData:
    """One finished cell's arrays from its store row and per-image rows."""
    cfg = c["config"]
    eps = [float(e) for e in cfg["eps"]]
    sign = -1.0 if cfg["target"]["lower_better"] else 1.0
    first = rows[np.isclose(rows["eps"], eps[0])].sort_values("item")
    adv = np.stack([rows[np.isclose(rows["eps"], e)].sort_values("item")["score"].to_numpy(float) for e in eps])

    def per_eps(col):  # stores written before the perceptibility columns have NULLs there
        if col not in rows.columns:
            return None
        return np.stack(
            [
                pd.to_numeric(rows[np.isclose(rows["eps"], e)].sort_values("item")[col], errors="coerce").to_numpy(
                    float
                )
                for e in eps
            ]
        )

    kind = cfg["dataset"]["kind"]
    return CellData(
        key=c["key"],
        target=cfg["target"]["name"],
        arch=_arch(cfg),
        defense=cfg["defense"]["name"],
        training=cfg["defense"].get("training"),
        inference=[d["name"] for d in cfg["defense"].get("inference", [])],
        attack=cfg["attack"]["name"],
        needs=cfg["attack"]["needs"],
        kind=kind,
        dataset=cfg["dataset"]["name"],
        split=cfg["dataset"]["split"],
        profile=cfg["profile"],
        seed=int(cfg["seed"]),
        items_sha=cfg["dataset"]["items_sha256"],
        weights_sha=cfg["target"]["weights_sha256"],
        eps=eps,
        item_ids=first["item_id"].astype(str).to_numpy(),
        ref_ids=first["ref_id"].astype(str).to_numpy(),
        sources=(
            first["source"].astype(str).to_numpy()
            if "source" in first.columns and first["source"].notna().all()
            else None
        ),
        mos=first["mos"].to_numpy(float) if kind == "pairs" else None,
        judge=first["judge"].to_numpy(float) if kind != "pairs" else None,
        side=first["attacked_side"].to_numpy(int) if kind != "pairs" else None,
        q_other=sign * first["other_score"].to_numpy(float) if kind != "pairs" else None,
        q_clean=sign * first["clean_score"].to_numpy(float),
        q_adv=sign * adv,
        seconds=c["seconds"],
        flags=c["flags"] or {},
        attack_params=cfg["attack"].get("params", {}),
        psnr=per_eps("psnr"),
        ssim=per_eps("ssim"),
        train_seed=int(cfg["defense"].get("train_seed", 0) or 0),
        amp=cfg.get("amp") or "fp32",
        direction=cfg.get("direction") or "up",
        signs=item_signs(cfg.get("direction"), first["mos"].to_numpy(float) if kind == "pairs" else None, len(first)),
    )


def read_cells(
    cells: pd.DataFrame, groups: dict[str, pd.DataFrame], weights: dict[str, dict]
) -> tuple[list[CellData], dict[str, dict]]:
    """:func:`load_cells` on rows already read from a store (the finished cells, their per-image
    rows by cell, the weights)."""
    out = []
    for _, c in cells.iterrows():
        cfg = c["config"]
        rows = groups.get(c["key"])
        if rows is None or rows.empty:
            continue
        out.append(_cell_data(c, rows))
        prov = (weights.get(cfg["target"]["weights_sha256"]) or {}).get("provenance") or {}
        t1 = prov.get("theorem1")
        if t1 and t1.get("n_batches"):  # AAT weights: the training bound's evidence is a flag of every cell
            out[-1].flags = {**out[-1].flags, "bound_non_vacuous_fraction": t1["non_vacuous_fraction"]}
        if (cfg.get("defense") or {}).get("training") and FL.fine_tune_untrained(prov):
            out[-1].flags = {**out[-1].flags, "untrained": True}
        out[-1].clean_scale = (c["summary"] or {}).get("clean_scale")
    scale_checks(out)
    return out, weights


def scale_checks(cells: list[CellData]) -> None:
    """The scale check of every defended cell (core.flags ``scale``): the SD of its clean oriented
    scores over its base model's on the items both hold (the same architecture, setting and
    weights generation: the base row's latest cell), and its clean R² after the target's own
    calibration (recorded with the cell; None for cells stored before it was). Recorded in the
    cell's flags as ``scale`` = {sd_ratio, r2, collapsed}."""
    from robench.core.flags import SCALE_R2, SCALE_RATIO

    base: dict[tuple, CellData] = {}
    for c in cells:  # finish order: the latest base cell of a setting wins
        if c.defense == BASE and c.kind == "pairs":
            base[c.row[2:] + (c.arch,)] = c
    for c in cells:
        if c.defense == BASE or c.kind != "pairs":
            continue
        b = base.get(c.row[2:] + (c.arch,))
        ratio = float("nan")
        if b is not None:
            _, i, j = np.intersect1d(c.item_ids, b.item_ids, return_indices=True)
            if len(i) >= 3 and np.std(b.q_clean[j]) > 0:
                ratio = float(np.std(c.q_clean[i]) / np.std(b.q_clean[j]))
        r2 = (c.clean_scale or {}).get("r2")
        # R² means something where the scores are on the MOS scale: a recipe fitted its calibration,
        # or the base model regresses MOS (an uncalibrated distance behind a purifier does not)
        b_r2 = (b.clean_scale or {}).get("r2") if b is not None else None
        r2_applies = r2 is not None and (c.training is not None or (b_r2 is not None and b_r2 > SCALE_R2))
        collapsed = bool((np.isfinite(ratio) and ratio < SCALE_RATIO) or (r2_applies and r2 <= SCALE_R2))
        c.flags = {
            **c.flags,
            "scale": {"sd_ratio": ratio if np.isfinite(ratio) else None, "r2": r2, "collapsed": collapsed},
        }


def _arch(cfg: dict) -> str:
    """The model a row belongs to: ``birqa`` for ``birqa.aat`` (recipe variants), the target's
    own name otherwise (``lpips.alex``, ``ssim``)."""
    from robench.core.weights import split_seed

    name = cfg["target"]["name"].split("+")[0]
    recipe = cfg["defense"].get("training")
    if recipe:
        name = split_seed(name)[0] if cfg["defense"].get("train_seed") else name  # birqa.aat-s1 → birqa.aat
        if name.endswith(f".{recipe}"):
            return name[: -len(recipe) - 1]
    return name


# --------------------------------------------------------------------------------------------
# tables
