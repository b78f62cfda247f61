"""``robench certify``: certified score intervals by median smoothing (core.smoothing).

Per item: the clean oriented score ``q``, the smoothed score (median of ``q`` over ``samples``
draws of N(0, σ²) noise on the distorted image, clipped to [0, 1]; the reference untouched) and,
per L2 radius R, the certified interval [lower, upper] that holds for the smoothed score of every
``x + δ``, ``‖δ‖₂ ≤ R``, with confidence 1 − α (abstain where ``samples`` draws cannot bound it).

``check_attack="pgd"``: an L2 PGD inside radius R, in both directions, against the smoothed
score (its gradient by EOT: the mean over ``attack_eot`` noise draws per step, SmoothAdv's
surrogate for the median), the attacked point scored like the clean one (the median of
``samples`` fresh draws). Two records per radius, both reported: ``outside`` — the attacked point's
*estimated* smoothed score (its empirical median) left [lower, upper]; ``violated`` — its 1 − α
confidence interval for the true median (order statistics, as the bounds) lies wholly outside
[lower, upper], i.e. the attack certainly broke the certificate. An estimate can leave the interval
by Monte-Carlo error alone (the bounds hold for the true median, not for a 100-draw estimate of it):
that is ``outside`` without ``violated``.

Rows are committed to the store per batch of items in one transaction (a killed run resumes where
it stopped); a run is keyed by everything that defines its numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robench.core.errors import RobenchError
from robench.core.smoothing import certify_draws, check_smoothing, median_of

#: the check attack's quick settings (``robench certify --attack-steps/--attack-eot`` override)
CHECK_DEFAULTS = {"steps": 10, "eot": 4}
#: half-width on the MOS scale the report's "within" fraction uses
MOS_HALF_WIDTH = 0.5


@dataclass
class CertifySpec:
    model: str
    defense: str | None = None
    dataset: str | None = None
    split: str = "test"
    n: int | None = None  # None: the profile's attack_n
    seed: int = 0
    profile: str = "quick"
    sigma: float = 0.12
    radii: list[float] = field(default_factory=lambda: [0.03, 0.06, 0.12])
    samples: int = 100
    alpha: float = 0.001
    batch: int = 8
    check_attack: str | None = None  # None | a name of attacks.smoothed.CHECK_ATTACKS
    attack_steps: int = CHECK_DEFAULTS["steps"]
    attack_eot: int = CHECK_DEFAULTS["eot"]
    store: str | None = None
    device: str = "cpu"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    force: bool = False

    def check(self) -> None:
        check_smoothing(self.sigma, self.samples, self.alpha)
        if not self.radii:
            raise RobenchError("--radius: give at least one L2 radius (pixel units), e.g. 0.06,0.12")
        for r in self.radii:
            if not (r > 0 and math.isfinite(r)):
                raise RobenchError(f"--radius values must be positive L2 norms in pixel units, got {r!r}")
        from robench.attacks import CHECK_ATTACKS

        if self.check_attack is not None and self.check_attack not in CHECK_ATTACKS:
            raise RobenchError(
                f"--check-attack must be one of {', '.join(CHECK_ATTACKS)} (or omitted), got {self.check_attack!r}"
            )
        if self.attack_steps < 1 or self.attack_eot < 1:
            raise RobenchError("--attack-steps and --attack-eot must be at least 1")
        if self.batch < 1:
            raise RobenchError(f"--batch must be at least 1, got {self.batch}")


SCHEMA = """
CREATE TABLE IF NOT EXISTS certify_runs (
    key TEXT PRIMARY KEY, target TEXT, weights_sha256 TEXT, defense TEXT, dataset TEXT, split TEXT,
    config TEXT NOT NULL, calibration TEXT, versions TEXT, git_commit TEXT, device TEXT, n_items INTEGER,
    seconds REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS certify_items (
    run_key TEXT NOT NULL REFERENCES certify_runs(key), item INTEGER NOT NULL, radius REAL NOT NULL,
    item_id TEXT, ref_id TEXT, source TEXT, distortion TEXT, mos REAL,
    clean REAL NOT NULL, smoothed REAL NOT NULL, lower REAL, upper REAL, abstain INTEGER NOT NULL,
    attacked_up REAL, attacked_down REAL, attacked_up_low REAL, attacked_down_high REAL,
    outside INTEGER, violated INTEGER,
    PRIMARY KEY (run_key, item, radius)
);
"""
ROW_COLUMNS = (
    "item",
    "radius",
    "item_id",
    "ref_id",
    "source",
    "distortion",
    "mos",
    "clean",
    "smoothed",
    "lower",
    "upper",
    "abstain",
    "attacked_up",
    "attacked_down",
    "attacked_up_low",
    "attacked_down_high",
    "outside",
    "violated",
)


def open_tables(store) -> None:
    """Create the certification tables in a store (idempotent: old stores gain them)."""
    store.db.executescript(SCHEMA)


def _noisy_scores(
    target, x: torch.Tensor, ref_prep, idx: torch.Tensor, sigma: float, m: int, gens: list[torch.Generator]
) -> torch.Tensor:
    """Oriented scores of ``m`` noisy copies of each row of ``x`` (rows × m); each row draws its
    noise from its own generator (numbers independent of the batch size)."""
    from robench.core.target import index_prepared

    b = x.shape[0]
    noise = torch.stack([torch.randn(m, *x.shape[1:], generator=g) for g in gens]).to(x.device)  # b × m × C×H×W
    noisy = (x.unsqueeze(1) + sigma * noise).clamp(0.0, 1.0).flatten(0, 1)
    rows = idx.repeat_interleave(m)
    s = target.call("score_with", noisy, index_prepared(ref_prep, rows.to(x.device)))
    if not torch.isfinite(s).all():
        raise RobenchError(f"target {target.card.name} returned non-finite scores on noisy images")
    return target.orient(s).view(b, m)


def _smoothed_draws(target, x, ref_prep, idx, sigma, n, gens, chunk: int) -> torch.Tensor:
    """``n`` noisy oriented scores per row, in chunks of ``chunk`` images a forward pass."""
    per = max(1, chunk // max(1, x.shape[0]))
    out = []
    with torch.no_grad():
        for start in range(0, n, per):
            out.append(_noisy_scores(target, x, ref_prep, idx, sigma, min(per, n - start), gens))
    return torch.cat(out, dim=1)


def run_key(config: dict[str, Any]) -> str:
    from robench.core.version import __version__
    from robench.engine.store import canonical

    return hashlib.sha256(canonical({"certify": config, "code": __version__}).encode()).hexdigest()


def calibration_of(target, spec: CertifySpec, dataset: str, options: dict[str, Any], kind: str) -> dict[str, Any]:
    """The map ``a·q + b`` onto the MOS scale: the model's own (BiRQA regresses MOS; a recipe's
    fitted calibration), else a least-squares fit on the train split (recorded as such); none on
    2AFC data."""
    if kind != "pairs":
        return {"source": "none"}
    cal = target.calibration
    a, b = float(cal.a), float(cal.b.detach())
    inner = getattr(target, "inner", target)
    if getattr(inner, "predicts_mos", False):
        return {"source": "model", "a": a, "b": b}
    if abs(a - 1.0) > 1e-6 or abs(b) > 1e-6:
        return {"source": "recipe", "a": a, "b": b}
    from robench.core.registry import DATASETS
    from robench.core.target import fit_calibration

    data = DATASETS.get(dataset)(split="train", **options)
    fit = fit_calibration(target, data, max_items=256, seed=spec.seed)
    return {"source": "fitted on the train split (least squares of MOS on q)", **fit}


def certify(spec: CertifySpec, progress: bool = True) -> dict[str, Any]:
    """Certify the items; return the run's record and per-item results (from the store)."""
    from robench.core.config import RunSpec, dataset_options_for
    from robench.core.device import resolve_device, tune_cpu_allocator
    from robench.core.profiles import get_profile
    from robench.engine.grid import default_store
    from robench.engine.items import load_items
    from robench.engine.resolve import resolve_target
    from robench.engine.store import Store

    tune_cpu_allocator()
    spec.check()
    prof = get_profile(spec.profile)
    device = resolve_device(spec.device)
    run = RunSpec(
        model=spec.model,
        attacks=[],
        dataset=spec.dataset,
        profile=prof.name,
        seed=spec.seed,
        split=spec.split,
        defense=spec.defense,
        device=spec.device,
        dataset_options=dict(spec.dataset_options),
    )
    opts = dataset_options_for(run.dataset, prof, run.dataset_options)
    run.dataset_options = opts
    target, defense = resolve_target(run, progress)
    target = target.to(device).eval().requires_grad_(False)
    n = spec.n if spec.n is not None else prof.attack_n
    items = load_items(run.dataset, spec.split, n or None, spec.seed, opts)
    radii = sorted({float(r) for r in spec.radii})
    config = _config(spec, target, defense, run, opts, items, prof, radii)
    key = run_key(config)
    store_path = Path(spec.store) if spec.store else default_store()
    t0 = time.perf_counter()
    with Store(store_path) as store:
        open_tables(store)
        if spec.force:
            with store._transaction("certify --force") as db:
                db.execute("DELETE FROM certify_items WHERE run_key=?", (key,))
                db.execute("DELETE FROM certify_runs WHERE key=?", (key,))
        _run_record(store, key, config, target, spec, run, opts, items, defense, device)
        _certify_items(store, key, target, items, radii, spec, device, progress)
        seconds = time.perf_counter() - t0
        with store._transaction("certify run finished") as db:
            db.execute(
                "UPDATE certify_runs SET seconds=COALESCE(seconds, 0) + ?, finished=? WHERE key=?",
                (seconds, time.time(), key),
            )
        return load_certified(store, key)


