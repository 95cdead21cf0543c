"""The trial store: one SQLite file in the search folder, committed per trial.

Every proposal is a row from the moment it is made (status `running`), together with the
strategy's checkpoint in the same transaction; a finished child updates its row and the
checkpoint (after the strategy learned from it) in one transaction. So a search killed at
any moment resumes exactly: finished trials are kept, rows still `running` are run again,
and no result is learned twice.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.sqlite_db import Database, DatabaseError, Schema

STORE_NAME = "trials.sqlite"
FORMAT = "mnasfpn-trials"
SCHEMA_VERSION = 1
# statuses: running (proposed, not finished), done, failed, rejected (over --max-ms)
FINISHED = ("done", "failed", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    genotype TEXT NOT NULL,
    genotype_key TEXT NOT NULL,
    decisions TEXT NOT NULL,
    info TEXT NOT NULL,
    latency_ms REAL,
    breakdown TEXT,
    map REAL,
    map50 REAL,
    map75 REAL,
    reward REAL,
    metrics TEXT,
    error TEXT,
    cached_from INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    train_seconds REAL,
    eval_seconds REAL,
    total_seconds REAL,
    table_path TEXT NOT NULL,
    table_hash TEXT NOT NULL,
    proposed_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS trials_status ON trials(status);
CREATE INDEX IF NOT EXISTS trials_key ON trials(genotype_key);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    strategy TEXT NOT NULL,
    state BLOB NOT NULL,
    saved_at TEXT NOT NULL
);
-- A row of its own: SQLite rewrites a whole row on update, and the arrays (PPO's
-- weights, ~2 MB) change far less often than the rest of the state.
CREATE TABLE IF NOT EXISTS checkpoint_arrays (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    arrays BLOB NOT NULL,
    version TEXT
);
"""


# Finalists (--finalists): frontier trials of a one-shot search retrained stand-alone, one
# row per (trial, seed). Made on first use, so stores from before keep opening as they are.
_FINALISTS_DDL = """
CREATE TABLE IF NOT EXISTS finalists (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    map REAL,
    map50 REAL,
    map75 REAL,
    metrics TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    train_seconds REAL,
    eval_seconds REAL,
    total_seconds REAL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (trial_id, seed)
)
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def genotype_key(g: Genotype) -> str:
    """Identity of an architecture (name aside): equal keys train equal models."""
    doc = g.to_dict()
    doc.pop("name", None)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass
class Trial:
    id: int
    status: str
    genotype: Genotype
    decisions: tuple[int, ...]
    info: dict[str, Any]
    latency_ms: float | None
    breakdown: dict[str, float] | None
    map: float | None
    map50: float | None
    map75: float | None
    reward: float | None
    metrics: dict[str, Any] | None
    error: str | None
    cached_from: int | None
    attempts: int
    worker: str | None
    train_seconds: float | None
    eval_seconds: float | None
    total_seconds: float | None
    proposed_at: str
    finished_at: str | None


@dataclass
class Finalist:
    """One stand-alone retraining of a frontier trial (one seed)."""

    trial_id: int
    seed: int
    status: str  # running, done, failed
    map: float | None
    map50: float | None
    map75: float | None
    metrics: dict[str, Any] | None
    error: str | None
    attempts: int
    worker: str | None
    total_seconds: float | None


@dataclass(frozen=True)
class Checkpoint:
    """A strategy's state: its JSON part, and its arrays (None: unchanged since saved)."""

    strategy: str
    state: bytes
    arrays: bytes | None
    arrays_version: str | None


@dataclass(frozen=True)
class ChildResult:
    """What one evaluated child reports back (the proxy's result, or its failure)."""

    map: float | None
    map50: float | None = None
    map75: float | None = None
    metrics: dict[str, Any] | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    total_seconds: float | None = None
    worker: str | None = None
    error: str | None = None


class StoreError(DatabaseError):
    """A trial store that cannot be used as asked (one line)."""


SCHEMA = Schema(
    format=FORMAT,
    version=SCHEMA_VERSION,
    ddl=_SCHEMA,
    tables=("trials", "checkpoint", "checkpoint_arrays"),
    noun="trial store",
    make_hint="run mnasfpn search",
    remake_hint="start the search over in a new folder (or with --force-new)",
    error=StoreError,
)
_COLUMNS = (
    "id", "status", "genotype", "decisions", "info", "latency_ms", "breakdown", "map",
    "map50", "map75", "reward", "metrics", "error", "cached_from", "attempts", "worker",
    "train_seconds", "eval_seconds", "total_seconds", "proposed_at", "finished_at",
)  # fmt: skip
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM trials"


