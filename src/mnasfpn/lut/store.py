"""The latency table on disk: one SQLite file per device.

Every measurement is committed in its own transaction (WAL journal), so a build that is
killed at any moment keeps every row it finished and never a half-written one. Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.ops import op_type_of

FORMAT = "mnasfpn-lut"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    started_at TEXT NOT NULL,
    device TEXT NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS ops (
    key TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    median_ms REAL NOT NULL,
    min_ms REAL,
    std_ms REAL,
    runs INTEGER NOT NULL,
    dispersion REAL,
    measured_at TEXT NOT NULL,
    session TEXT NOT NULL,
    worker TEXT
);
CREATE TABLE IF NOT EXISTS op_passes (
    key TEXT NOT NULL,
    pass INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    min_ms REAL,
    std_ms REAL,
    runs INTEGER NOT NULL,
    dispersion REAL,
    measured_at TEXT NOT NULL,
    session TEXT NOT NULL,
    worker TEXT,
    PRIMARY KEY (key, pass)
);
CREATE TABLE IF NOT EXISTS measurements (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    pass INTEGER,
    session TEXT NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS e2e_archs (
    arch_id TEXT PRIMARY KEY,
    name TEXT,
    genotype TEXT NOT NULL,
    input_size INTEGER NOT NULL,
    summary TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS e2e_runs (
    arch_id TEXT NOT NULL REFERENCES e2e_archs(arch_id),
    round INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    min_ms REAL,
    std_ms REAL,
    runs INTEGER NOT NULL,
    dispersion REAL,
    measured_at TEXT NOT NULL,
    session TEXT NOT NULL,
    PRIMARY KEY (arch_id, round)
);
CREATE TABLE IF NOT EXISTS calibration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT NOT NULL,
    fitted_at TEXT NOT NULL
);
"""
_TABLES = (
    "meta",
    "sessions",
    "ops",
    "op_passes",
    "measurements",
    "e2e_archs",
    "e2e_runs",
    "calibration",
)

# What makes two tables comparable: a build never mixes measurements that differ in these.
IDENTITY_FIELDS: tuple[str, ...] = (
    "device",
    "profile",
    "device_model",
    "abi",
    "runtime",
    "runtime_version",
    "converter_version",
    "input_size",
    "num_classes",
    "alpha",
    "depth",
)