def _config(spec: CertifySpec, target, defense, run, opts, items, prof, radii: list[float]) -> dict[str, Any]:
    """The run's configuration (its key is the hash of it)."""
    from robench.core.target import fingerprint

    check = (
        {
            "name": spec.check_attack,
            "norm": "L2",
            "steps": int(spec.attack_steps),
            "eot": int(spec.attack_eot),
            "step": "2.5 R / steps",
            "directions": ["up", "down"],
        }
        if spec.check_attack
        else None
    )
    config = {
        "target": {
            "name": target.card.name,
            "weights_sha256": fingerprint(target),
            "lower_better": bool(target.lower_better),
        },
        "defense": defense,
        "sigma": float(spec.sigma),
        "samples": int(spec.samples),
        "alpha": float(spec.alpha),
        "radii": radii,
        "noise": "N(0, sigma^2) on dist, clipped to [0, 1]; reference untouched",
        "dataset": {
            "name": run.dataset,
            "split": spec.split,
            "kind": items.kind,
            "options": opts,
            "n": len(items),
            "items_sha256": items.digest,
        },
        "seed": spec.seed,
        "profile": prof.name,
        "check_attack": check,
    }
    return config


def _run_record(store, key: str, config: dict, target, spec: CertifySpec, run, opts, items, defense, device) -> dict:
    """The run's record in the store (written once, with its calibration); the calibration."""
    from robench.core.device import device_record
    from robench.core.provenance import git_commit, versions
    from robench.engine.store import canonical

    row = store.db.execute("SELECT calibration FROM certify_runs WHERE key=?", (key,)).fetchone()
    if row is None:
        calib = calibration_of(target, spec, run.dataset, opts, items.kind)
        with store._transaction("certify run record") as db:
            db.execute(
                "INSERT OR IGNORE INTO certify_runs (key, target, weights_sha256, defense, dataset, split, "
                "config, calibration, versions, git_commit, device, n_items) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    target.card.name,
                    config["target"]["weights_sha256"],
                    defense["name"],
                    run.dataset,
                    spec.split,
                    canonical(config),
                    json.dumps(calib),
                    json.dumps(versions()),
                    git_commit(),
                    json.dumps(device_record(device)),
                    len(items),
                ),
            )
    else:
        calib = json.loads(row[0])
    return calib


