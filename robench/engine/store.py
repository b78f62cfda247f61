"""The results store: one SQLite file in WAL mode.

* ``cells``: one row per cell (key = sha256 of the canonical cell config + code version), with
  its status, timing, versions, git commit, device (where it ran: provenance, never part of the
  key), sanity-check flags and summary.
* ``results``: one row per (cell, item, ε): ids, MOS (or 2AFC judgement), clean and attacked raw
  score, L∞, L2, queries.

A finished cell is written in **one** transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a process
killed at any moment leaves either the whole cell or none of it, so rerunning the same command
resumes without losing or duplicating anything. If another process committed the same cell
first, the second commit is dropped (every cell exactly once).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.parse
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from robench.core.errors import RobenchError


class StoreFullError(RobenchError):
    """SQLite reported SQLITE_FULL (disk full, or a quota): the transaction was rolled back."""


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python ≥ 3.11
    if code is not None:
        return code == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(exc)


SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,                 -- done | failed
    target TEXT, weights_sha256 TEXT, defense TEXT, attack TEXT, dataset TEXT, split TEXT,
    kind TEXT, profile TEXT, seed INTEGER,
    eps TEXT,                             -- JSON list, /255 units
    config TEXT NOT NULL,                 -- canonical JSON of everything that defines the cell
    summary TEXT, flags TEXT, probes TEXT, versions TEXT, git_commit TEXT, error TEXT,
    n_items INTEGER, seconds REAL, attack_seconds REAL, finished REAL,
    train_seed INTEGER,                   -- a recipe's training seed (--seeds); NULL: no recipe
    device TEXT                           -- JSON: where it ran (device, GPU name); provenance, not key
);
CREATE TABLE IF NOT EXISTS results (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    item INTEGER NOT NULL,                -- row of the (subset of the) split
    eps REAL NOT NULL,                    -- /255 units
    item_id TEXT, ref_id TEXT, distortion TEXT, level INTEGER,
    mos REAL, judge REAL, attacked_side INTEGER, other_score REAL,
    clean_score REAL NOT NULL, score REAL NOT NULL,
    linf REAL NOT NULL, l2 REAL NOT NULL, queries INTEGER NOT NULL,
    psnr REAL, ssim REAL,                 -- adversarial vs unattacked distorted image (NULL: δ = 0)
    source TEXT,                          -- the item's source photo (the bootstrap's independent unit)
    image TEXT,                           -- sha256 of the kept adversarial image (engine.images); NULL: not kept
    dist_image TEXT, ref_image TEXT,      -- the gallery items' distorted and reference images (same store)
    PRIMARY KEY (cell_key, item, eps)
);
-- provenance of the weights cells ran with (train time, data, recipe): the reporter reads it
-- from the store alone. Added after schema 1 shipped; CREATE IF NOT EXISTS upgrades old stores.
CREATE TABLE IF NOT EXISTS weights (
    sha256 TEXT PRIMARY KEY, name TEXT, source TEXT, provenance TEXT, recorded REAL
);
"""
RESULT_COLUMNS = (
    "item",
    "eps",
    "item_id",
    "ref_id",
    "distortion",
    "level",
    "mos",
    "judge",
    "attacked_side",
    "other_score",
    "clean_score",
    "score",
    "linf",
    "l2",
    "queries",
    "psnr",
    "ssim",
    "source",
    "image",
    "dist_image",
    "ref_image",
)
#: columns added after schema 1 shipped (ALTER TABLE on open: old stores read and append)
ADDED_RESULT_COLUMNS = {
    "psnr": "REAL",
    "ssim": "REAL",
    "source": "TEXT",
    "image": "TEXT",
    "dist_image": "TEXT",
    "ref_image": "TEXT",
}
#: columns of ``cells`` added after schema 1 shipped (older rows read NULL = seed 0 / no recipe)
ADDED_CELL_COLUMNS = {"train_seed": "INTEGER", "device": "TEXT"}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(config: dict[str, Any], code_version: str) -> str:
    return hashlib.sha256(canonical({"config": config, "code": code_version}).encode()).hexdigest()


