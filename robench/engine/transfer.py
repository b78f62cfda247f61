"""``robench transfer``: score the adversarial images crafted against each *source* target (kept
by ``robench run --keep-images``) with every *to* target, without recomputing any attack.

Per (source cell, to target): the to target's raw score of each item's clean distorted image and
of each kept adversarial image, one row per (item, ε), in the store (tables ``transfer_runs`` and
``transfer_rows``), written in one transaction per pair (resumable). ``robench report`` turns them
into the N×N matrices (results.transfer). Scoring a source's images with the source itself
reproduces its white-box cell (the diagonal; a test holds it to that for deterministic targets).
"""

from __future__ import annotations

import difflib
import json
import time
from pathlib import Path
from typing import Any

import torch

from robench.core.errors import RobenchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfer_runs (
    source_key TEXT NOT NULL REFERENCES cells(key), to_target TEXT NOT NULL, to_weights_sha256 TEXT NOT NULL,
    to_lower_better INTEGER NOT NULL, versions TEXT, git_commit TEXT, device TEXT, seconds REAL, finished REAL,
    PRIMARY KEY (source_key, to_target, to_weights_sha256)
);
CREATE TABLE IF NOT EXISTS transfer_rows (
    source_key TEXT NOT NULL, to_target TEXT NOT NULL, to_weights_sha256 TEXT NOT NULL,
    item INTEGER NOT NULL, eps REAL NOT NULL, clean_score REAL NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (source_key, to_target, to_weights_sha256, item, eps)
);
"""


def open_tables(store) -> None:
    store.db.executescript(SCHEMA)


def _source_cells(store, sources: list[str], attacks: list[str] | None):
    cells = store.cells(status="done")
    have = sorted(set(cells["target"])) if len(cells) else []
    for s in sources:
        if s not in have:
            close = difflib.get_close_matches(s, have, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RobenchError(
                f"--source {s!r}: no finished cell of that target in {store.path}{hint} "
                f"(targets there: {', '.join(have) or 'none'})"
            )
    sel = cells[cells["target"].isin(sources)]
    if attacks:
        sel = sel[sel["attack"].isin(attacks)]
    kept = [k for k in sel["key"] if store.has_images(k)]
    if not kept:
        raise RobenchError(
            f"no cell of {', '.join(sources)} in {store.path} kept its adversarial images: run them with "
            "robench run --keep-images (a stored cell without images is computed again)"
        )
    missing = sorted(
        {r["target"] for _, r in sel.iterrows()} - {r["target"] for _, r in sel[sel["key"].isin(kept)].iterrows()}
    )
    if missing:
        raise RobenchError(
            f"no kept images for source(s) {', '.join(missing)} in {store.path}: run their cells with "
            "robench run --keep-images"
        )
    return sel[sel["key"].isin(kept)]


def _cell_items(cell, cache: dict) -> tuple[str, Any]:
    """The items a source cell attacked (loaded once per item set), checked against its digest."""
    from robench.engine.items import load_items

    cfg = cell["config"]
    ds = cfg["dataset"]
    ik = json.dumps(
        [ds["name"], ds["split"], ds.get("n_requested"), cfg["seed"], ds.get("options")], sort_keys=True, default=str
    )
    if ik not in cache:
        it = load_items(
            ds["name"], ds["split"], ds.get("n_requested") or None, cfg["seed"], dict(ds.get("options") or {})
        )
        if it.digest != ds["items_sha256"]:
            raise RobenchError(
                f"cell {cell['key'][:12]}: its items ({ds['name']} {ds['split']}) no longer "
                "match the stored ones (the dataset changed)"
            )
        cache[ik] = it
    return ik, cache[ik]


def _score_kept(tgt, sha: str, key: str, rows, items, clean, folder, batch: int, dev) -> list[tuple]:
    """The ``to`` target's score of every kept adversarial image of a source cell: transfer rows."""
    from robench.engine.images import load_image

    out = []
    order = list(rows.itertuples(index=False))
    for start in range(0, len(order), batch):
        part = order[start : start + batch]
        adv = torch.stack([load_image(folder, r.image) for r in part])
        ref = torch.cat([items.ref[int(r.item) : int(r.item) + 1] for r in part])
        with torch.no_grad():
            s = tgt(adv.to(dev), ref.to(dev)).cpu()
        out += [
            (key, tgt.card.name, sha, int(r.item), float(r.eps), float(clean[int(r.item)]), float(v))
            for r, v in zip(part, s)
        ]
    return out