def _certify_items(store, key: str, target, items, radii, spec: CertifySpec, device, progress) -> None:
    """Certify the items the store does not hold yet, a batch per transaction (resumable)."""
    from robench.core.progress import progress_bar

    done = {int(r[0]) for r in store.db.execute("SELECT DISTINCT item FROM certify_items WHERE run_key=?", (key,))}
    todo = [i for i in range(len(items)) if i not in done]
    L = items.labels
    with progress_bar(progress) as bar:
        task = bar.add_task(f"certify {target.card.name}", total=len(items), completed=len(done)) if bar else None
        for start in range(0, len(todo), spec.batch):
            chunk = todo[start : start + spec.batch]
            rows = _certify_batch(target, items, chunk, radii, spec, device)
            for r in rows:
                i = r["item"]
                r.update(
                    item_id=L["item_id"][i],
                    ref_id=L["ref_id"][i],
                    source=L["source"][i],
                    distortion=L["distortion"][i],
                    mos=L["mos"][i] if "mos" in L else None,
                )
            with store._transaction(f"certified items of {key[:12]}") as db:
                db.executemany(
                    f"INSERT OR REPLACE INTO certify_items (run_key, {', '.join(ROW_COLUMNS)}) "
                    f"VALUES (?{', ?' * len(ROW_COLUMNS)})",
                    [(key, *[r.get(c) for c in ROW_COLUMNS]) for r in rows],
                )
            if bar:
                bar.advance(task, len(chunk))