class TableError(MnasfpnError):
    """A latency table cannot be used as asked (the message is one line)."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass
class OpRow:
    key: str
    median_ms: float
    min_ms: float | None
    std_ms: float | None
    runs: int
    dispersion: float | None
    measured_at: str
    session: str
    worker: str | None


class TableStore:
    """Read/write access to one table file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> TableStore:
        """Open an existing table (or create an empty one when `create`).

        Anything that is not a table of this schema raises TableError with one line.
        """
        path = Path(path)
        exists = path.exists()
        if not exists and not create:
            raise TableError(f"{path}: no such latency table; build it with mnasfpn-lut build")
        if exists and path.is_dir():
            raise TableError(f"{path} is a directory, not a latency table")
        if exists and path.stat().st_size == 0 and not create:
            raise TableError(
                f"{path} is not a latency table (empty file); rebuild it with mnasfpn-lut build"
            )
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not exists or path.stat().st_size == 0
        try:
            conn = sqlite3.connect(
                str(path), timeout=30, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise TableError(f"{path}: cannot open ({exc})") from None
        store = cls(path, conn)
        try:
            if fresh:
                store._init_schema()
            else:
                store._check_schema()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise TableError(
                f"{path} is not a latency table ({exc}); rebuild it with mnasfpn-lut build"
            ) from None
        except TableError:
            conn.close()
            raise
        return store

    def _init_schema(self) -> None:
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._tx() as c:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.executemany(
                    "INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)",
                    [
                        ("format", json.dumps(FORMAT)),
                        ("schema_version", json.dumps(SCHEMA_VERSION)),
                        ("created_at", json.dumps(now())),
                    ],
                )

    def _check_schema(self) -> None:
        with self._lock:
            names = {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "meta" not in names:
                raise TableError(
                    f"{self.path} is not a latency table (an SQLite file without mnasfpn-lut "
                    "tables); rebuild it with mnasfpn-lut build"
                )
            meta = self._meta_raw()
            if meta.get("format") != FORMAT:
                raise TableError(
                    f"{self.path} is not a latency table (format {meta.get('format')!r}); "
                    "rebuild it with mnasfpn-lut build"
                )
            version = meta.get("schema_version")
            if version != SCHEMA_VERSION:
                raise TableError(
                    f"{self.path} has table schema version {version}, this mnasfpn reads "
                    f"version {SCHEMA_VERSION}; rebuild it with mnasfpn-lut build"
                )
            missing = [t for t in _TABLES if t not in names]
            if missing:
                raise TableError(
                    f"{self.path} is not a latency table (missing tables {', '.join(missing)}); "
                    "rebuild it with mnasfpn-lut build"
                )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # Reading every page catches files truncated after the header.
            row = self._conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else '?'}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TableStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise TableError(
                    f"{self.path} is not a latency table ({exc}); rebuild it with mnasfpn-lut build"
                ) from None

    # -- metadata ---------------------------------------------------------------------

    def _meta_raw(self) -> dict[str, Any]:
        out = {}
        for name, value in self._conn.execute("SELECT name, value FROM meta"):
            try:
                out[name] = json.loads(value)
            except (TypeError, json.JSONDecodeError):
                out[name] = value
        return out

    def meta(self) -> dict[str, Any]:
        with self._lock:
            try:
                return self._meta_raw()
            except sqlite3.DatabaseError as exc:
                raise TableError(
                    f"{self.path} is not a latency table ({exc}); rebuild it with mnasfpn-lut build"
                ) from None

    def set_meta(self, values: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def identity(self) -> dict[str, Any]:
        meta = self.meta()
        return {f: meta[f] for f in IDENTITY_FIELDS if f in meta}

    def check_identity(self, current: Mapping[str, Any], *, out_hint: str = "--out") -> None:
        """Raise a one-line TableError when the stored identity differs from `current`."""
        stored = self.identity()
        if not stored:
            return
        diffs = [
            f"{f} {stored[f]!r} here vs {current[f]!r} now"
            for f in IDENTITY_FIELDS
            if f in stored and f in current and stored[f] != current[f]
        ]
        if diffs:
            raise TableError(
                f"{self.path} was measured differently ({'; '.join(diffs)}); it cannot be "
                f"extended with these measurements: use another {out_hint}"
            )

    def start_session(self, kind: str, device: Mapping[str, Any], note: str = "") -> str:
        sid = uuid.uuid4().hex[:12]
        with self._tx() as c:
            c.execute(
                "INSERT INTO sessions(id, kind, started_at, device, note) VALUES (?, ?, ?, ?, ?)",
                (sid, kind, now(), json.dumps(device, sort_keys=True, default=str), note),
            )
            c.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES ('updated_at', ?)",
                (json.dumps(now()),),
            )
        return sid

    def sessions(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, kind, started_at, device, note FROM sessions ORDER BY rowid")
        return [
            {"id": r[0], "kind": r[1], "started_at": r[2], "device": json.loads(r[3]), "note": r[4]}
            for r in rows
        ]

    # -- op rows ----------------------------------------------------------------------

    def measured_keys(self) -> set[str]:
        return {r[0] for r in self._query("SELECT key FROM ops")}

    def op_latencies(self) -> dict[str, float]:
        return dict(self._query("SELECT key, median_ms FROM ops"))

    def op_rows(self) -> list[OpRow]:
        rows = self._query(
            "SELECT key, median_ms, min_ms, std_ms, runs, dispersion, measured_at, session, "
            "worker FROM ops ORDER BY key"
        )
        return [OpRow(*r) for r in rows]

    def count_ops(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM ops")[0][0])

    def add_op(
        self,
        key: str,
        *,
        median_ms: float,
        min_ms: float | None,
        std_ms: float | None,
        runs: int,
        dispersion: float | None,
        session: str,
        worker: str | None = None,
    ) -> None:
        """Insert one op measured in a single pass (entry and log in one transaction)."""
        self.add_op_pass(
            key, 0, passes=1, median_ms=median_ms, min_ms=min_ms, std_ms=std_ms, runs=runs,
            dispersion=dispersion, session=session, worker=worker,
        )  # fmt: skip

    def add_op_pass(
        self,
        key: str,
        pass_index: int,
        *,
        passes: int,
        median_ms: float,
        min_ms: float | None,
        std_ms: float | None,
        runs: int,
        dispersion: float | None,
        session: str,
        worker: str | None = None,
    ) -> bool:
        """Record one timing pass of `key` in one transaction; once `passes` passes are in,
        write the op's entry in the same transaction. True when the entry was written.

        The entry is the fastest pass median: load from other processes only ever slows a
        pass down, so a pass that ran beside other work is outvoted by a quiet one."""
        if not (median_ms == median_ms) or median_ms < 0:  # NaN or negative
            raise ValueError(f"{key}: invalid latency {median_ms!r}")
        at = now()
        with self._tx() as c:
            c.execute(
                "INSERT INTO op_passes(key, pass, median_ms, min_ms, std_ms, runs, dispersion, "
                "measured_at, session, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, pass_index, median_ms, min_ms, std_ms, runs, dispersion, at, session,
                 worker),
            )  # fmt: skip
            c.execute(
                "INSERT INTO measurements(key, pass, session, ok, error, at) "
                "VALUES (?, ?, ?, 1, NULL, ?)",
                (key, pass_index, session, at),
            )
            rows = c.execute(
                "SELECT median_ms, min_ms, runs FROM op_passes WHERE key = ? ORDER BY median_ms",
                (key,),
            ).fetchall()
            if len(rows) < passes:
                return False
            medians = [r[0] for r in rows]
            mins = [r[1] for r in rows if r[1] is not None]
            # Across passes, the spread of the medians says how much the machine moved.
            spread = (medians[-1] - medians[0]) / medians[0] if medians[0] > 0 else None
            c.execute(
                "INSERT OR REPLACE INTO ops(key, type, median_ms, min_ms, std_ms, runs, "
                "dispersion, measured_at, session, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, op_type_of(key), medians[0], min(mins) if mins else None, std_ms,
                 sum(r[2] for r in rows), spread, at, session, worker),
            )  # fmt: skip
            return True

    def passes_done(self) -> dict[str, set[int]]:
        done: dict[str, set[int]] = {}
        for key, p in self._query("SELECT key, pass FROM op_passes"):
            done.setdefault(key, set()).add(int(p))
        return done

    def add_failure(
        self, key: str, error: str, *, session: str, pass_index: int | None = None
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO measurements(key, pass, session, ok, error, at) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (key, pass_index, session, error, now()),
            )

    def measurement_log(self) -> list[tuple[str, str, bool, str | None]]:
        rows = self._query("SELECT key, session, ok, error FROM measurements ORDER BY seq")
        return [(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    # -- end-to-end measurements ------------------------------------------------------

    def add_e2e_arch(
        self, arch_id: str, *, name: str | None, genotype: str, input_size: int, summary: str
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO e2e_archs(arch_id, name, genotype, input_size, summary, "
                "added_at) VALUES (?, ?, ?, ?, ?, ?)",
                (arch_id, name, genotype, input_size, summary, now()),
            )

    def add_e2e_run(
        self,
        arch_id: str,
        round_: int,
        *,
        median_ms: float,
        min_ms: float | None,
        std_ms: float | None,
        runs: int,
        dispersion: float | None,
        session: str,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO e2e_runs(arch_id, round, median_ms, min_ms, std_ms, runs, "
                "dispersion, measured_at, session) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (arch_id, round_, median_ms, min_ms, std_ms, runs, dispersion, now(), session),
            )

    def e2e_archs(self) -> dict[str, dict[str, Any]]:
        rows = self._query(
            "SELECT arch_id, name, genotype, input_size, summary FROM e2e_archs ORDER BY rowid"
        )
        return {
            r[0]: {
                "name": r[1],
                "genotype": json.loads(r[2]),
                "input_size": r[3],
                "summary": json.loads(r[4]),
            }
            for r in rows
        }

    def e2e_runs(self) -> dict[str, dict[int, dict[str, Any]]]:
        rows = self._query(
            "SELECT arch_id, round, median_ms, min_ms, std_ms, runs, dispersion FROM e2e_runs"
        )
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for a, rnd, med, mn, sd, runs, disp in rows:
            out.setdefault(a, {})[rnd] = {
                "median_ms": med,
                "min_ms": mn,
                "std_ms": sd,
                "runs": runs,
                "dispersion": disp,
            }
        return out

    # -- calibration ------------------------------------------------------------------

    def calibration_doc(self) -> dict[str, Any] | None:
        rows = self._query("SELECT doc FROM calibration WHERE id = 1")
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except json.JSONDecodeError:
            raise TableError(
                f"{self.path}: the stored calibration is not valid JSON; "
                "refit it with mnasfpn-lut validate"
            ) from None

    def set_calibration_doc(self, doc: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO calibration(id, doc, fitted_at) VALUES (1, ?, ?)",
                (json.dumps(doc, sort_keys=True), now()),
            )