def _commit_pair(store, key: str, tgt, sha: str, out: list[tuple], dev, seconds: float) -> None:
    """One source cell × to target in one transaction (a rerun with --force replaces it)."""
    from robench.core.device import device_record
    from robench.core.provenance import git_commit, versions

    with store._transaction(f"transfer {key[:12]} → {tgt.card.name}") as db:
        where = "WHERE source_key=? AND to_target=? AND to_weights_sha256=?"
        db.execute(f"DELETE FROM transfer_rows {where}", (key, tgt.card.name, sha))
        db.execute(f"DELETE FROM transfer_runs {where}", (key, tgt.card.name, sha))
        db.executemany("INSERT INTO transfer_rows VALUES (?,?,?,?,?,?,?)", out)
        db.execute(
            "INSERT INTO transfer_runs VALUES (?,?,?,?,?,?,?,?,?)",
            (
                key,
                tgt.card.name,
                sha,
                int(tgt.lower_better),
                json.dumps(versions()),
                git_commit(),
                json.dumps(device_record(dev)),
                seconds,
                time.time(),
            ),
        )


def transfer(
    store_path: str | Path,
    sources: list[str],
    to: list[str],
    attacks: list[str] | None = None,
    device: str = "cpu",
    batch: int = 16,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Score every kept image of the sources' cells with every ``to`` target; returns what was
    computed and what was already stored."""
    from robench.core.device import resolve_device, tune_cpu_allocator
    from robench.core.progress import progress_bar
    from robench.core.target import fingerprint
    from robench.engine.images import images_folder
    from robench.engine.store import Store

    tune_cpu_allocator()
    if not sources or not to:
        raise RobenchError("give --source and --to target names (comma lists)")
    dev = resolve_device(device)
    store_path = Path(store_path)
    if not store_path.is_file():
        raise RobenchError(f"store {store_path} not found")
    folder = images_folder(store_path)
    report: dict[str, Any] = {"store": str(store_path), "pairs": []}
    t_all = time.perf_counter()
    with Store(store_path) as store:
        open_tables(store)
        cells = _source_cells(store, sources, attacks)
        targets = _load_targets(store, to, dev, progress)
        items_cache: dict[str, Any] = {}
        clean_cache: dict[tuple, torch.Tensor] = {}
        with progress_bar(progress) as bar:
            task = bar.add_task("transfer", total=len(cells) * len(to)) if bar else None
            for _, cell in cells.iterrows():
                cfg = cell["config"]
                ik, items = _cell_items(cell, items_cache)
                rows = store.results(cell["key"])
                for name, tgt in targets.items():
                    sha = fingerprint(tgt)
                    pair = {
                        "source_key": cell["key"],
                        "source": cell["target"],
                        "attack": cell["attack"],
                        "direction": cfg.get("direction") or "up",
                        "to": tgt.card.name,
                    }
                    if _stored(store, cell["key"], tgt.card.name, sha) and not force:
                        report["pairs"].append({**pair, "status": "cached"})
                        if bar:
                            bar.advance(task)
                        continue
                    t0 = time.perf_counter()
                    ck = (ik, tgt.card.name, sha)
                    if ck not in clean_cache:
                        clean_cache[ck] = _score(tgt, items.dist, items.ref, range(len(items)), batch, dev)
                    out = _score_kept(tgt, sha, cell["key"], rows, items, clean_cache[ck], folder, batch, dev)
                    _commit_pair(store, cell["key"], tgt, sha, out, dev, time.perf_counter() - t0)
                    report["pairs"].append(
                        {**pair, "status": "done", "rows": len(out), "seconds": time.perf_counter() - t0}
                    )
                    if bar:
                        bar.advance(task)
    report["seconds"] = time.perf_counter() - t_all
    return report


def _load_targets(store, names: list[str], dev, progress: bool) -> dict[str, Any]:
    """Every to target, loaded before any work (an unknown name fails at once), frozen, in eval
    mode, its weights recorded in the store."""
    from robench.core.config import RunSpec
    from robench.engine.resolve import resolve_target, weights_records

    targets = {}
    for name in names:
        t, _ = resolve_target(RunSpec(model=name, attacks=[]), progress, train=False)
        targets[name] = t.to(dev).eval().requires_grad_(False)
        store.record_weights(weights_records(targets[name]))
    return targets


def _stored(store, source_key: str, to: str, sha: str) -> bool:
    """Whether the store holds this source cell scored by the to target's weights."""
    q = "SELECT 1 FROM transfer_runs WHERE source_key=? AND to_target=? AND to_weights_sha256=?"
    return store.db.execute(q, (source_key, to, sha)).fetchone() is not None


def _score(target, dist, ref, idx, batch: int, dev) -> torch.Tensor:
    idx = list(idx)
    out = torch.empty(len(idx))
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            j = idx[start : start + batch]
            out[start : start + len(j)] = target(
                torch.cat([dist[i : i + 1] for i in j]).to(dev), torch.cat([ref[i : i + 1] for i in j]).to(dev)
            ).cpu()
    return out
