"""The latency table on disk: one SQLite file per device.

Every measurement is committed in its own transaction, so a build that is killed at any
moment keeps every row it finished and never a half-written one. The file handling
(format check, writer lock, read-only opens, meta) is `mnasfpn.sqlite_db`'s. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnasfpn.ir.ops import op_type_of
from mnasfpn.sqlite_db import Database, DatabaseError, Schema, now

FORMAT = "mnasfpn-lut"
# 3: each timing records the pace reference it was divided by (pace_ref), that
# reference's fast-phase level then (pace_base), its raw statistic (raw_ms) and a flag
# when the pace moved beyond correction (devices/pace.py).
SCHEMA_VERSION = 3
# The columns a paced timing adds to a pass, an entry and an end-to-end run.
_PACE_DDL = """    pace_ref TEXT,
    pace_base REAL,
    raw_ms REAL,
    flag TEXT"""

_SCHEMA = """
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
    worker TEXT,
%PACE%
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
%PACE%,
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
%PACE%,
    PRIMARY KEY (arch_id, round)
);
CREATE TABLE IF NOT EXISTS calibration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT NOT NULL,
    fitted_at TEXT NOT NULL
);
""".replace("%PACE%", _PACE_DDL)
_TABLES = (
    "sessions",
    "ops",
    "op_passes",
    "measurements",
    "e2e_archs",
    "e2e_runs",
    "calibration",
)

# What makes two tables comparable: a build never mixes measurements that differ in any
# of these (the device and how it was driven, the software, the detector's settings).
DEVICE_FIELDS: tuple[str, ...] = (
    "device",
    "profile",
    "device_model",
    "abi",
    "runtime",
    "runtime_version",
    "binary_version",
    "core",
    "taskset_mask",
    "threads",
    "use_xnnpack",
)
SETTINGS_FIELDS: tuple[str, ...] = ("input_size", "num_classes", "alpha", "depth")
# How each op was timed: runs and warm-ups change an op's figure (end-to-end runs in
# validate are timed with their own counts, so they are compared on the fields above).
OP_TIMING_FIELDS: tuple[str, ...] = (
    "statistic",
    "warmup_runs",
    "num_runs",
    "min_repeats",
    "max_repeats",
    "stability_tolerance",
    "cooldown_s",
    "runs",
    "warmup_s",
)
# The adaptive run-count rule's knobs (recorded only for tables it measured).
ADAPTIVE_FIELDS: tuple[str, ...] = ("target_ci", "confidence", "min_runs")
# ... and its effort caps, recorded but not matched: a cap bounds how long a noisy op is
# timed, not what its entry estimates, so entries timed under other caps mix (a table from
# before the host's max_time_s went from 2 to 0.5 s resumes).
ADAPTIVE_CAPS: tuple[str, ...] = ("max_runs", "max_time_s")
# What a table that predates a timing field was measured with.
LEGACY_TIMING: dict[str, Any] = {"runs": "fixed", "warmup_s": 0.0}
IDENTITY_FIELDS: tuple[str, ...] = (
    DEVICE_FIELDS + SETTINGS_FIELDS + OP_TIMING_FIELDS + ADAPTIVE_FIELDS
)
NEW_TABLE_ADVICE = (
    "its entries cannot be mixed with these: start a new table with --out NEW.sqlite, "
    "or build with the table's settings"
)
# The statistic an op entry holds (the `median_ms` column); stored as meta `statistic`.
DEFAULT_STATISTIC = "median"


class TableError(DatabaseError):
    """A latency table cannot be used as asked (the message is one line)."""


SCHEMA = Schema(
    format=FORMAT,
    version=SCHEMA_VERSION,
    ddl=_SCHEMA,
    tables=_TABLES,
    noun="latency table",
    make_hint="build it with mnasfpn-lut build",
    remake_hint="rebuild it: mnasfpn-lut build --device DEVICE --out NEW.sqlite",
    error=TableError,
)


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
    flag: str | None = None


_PASS_COLS = (
    "median_ms, min_ms, std_ms, runs, dispersion, measured_at, session, worker, "
    "pace_ref, pace_base, raw_ms, flag"
)


def _write_entry(c: sqlite3.Connection, key: str) -> None:
    """Set `key`'s entry to its fastest pass: every statistic of the row (median, min,
    std, runs, session, worker) comes from that one pass. `dispersion` is the spread of
    the pass medians, (slowest - fastest) / fastest, which says how much the machine
    moved; with one pass, that pass's own dispersion. A pass whose pace moved beyond
    correction (flag) is the entry only when every pass is, and then the entry keeps the
    flag."""
    rows = c.execute(
        f"SELECT {_PASS_COLS} FROM op_passes WHERE key = ? "
        "ORDER BY flag IS NOT NULL, median_ms, pass",
        (key,),
    ).fetchall()
    best = rows[0]
    rows = sorted(rows, key=lambda r: r[0])
    if len(rows) > 1:
        spread = (rows[-1][0] - best[0]) / best[0] if best[0] > 0 else None
    else:
        spread = best[4]
    c.execute(
        f"INSERT OR REPLACE INTO ops(key, type, {_PASS_COLS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, op_type_of(key), best[0], best[1], best[2], best[3], spread, *best[5:]),
    )


def _pace_cols(pace: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """(pace_ref, pace_base, raw_ms, flag) of a device result's pace record."""
    if not pace:
        return (None, None, None, None)
    flag = (
        f"pace {pace.get('pace', 0):.2f}x beyond correction" if pace.get("uncorrectable") else None
    )
    return (pace.get("reference"), pace.get("base_ms"), pace.get("raw_ms"), flag)