class TrialStore:
    """The writer holds the folder's store exclusively (a second search in the same folder
    is refused); `readonly` opens (pareto) work beside a running search."""

    def __init__(self, path: Path, db: Database) -> None:
        self.path = path
        self.db = db

    @classmethod
    def open(cls, folder: str | Path, *, create: bool = True, readonly: bool = False) -> TrialStore:
        folder = Path(folder)
        path = folder / STORE_NAME
        if not path.exists() and (readonly or not create):
            raise StoreError(f"{folder} holds no search ({STORE_NAME} missing); run mnasfpn search")
        return cls(path, Database.open(path, SCHEMA, create=create, readonly=readonly))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.db.tx()

    # -- meta and settings ------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return self.db.meta()

    def set_meta(self, values: Mapping[str, Any]) -> None:
        self.db.set_meta(values)

    def settings(self) -> dict[str, Any] | None:
        return self.meta().get("settings")

    # -- trials -----------------------------------------------------------------------

    def add_proposals(
        self,
        rows: list[dict[str, Any]],
        table: tuple[str, str],
        checkpoint: Checkpoint | None,
    ) -> list[int]:
        """Insert proposals (running, or already finished: rejected / cached) and the
        strategy checkpoint taken after proposing them, atomically."""
        ids = []
        with self.transaction() as tx:
            for r in rows:
                cur = tx.execute(
                    "INSERT INTO trials(status, genotype, genotype_key, decisions, info, "
                    "latency_ms, breakdown, map, map50, map75, reward, metrics, error, "
                    "cached_from, attempts, table_path, table_hash, proposed_at, finished_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        r["status"],
                        r["genotype"].to_json(indent=None),
                        genotype_key(r["genotype"]),
                        json.dumps(list(r["decisions"])),
                        json.dumps(r.get("info", {})),
                        r.get("latency_ms"),
                        json.dumps(r.get("breakdown")),
                        r.get("map"),
                        r.get("map50"),
                        r.get("map75"),
                        r.get("reward"),
                        json.dumps(r.get("metrics")),
                        r.get("error"),
                        r.get("cached_from"),
                        1 if r["status"] == "running" else 0,  # it starts right away
                        table[0],
                        table[1],
                        now(),
                        now() if r["status"] in FINISHED else None,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
            if checkpoint is not None:
                self._save_checkpoint(tx, checkpoint)
        return ids

    def start_attempt(self, trial_id: int) -> int:
        with self.transaction() as tx:
            tx.execute("UPDATE trials SET attempts = attempts + 1 WHERE id = ?", (trial_id,))
            (n,) = tx.execute("SELECT attempts FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return int(n)

    def finish(
        self,
        trial_id: int,
        result: ChildResult,
        reward: float | None,
        checkpoint: Checkpoint | None,
    ) -> None:
        """Record a child's result (or failure) and the checkpoint that learned from it."""
        status = "failed" if result.error is not None else "done"
        with self.transaction() as tx:
            cur = tx.execute(
                "UPDATE trials SET status=?, map=?, map50=?, map75=?, reward=?, metrics=?, "
                "error=?, worker=?, train_seconds=?, eval_seconds=?, total_seconds=?, "
                "finished_at=? WHERE id=? AND status='running'",
                (
                    status,
                    result.map,
                    result.map50,
                    result.map75,
                    reward,
                    json.dumps(result.metrics),
                    result.error,
                    result.worker,
                    result.train_seconds,
                    result.eval_seconds,
                    result.total_seconds,
                    now(),
                    trial_id,
                ),
            )
            if cur.rowcount != 1:
                raise StoreError(f"trial {trial_id} is not running; it cannot finish twice")
            if checkpoint is not None:
                self._save_checkpoint(tx, checkpoint)

    def _save_checkpoint(self, tx: sqlite3.Connection, ck: Checkpoint) -> None:
        tx.execute(
            "INSERT OR REPLACE INTO checkpoint(id, strategy, state, saved_at) VALUES (1,?,?,?)",
            (ck.strategy, ck.state, now()),
        )
        if ck.arrays is not None:  # None: unchanged since they were last saved
            tx.execute(
                "INSERT OR REPLACE INTO checkpoint_arrays(id, arrays, version) VALUES (1,?,?)",
                (ck.arrays, ck.arrays_version),
            )

    def checkpoint(self) -> Checkpoint | None:
        rows = self.db.query("SELECT strategy, state FROM checkpoint WHERE id = 1")
        if not rows:
            return None
        row = rows[0]
        found = self.db.query("SELECT arrays, version FROM checkpoint_arrays WHERE id = 1")
        arrays = found[0] if found else None
        return Checkpoint(
            str(row[0]),
            bytes(row[1]),
            None if arrays is None else bytes(arrays[0]),
            None if arrays is None else arrays[1],
        )

    def trials(self, status: str | None = None) -> list[Trial]:
        sql = _SELECT + (" WHERE status = ?" if status else "") + " ORDER BY id"
        rows = self.db.query(sql, (status,) if status else ())
        return [_trial(dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) FROM trials GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.db.query(sql, args)[0][0]

    def summary(self, bands: list[tuple[float, float]]) -> dict[str, Any]:
        """Counts by status, cached reuses, the best reward, and the best mAP in each
        latency band [lo, hi): what the live display shows, in a few queries."""
        best = self.db.query(
            "SELECT id, reward, map, latency_ms FROM trials WHERE status = 'done' "
            "ORDER BY reward DESC, id LIMIT 1"
        )
        return {
            "counts": self.counts(),
            "cached": self._one("SELECT COUNT(*) FROM trials WHERE cached_from IS NOT NULL"),
            "best": best[0] if best else None,
            "bands": [
                self._one(
                    "SELECT MAX(map) FROM trials WHERE status = 'done' "
                    "AND latency_ms >= ? AND latency_ms < ?",
                    (lo, hi),
                )
                for lo, hi in bands
            ],
        }

    def finished_by_key(self, key: str) -> Trial | None:
        """An earlier finished evaluation of the same architecture (done, not cached)."""
        rows = self.db.query(
            _SELECT + " WHERE genotype_key = ? AND status = 'done' AND cached_from IS NULL "
            "ORDER BY id LIMIT 1",
            (key,),
        )
        return _trial(dict(zip(_COLUMNS, rows[0], strict=True))) if rows else None

    # -- finalists --------------------------------------------------------------------

    def _has_finalists(self) -> bool:
        rows = self.db.query("SELECT name FROM sqlite_master WHERE type='table' AND "
                             "name='finalists'")  # fmt: skip
        return bool(rows)

    def start_finalists(self, pairs: list[tuple[int, int]]) -> None:
        """Mark (trial, seed) retrainings as running (new ones inserted, interrupted ones
        counted as another attempt), in one transaction."""
        with self.transaction() as tx:
            tx.execute(_FINALISTS_DDL)
            for trial_id, seed in pairs:
                tx.execute(
                    "INSERT INTO finalists(trial_id, seed, status, attempts, started_at) "
                    "VALUES (?, ?, 'running', 1, ?) ON CONFLICT(trial_id, seed) DO UPDATE SET "
                    "attempts = attempts + 1, status = 'running'",
                    (trial_id, seed, now()),
                )

    def finish_finalist(self, trial_id: int, seed: int, result: ChildResult) -> None:
        status = "failed" if result.error is not None else "done"
        with self.transaction() as tx:
            cur = tx.execute(
                "UPDATE finalists SET status=?, map=?, map50=?, map75=?, metrics=?, error=?, "
                "worker=?, train_seconds=?, eval_seconds=?, total_seconds=?, finished_at=? "
                "WHERE trial_id=? AND seed=? AND status='running'",
                (status, result.map, result.map50, result.map75, json.dumps(result.metrics),
                 result.error, result.worker, result.train_seconds, result.eval_seconds,
                 result.total_seconds, now(), trial_id, seed),
            )  # fmt: skip
            if cur.rowcount != 1:
                raise StoreError(f"finalist {trial_id} seed {seed} is not running")

    def fail_finalist(self, trial_id: int, seed: int, error: str) -> None:
        self.finish_finalist(trial_id, seed, ChildResult(map=None, error=error))

    def finalists(self) -> list[Finalist]:
        if not self._has_finalists():
            return []
        rows = self.db.query(
            "SELECT trial_id, seed, status, map, map50, map75, metrics, error, attempts, "
            "worker, total_seconds FROM finalists ORDER BY trial_id, seed"
        )
        return [Finalist(int(r[0]), int(r[1]), str(r[2]), r[3], r[4], r[5], _loads(r[6]), r[7],
                         int(r[8]), r[9], r[10]) for r in rows]  # fmt: skip


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _trial(row: dict[str, Any]) -> Trial:
    return Trial(
        id=int(row["id"]),
        status=str(row["status"]),
        genotype=genotype_from_dict(json.loads(row["genotype"]), source=f"trial {row['id']}"),
        decisions=tuple(json.loads(row["decisions"])),
        info=json.loads(row["info"]),
        latency_ms=row["latency_ms"],
        breakdown=_loads(row["breakdown"]),
        map=row["map"],
        map50=row["map50"],
        map75=row["map75"],
        reward=row["reward"],
        metrics=_loads(row["metrics"]),
        error=row["error"],
        cached_from=row["cached_from"],
        attempts=int(row["attempts"]),
        worker=row["worker"],
        train_seconds=row["train_seconds"],
        eval_seconds=row["eval_seconds"],
        total_seconds=row["total_seconds"],
        proposed_at=str(row["proposed_at"]),
        finished_at=row["finished_at"],
    )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