def _certify_batch(target, items, chunk: list[int], radii: list[float], spec: CertifySpec, device) -> list[dict]:
    x = torch.cat([items.dist[i : i + 1] for i in chunk]).to(device)
    r = torch.cat([items.ref[i : i + 1] for i in chunk]).to(device)
    # one generator per item, seeded by the run seed and the item: the same draws at any batch size
    gens = [torch.Generator().manual_seed(int(spec.seed) * 1_000_003 + int(i)) for i in chunk]
    with torch.no_grad():
        prep = target.call("reference", r)
        clean = target.orient(target.expected_score(x, r)).cpu().numpy()
    local = torch.arange(len(chunk))
    chunk_imgs = max(spec.batch, 32)
    draws = _smoothed_draws(target, x, prep, local, spec.sigma, spec.samples, gens, chunk_imgs).cpu().numpy()
    cert = certify_draws(draws, spec.sigma, radii, spec.alpha)
    out = []
    for j, R in enumerate(radii):
        checked = _check_attack(target, x, prep, local, chunk, j, R, spec, chunk_imgs) if spec.check_attack else None
        for b, i in enumerate(chunk):
            out.append(_certified_row(int(i), R, float(clean[b]), cert, b, j, checked))
    return out


def _check_attack(target, x, prep, local, chunk, j: int, R: float, spec: CertifySpec, chunk_imgs: int):
    """The check attack at radius R, up and down: each attacked point's smoothed median and its
    own 1 − α bound on the side the attack pushed (radius 0: p = ½ both sides)."""
    from robench.attacks import CHECK_ATTACKS

    agen = torch.Generator().manual_seed(int(spec.seed) * 7919 + int(chunk[0]) * 31 + j)
    att, conf = {}, {}
    for sign in (1.0, -1.0):
        xa = CHECK_ATTACKS[spec.check_attack](
            target, x, prep, local, sign, R, spec.sigma, spec.attack_steps, spec.attack_eot, agen
        )
        egens = [
            torch.Generator().manual_seed(
                int(spec.seed) * 1_000_003 + int(i) + 10_000_019 * (j + 1) + (0 if sign > 0 else 5_000_011)
            )
            for i in chunk
        ]
        dr = _smoothed_draws(target, xa, prep, local, spec.sigma, spec.samples, egens, chunk_imgs).cpu().numpy()
        att[sign] = median_of(dr)
        ci = certify_draws(dr, spec.sigma, [0.0], spec.alpha)
        conf[sign] = ci["lower"][:, 0] if sign > 0 else ci["upper"][:, 0]
    return att[1.0], att[-1.0], conf[1.0], conf[-1.0]


def _certified_row(item: int, R: float, clean: float, cert: dict, b: int, j: int, checked) -> dict:
    ab = bool(cert["abstain"][b, j])
    row = {
        "item": item,
        "radius": R,
        "clean": clean,
        "smoothed": float(cert["smoothed"][b]),
        "lower": None if ab else float(cert["lower"][b, j]),
        "upper": None if ab else float(cert["upper"][b, j]),
        "abstain": int(ab),
        "attacked_up": None,
        "attacked_down": None,
        "attacked_up_low": None,
        "attacked_down_high": None,
        "outside": None,
        "violated": None,
    }
    if checked is None:
        return row
    up, down, up_conf, down_conf = checked
    up_low, down_high = up_conf[b], down_conf[b]
    row.update(
        attacked_up=float(up[b]),
        attacked_down=float(down[b]),
        attacked_up_low=None if np.isnan(up_low) else float(up_low),
        attacked_down_high=None if np.isnan(down_high) else float(down_high),
    )
    if not ab:
        row["outside"] = int(down[b] < row["lower"] or up[b] > row["upper"])
        row["violated"] = int(
            (not np.isnan(down_high) and down_high < row["lower"]) or (not np.isnan(up_low) and up_low > row["upper"])
        )
    return row