def train_seed_of(config: dict[str, Any]) -> int | None:
    """The training seed of a cell's recipe weights (``--seeds``): the defence record's
    ``train_seed``, 0 when it has none (the weights ``M.<recipe>``); None without a recipe."""
    d = config.get("defense") or {}
    return int(d.get("train_seed", 0) or 0) if d.get("training") else None


class Store:
    def __init__(self, path: str | Path, readonly: bool = False):
        """``readonly``: what every reader (report, records, check) opens: no schema written,
        no column added (an older store stays byte for byte as committed); the columns it lacks
        read as NULL, as ALTER TABLE would have given them."""
        self.path = Path(path)
        self.readonly = readonly
        self._missing: dict[str, list[str]] = {"results": [], "cells": []}
        if readonly:
            self._open_readonly()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=120.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
            for col, typ in ADDED_RESULT_COLUMNS.items():
                if col not in have:
                    self.db.execute(f"ALTER TABLE results ADD COLUMN {col} {typ}")
            have = {r[1] for r in self.db.execute("PRAGMA table_info(cells)")}
            for col, typ in ADDED_CELL_COLUMNS.items():
                if col not in have:
                    self.db.execute(f"ALTER TABLE cells ADD COLUMN {col} {typ}")
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            if _is_full(exc):
                raise StoreFullError(f"{self.path}: disk full while opening the store ({exc})") from None
            raise RobenchError(f"{self.path} is not a robench store (SQLite: {exc})") from None
        self._check_schema(row)

    def _open_readonly(self) -> None:
        if not self.path.is_file():
            raise RobenchError(f"{self.path}: no store there (run `robench run` first, or name one with --store)")
        try:
            # no -wal file: no writer has the store open, so it is read as immutable (SQLite
            # then leaves no -shm/-wal beside it); with one, read-only through the WAL
            live = Path(f"{self.path}-wal").exists()
            mode = "mode=ro" if live else "immutable=1"
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?{mode}"
            self.db = sqlite3.connect(uri, uri=True, timeout=120.0, isolation_level=None)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"cells", "results", "meta"} <= tables:
                raise RobenchError(f"{self.path} is not a robench store (no cells/results/meta tables)")
            for table, added in (("results", ADDED_RESULT_COLUMNS), ("cells", ADDED_CELL_COLUMNS)):
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                self._missing[table] = [c for c in added if c not in have]
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise RobenchError(f"{self.path} is not a robench store (SQLite: {exc})") from None
        self._check_schema(row)

    def _check_schema(self, row) -> None:
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise RobenchError(f"{self.path} has store schema {row[0]}, this robench reads {SCHEMA_VERSION}")

    def _with_missing(self, table: str, df: pd.DataFrame) -> pd.DataFrame:
        for col in self._missing[table]:
            df[col] = None
        return df

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------
    def status(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM cells WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def has_images(self, key: str) -> bool:
        """Whether every row of a cell names a kept adversarial image."""
        if "image" in self._missing["results"]:
            return False
        row = self.db.execute("SELECT COUNT(*), COUNT(image) FROM results WHERE cell_key=?", (key,)).fetchone()
        return bool(row[0]) and row[0] == row[1]

    def cell_flags(self, key: str) -> dict[str, Any] | None:
        """The stored flags of one cell (None when it is not stored)."""
        row = self.db.execute("SELECT flags FROM cells WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    @contextmanager
    def _transaction(self, what: str):
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error. A full disk (SQLITE_FULL)
        becomes a clear error: SQLite has rolled the transaction back, so the store still holds
        exactly the cells committed before, and rerunning after freeing space resumes."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise StoreFullError(
                    f"{self.path}: disk full while writing {what} ({exc}); nothing of it was "
                    f"written and every cell committed before is intact: free space and "
                    f"rerun the same command to resume"
                ) from None
            raise

    def commit_cell(
        self,
        key: str,
        cell: dict[str, Any],
        rows: Iterable[dict[str, Any]],
        *,
        replace: bool = False,
        before_commit=None,
    ) -> bool:
        """Write a finished cell and its rows atomically. False when the cell was already done
        (another process won the race) unless ``replace`` (``--force``); a failed record of the
        same cell is always replaced."""
        rows = list(rows)
        with self._transaction(f"cell {key[:12]}") as db:
            if self.status(key) == "done" and not replace:
                return False
            db.execute("DELETE FROM results WHERE cell_key=?", (key,))
            db.execute("DELETE FROM cells WHERE key=?", (key,))
            self._insert_cell(key, "done", cell)
            db.executemany(
                f"INSERT INTO results (cell_key, {', '.join(RESULT_COLUMNS)}) VALUES (?{', ?' * len(RESULT_COLUMNS)})",
                [(key, *[r.get(c) for c in RESULT_COLUMNS]) for r in rows],
            )
            if before_commit is not None:  # tests: die between the writes and COMMIT
                before_commit()
        return True

    def record_failure(self, key: str, cell: dict[str, Any], error: str) -> None:
        with self._transaction(f"the failure record of cell {key[:12]}"):
            if self.status(key) != "done":
                self.db.execute("DELETE FROM cells WHERE key=?", (key,))
                self._insert_cell(key, "failed", {**cell, "error": error})

    def _insert_cell(self, key: str, status: str, c: dict[str, Any]) -> None:
        cfg = c["config"]
        self.db.execute(
            "INSERT INTO cells (key, status, target, weights_sha256, defense, attack, dataset, split, kind, profile, "
            "seed, eps, config, summary, flags, probes, versions, git_commit, error, n_items, seconds, attack_seconds, "
            "finished, train_seed, device) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                status,
                cfg["target"]["name"],
                cfg["target"]["weights_sha256"],
                cfg["defense"]["name"],
                cfg["attack"]["name"],
                cfg["dataset"]["name"],
                cfg["dataset"]["split"],
                cfg["dataset"]["kind"],
                cfg["profile"],
                cfg["seed"],
                json.dumps(cfg["eps"]),
                canonical(cfg),
                json.dumps(c.get("summary")),
                json.dumps(c.get("flags")),
                json.dumps(c.get("probes")),
                json.dumps(c.get("versions")),
                c.get("git_commit"),
                c.get("error"),
                c.get("n_items"),
                c.get("seconds"),
                c.get("attack_seconds"),
                time.time(),
                train_seed_of(cfg),
                json.dumps(c.get("device")),
            ),
        )

    def update_flags(self, key: str, flags: dict[str, Any]) -> None:
        """Merge cross-cell sanity flags into a finished cell (the runner's grid-level checks)."""
        with self._transaction(f"the flags of cell {key[:12]}") as db:
            row = db.execute("SELECT flags FROM cells WHERE key=?", (key,)).fetchone()
            if row is not None:
                merged = {**(json.loads(row[0]) or {}), **flags}
                db.execute("UPDATE cells SET flags=? WHERE key=?", (json.dumps(merged), key))

    def record_weights(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep the provenance of the weights a run used (sha256 → name, source, provenance)."""
        rows = [
            (r["sha256"], r.get("name"), r.get("source"), canonical(r.get("provenance") or {}), time.time())
            for r in records
            if r.get("sha256")
        ]
        if rows:
            with self._transaction("weights provenance") as db:
                db.executemany("INSERT OR IGNORE INTO weights VALUES (?,?,?,?,?)", rows)

    # --- reading --------------------------------------------------------------------------
    def cells(self, status: str | None = "done") -> pd.DataFrame:
        q = "SELECT * FROM cells" + (" WHERE status=?" if status else "") + " ORDER BY finished"
        df = self._with_missing("cells", pd.read_sql_query(q, self.db, params=(status,) if status else ()))
        for col in ("eps", "config", "summary", "flags", "probes", "versions", "device"):
            df[col] = df[col].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        return df

    def weights(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT sha256, name, source, provenance FROM weights").fetchall()
        return {sha: {"name": n, "source": src, "provenance": json.loads(p or "{}")} for sha, n, src, p in rows}

    def results(self, key: str | None = None) -> pd.DataFrame:
        if key is None:
            df = pd.read_sql_query("SELECT * FROM results ORDER BY cell_key, eps, item", self.db)
        else:
            df = pd.read_sql_query("SELECT * FROM results WHERE cell_key=? ORDER BY eps, item", self.db, params=(key,))
        return self._with_missing("results", df)