class TableStore:
    """Read/write access to one table file. Thread-safe (one connection behind a lock).

    Opened for writing, the file is locked against a second writer until `close()`;
    opened `readonly`, it may be a read-only file in a read-only folder, and nothing is
    written, not even a side file."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False, readonly: bool = False) -> TableStore:
        """Open an existing table (or create an empty one when `create`).

        Anything that is not a table of this schema raises TableError with one line.
        """
        return cls(Database.open(path, SCHEMA, create=create, readonly=readonly))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TableStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.tx()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._db.query(sql, args)

    # -- metadata ---------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return self._db.meta()

    def set_meta(self, values: Mapping[str, Any]) -> None:
        self._db.set_meta(values)

    def identity(self) -> dict[str, Any]:
        meta = self.meta()
        return {f: meta[f] for f in IDENTITY_FIELDS if f in meta}

    def check_identity(
        self,
        current: Mapping[str, Any],
        *,
        fields: tuple[str, ...] = IDENTITY_FIELDS,
        advice: str = NEW_TABLE_ADVICE,
    ) -> None:
        """Raise a one-line TableError when the table holds measurements and its recorded
        identity differs from `current` in any of `fields` (a field the table does not
        record counts as different: nothing says its measurements were taken that way)."""
        if not self.count_ops() and not self._query("SELECT 1 FROM e2e_runs LIMIT 1"):
            return  # nothing measured yet: any identity may start it
        stored = self.meta()
        if "num_runs" in stored:  # an identity recorded before these fields existed
            stored = {**LEGACY_TIMING, **stored}
        diffs = [
            f"{f} {stored[f]!r} here vs {current[f]!r} now"
            if f in stored
            else f"{f} unrecorded here vs {current[f]!r} now"
            for f in fields
            if f in current and (f not in stored or stored[f] != current[f])
        ]
        old, new = stored.get("statistic"), current.get("statistic")
        # Only the statistic differs, and now it is paced: the table predates the pace.
        only_statistic = len(diffs) == 1 and old != new
        if only_statistic and old and str(new).startswith("pace"):
            raise TableError(
                f"{self.path} was built with the statistic {old}, before timings were divided "
                f"by the machine's pace ({new} now); rebuild it: mnasfpn-lut build --device "
                f"{stored.get('profile') or 'host'} --out NEW.sqlite (or keep timing it as it "
                "was: --set statistic=p10)"
            )
        if diffs:
            raise TableError(f"{self.path} was measured differently ({'; '.join(diffs)}); {advice}")

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
            "worker, flag FROM ops ORDER BY key"
        )
        return [OpRow(*r) for r in rows]

    def count_ops(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM ops")[0][0])

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
        pace: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record one timing pass of `key` in one transaction. The op's entry is written
        (or refreshed) in the same transaction once the key has `passes` passes, and
        refreshed by every later pass of a key that already has one. True when the key
        has its `passes` passes. `pace`: the device result's pace record (reference,
        base_ms, raw_ms, uncorrectable), for a paced statistic.

        The entry is the fastest pass so far: load from other processes only ever slows a
        pass down, so a pass that ran beside other work is outvoted by a quiet one."""
        if not (median_ms == median_ms) or median_ms < 0:  # NaN or negative
            raise ValueError(f"{key}: invalid latency {median_ms!r}")
        at = now()
        with self._tx() as c:
            c.execute(
                f"INSERT INTO op_passes(key, pass, {_PASS_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, pass_index, median_ms, min_ms, std_ms, runs, dispersion, at, session,
                 worker, *_pace_cols(pace)),
            )  # fmt: skip
            c.execute(
                "INSERT INTO measurements(key, pass, session, ok, error, at) "
                "VALUES (?, ?, ?, 1, NULL, ?)",
                (key, pass_index, session, at),
            )
            count = c.execute("SELECT COUNT(*) FROM op_passes WHERE key = ?", (key,)).fetchone()
            has_entry = c.execute("SELECT 1 FROM ops WHERE key = ?", (key,)).fetchone()
            if count[0] >= passes or has_entry:
                _write_entry(c, key)
            return bool(count[0] >= passes)

    def settle_entries(self, passes: int) -> int:
        """Write the entry of every key that has at least `passes` passes but no entry
        (a build stopped between a key's passes, resumed asking for fewer); returns how
        many were written."""
        with self._tx() as c:
            keys = [
                r[0]
                for r in c.execute(
                    "SELECT key FROM op_passes WHERE key NOT IN (SELECT key FROM ops) "
                    "GROUP BY key HAVING COUNT(*) >= ?",
                    (passes,),
                )
            ]
            for key in keys:
                _write_entry(c, key)
        return len(keys)

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
        pace: Mapping[str, Any] | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO e2e_runs(arch_id, round, median_ms, min_ms, std_ms, runs, "
                "dispersion, measured_at, session, pace_ref, pace_base, raw_ms, flag) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (arch_id, round_, median_ms, min_ms, std_ms, runs, dispersion, now(), session,
                 *_pace_cols(pace)),
            )  # fmt: skip

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
            "SELECT arch_id, round, median_ms, min_ms, std_ms, runs, dispersion, raw_ms, flag "
            "FROM e2e_runs"
        )
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for a, rnd, med, mn, sd, runs, disp, raw, flag in rows:
            out.setdefault(a, {})[rnd] = {
                "median_ms": med,
                "min_ms": mn,
                "std_ms": sd,
                "runs": runs,
                "dispersion": disp,
                "raw_ms": raw,
                "flag": flag,
            }
        return out

    # -- the pace -------------------------------------------------------------------

    def rebase_pace(self, bases: Mapping[str, float]) -> int:
        """Express every paced timing against each reference's fast level `bases` (the
        lowest a device saw so far): a timing divided by the pace against an older, higher
        level is scaled by new / old, which is exact since it is raw × level / reference.
        Entries of the keys touched are rewritten. Returns the rows changed."""
        changed = 0
        with self._tx() as c:
            keys: set[str] = set()
            for name, base in bases.items():
                where = "WHERE pace_ref = ? AND pace_base IS NOT NULL AND pace_base != ?"
                keys |= {
                    r[0] for r in c.execute(f"SELECT key FROM op_passes {where}", (name, base))
                }
                for table in ("op_passes", "e2e_runs"):
                    cur = c.execute(
                        f"UPDATE {table} SET median_ms = median_ms * ? / pace_base, "
                        f"pace_base = ? {where}",
                        (base, base, name, base),
                    )
                    changed += cur.rowcount
            have = {r[0] for r in c.execute("SELECT key FROM ops")}
            for key in keys & have:
                _write_entry(c, key)
        return changed

    def flagged_keys(self) -> dict[str, str]:
        """Entries whose every pass ran at a pace beyond correction, with the flag."""
        return dict(self._query("SELECT key, flag FROM ops WHERE flag IS NOT NULL"))

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