def load_certified(store, key: str | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """One certification run (``key``) or every run of a store: config, calibration and items
    (per item: clean, smoothed, and per radius lower/upper/abstain/attacked/violated, each in
    oriented ``q`` and, where a calibration exists, on the MOS scale)."""
    q = "SELECT key, config, calibration, versions, git_commit, device, seconds, n_items FROM certify_runs"
    runs = store.db.execute(q + (" WHERE key=?" if key else " ORDER BY finished"), (key,) if key else ()).fetchall()
    out = []
    for k, cfg, cal, vers, commit, dev, secs, n in runs:
        cfg, cal = json.loads(cfg), json.loads(cal or "{}")
        rows = store.db.execute(
            f"SELECT {', '.join(ROW_COLUMNS)} FROM certify_items WHERE run_key=? ORDER BY item, radius", (k,)
        ).fetchall()
        items = _certified_items(rows, cal)
        rec = {
            "key": k,
            "config": cfg,
            "calibration": cal,
            "versions": json.loads(vers or "{}"),
            "git_commit": commit,
            "device": json.loads(dev or "{}"),
            "seconds": secs,
            "n_items": n,
            "items": items,
        }
        rec["summary"] = summarise(rec)
        out.append(rec)
    if key:
        if not out:
            raise RobenchError(f"no certification run {key[:12]} in {store.path}")
        return out[0]
    return out


def _certified_items(rows: list, cal: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's stored rows as items, each with its radii (and the MOS-scale values where the run
    has a calibration)."""
    items: dict[int, dict[str, Any]] = {}
    a, b = cal.get("a"), cal.get("b")
    to_mos = (lambda v: None if v is None else a * v + b) if a is not None else (lambda v: None)
    for vals in rows:
        r = dict(zip(ROW_COLUMNS, vals))
        it = items.setdefault(
            r["item"],
            {
                "item": r["item"],
                "item_id": r["item_id"],
                "ref_id": r["ref_id"],
                "source": r["source"],
                "distortion": r["distortion"],
                "mos": r["mos"],
                "clean": r["clean"],
                "smoothed": r["smoothed"],
                "clean_mos": to_mos(r["clean"]),
                "smoothed_mos": to_mos(r["smoothed"]),
                "radii": [],
            },
        )
        it["radii"].append(
            {
                "radius": r["radius"],
                "lower": r["lower"],
                "upper": r["upper"],
                "abstain": bool(r["abstain"]),
                "lower_mos": to_mos(r["lower"]),
                "upper_mos": to_mos(r["upper"]),
                "attacked_up": r["attacked_up"],
                "attacked_down": r["attacked_down"],
                "attacked_up_low": r["attacked_up_low"],
                "attacked_down_high": r["attacked_down_high"],
                "outside": None if r["outside"] is None else bool(r["outside"]),
                "violated": None if r["violated"] is None else bool(r["violated"]),
            }
        )
    return list(items.values())


def summarise(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Per radius: items, abstained, median interval width (q and MOS), the fraction of
    certified items whose interval stays within ±0.5 MOS of the smoothed score, the certified
    ranking (pairs of items of one reference whose order is guaranteed, and guaranteed in the
    MOS order), and the check attack's violations."""
    a = rec["calibration"].get("a")
    out = []
    radii = sorted({r["radius"] for it in rec["items"] for r in it["radii"]})
    for R in radii:
        per = [(it, next(r for r in it["radii"] if r["radius"] == R)) for it in rec["items"]]
        ok = [(it, r) for it, r in per if not r["abstain"]]
        widths = np.array([r["upper"] - r["lower"] for _, r in ok], dtype=float)
        within = None
        if a is not None and ok:
            half = MOS_HALF_WIDTH / a  # ±0.5 MOS in q units (a > 0)
            within = float(
                np.mean(
                    [(it["smoothed"] - r["lower"]) <= half and (r["upper"] - it["smoothed"]) <= half for it, r in ok]
                )
            )
        pairs = guaranteed = correct = 0
        by_ref: dict[str, list] = {}
        for it, r in per:
            by_ref.setdefault(it["ref_id"], []).append((it, r))
        for grp in by_ref.values():
            for u in range(len(grp)):
                for v in range(u + 1, len(grp)):
                    (iu, ru), (iv, rv) = grp[u], grp[v]
                    pairs += 1
                    if ru["abstain"] or rv["abstain"]:
                        continue
                    first = ru["lower"] > rv["upper"]
                    second = rv["lower"] > ru["upper"]
                    if first or second:
                        guaranteed += 1
                        if iu["mos"] is not None and iv["mos"] is not None and iu["mos"] != iv["mos"]:
                            correct += int((iu["mos"] > iv["mos"]) == first)
        checked = [r for _, r in ok if r["violated"] is not None]
        out.append(
            {
                "radius": R,
                "items": len(per),
                "abstained": len(per) - len(ok),
                "median_width": float(np.median(widths)) if widths.size else None,
                "median_width_mos": float(np.median(widths) * a) if widths.size and a is not None else None,
                "within_half_mos": within,
                "pairs": pairs,
                "certified_ranking": guaranteed / pairs if pairs else None,
                "certified_ranking_correct": correct / pairs if pairs else None,
                "checked": len(checked),
                "violations": int(sum(bool(r["violated"]) for r in checked)),
                "outside": int(sum(bool(r["outside"]) for r in checked)),
            }
        )
    return out
