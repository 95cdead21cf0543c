"""One SQLite file holding one kind of record (latency table, trial store): the plumbing.

- `Database.open(path, schema)` checks that a file is of this kind and schema version
  (format and version live in a key/value `meta` table) and answers anything else with
  one line that says what to do.
- Writers hold an exclusive lock on the file for as long as they are open, so a second
  writer is refused with a clear message instead of racing the first; they journal in
  WAL (every commit is cheap and readers never block), and on close turn the file back
  into a plain rollback-journal file, so the file alone is the whole record.
- Readers (`readonly=True`) take no lock and never create a file: they work on a
  read-only file, in a read-only folder, and beside a running writer.
- `tx()` is one transaction: committed on success, rolled back on any error.

Nothing here imports anything of the project but its error type.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mnasfpn.errors import MnasfpnError

_META_DDL = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
# Byte 18 of an SQLite header is the write format: 2 = WAL, 1 = rollback journal.
_WAL_HEADER_BYTE = 18
# Who holds a writer lock, for the message a second writer gets.
WRITER_META = "writer"


class DatabaseError(MnasfpnError):
    """A database file cannot be used as asked (the message is one line)."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Schema:
    """What a file of one kind looks like, and how to talk about it."""

    format: str  # stored as meta 'format'
    version: int  # stored as meta 'schema_version'
    ddl: str  # CREATE TABLE IF NOT EXISTS ... statements, ';'-separated
    tables: tuple[str, ...]  # every table a valid file has (besides meta)
    noun: str = "database"  # "latency table": what the user calls such a file
    make_hint: str = ""  # "build it with mnasfpn-lut build": how to make one
    remake_hint: str = ""  # "rebuild it with mnasfpn-lut build": what to do with a bad one
    error: type[DatabaseError] = DatabaseError


class Database:
    """One open file. Thread-safe: one connection behind a lock."""

    def __init__(
        self,
        path: Path,
        schema: Schema,
        conn: sqlite3.Connection,
        *,
        readonly: bool,
        lock_fd: int | None,
    ) -> None:
        self.path = path
        self.schema = schema
        self.readonly = readonly
        self._conn = conn
        self._lock = threading.RLock()
        self._lock_fd = lock_fd
        self._closed = False

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        schema: Schema,
        *,
        create: bool = False,
        readonly: bool = False,
        timeout: float = 30.0,
    ) -> Database:
        """Open `path` for reading (`readonly`) or writing (then also create it when
        `create`). Raises `schema.error` with one line for anything that is not a file of
        this schema, a read-only file asked for writing, or a file another writer holds."""
        path = Path(path)
        err = schema.error
        exists = path.exists()
        hint = f"; {schema.make_hint}" if schema.make_hint else ""
        if not exists and (readonly or not create):
            raise err(f"{path}: no such {schema.noun}{hint}")
        if exists and path.is_dir():
            raise err(f"{path} is a directory, not a {schema.noun}")
        empty = exists and path.stat().st_size == 0
        if empty and (readonly or not create):
            raise err(f"{path} is not a {schema.noun} (empty file){_remake(schema)}")
        if readonly:
            return cls._open_readonly(path, schema, timeout)
        return cls._open_writer(path, schema, fresh=not exists or empty, timeout=timeout)

    @classmethod
    def _open_readonly(cls, path: Path, schema: Schema, timeout: float) -> Database:
        wal = Path(f"{path}-wal")
        if _is_wal(path) and not wal.exists() and _writable_place(path):
            # A WAL-format file with no log (an older file): a read-only connection would
            # create -wal/-shm files and leave them behind, so return it to the plain
            # format once. With a log present a writer is at work (or was stopped: its
            # files are already there), and a read-only connection adds nothing.
            _to_rollback_journal(path, timeout)
        if _is_wal(path) and not wal.exists():
            # Still WAL-format but not writable: nothing is pending in a log, so the file
            # alone is complete; open it as immutable (no lock, no side files).
            uri = f"{_uri(path)}?immutable=1"
        else:
            uri = f"{_uri(path)}?mode=ro"
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=timeout, check_same_thread=False, isolation_level=None
            )
            db = cls(path, schema, conn, readonly=True, lock_fd=None)
        except sqlite3.Error as exc:
            raise schema.error(f"{path}: cannot open for reading ({exc})") from None
        try:
            db._check_schema()
        except sqlite3.OperationalError as exc:
            db.close()
            if "unable to open" in str(exc) and wal.exists():
                raise schema.error(
                    f"{path} has an unfinished write log ({wal.name}) from a writer that was "
                    f"stopped, and this folder is read-only; open it once where it can be "
                    f"written to finish the log"
                ) from None
            raise schema.error(f"{path} is not a {schema.noun} ({exc}){_remake(schema)}") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise schema.error(f"{path} is not a {schema.noun} ({exc}){_remake(schema)}") from None
        except DatabaseError:
            db.close()
            raise
        return db

    @classmethod
    def _open_writer(cls, path: Path, schema: Schema, *, fresh: bool, timeout: float) -> Database:
        err = schema.error
        if fresh:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise err(f"{path}: cannot create its folder ({exc.strerror or exc})") from None
        if not _writable_place(path):
            what = "file" if path.exists() and not os.access(path, os.W_OK) else "folder"
            raise err(
                f"{path} is read-only (its {what} cannot be written); copy it to a "
                f"writable place to change it"
            )
        lock_fd = _take_writer_lock(path, schema)
        try:
            conn = sqlite3.connect(
                str(path), timeout=timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise err(f"{path}: cannot open ({exc})") from None
        db = cls(path, schema, conn, readonly=False, lock_fd=lock_fd)
        try:
            if fresh:
                db._init_schema()
            else:
                db._check_schema()
            db._conn.execute("PRAGMA journal_mode=WAL")
            db._conn.execute("PRAGMA synchronous=NORMAL")
            db.set_meta({WRITER_META: _writer_stamp()})
        except sqlite3.DatabaseError as exc:
            db.close()
            raise err(f"{path} is not a {schema.noun} ({exc}){_remake(schema)}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _init_schema(self) -> None:
        with self.tx() as c:
            c.execute(_META_DDL)
            for statement in self.schema.ddl.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.executemany(
                "INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)",
                [
                    ("format", json.dumps(self.schema.format)),
                    ("schema_version", json.dumps(self.schema.version)),
                    ("created_at", json.dumps(now())),
                ],
            )

    def _check_schema(self) -> None:
        s, err, path = self.schema, self.schema.error, self.path
        hint = _remake(s)
        with self._lock:
            names = {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "meta" not in names:
                raise err(f"{path} is not a {s.noun} (an SQLite file of something else){hint}")
            meta = self._meta_raw()
            if meta.get("format") != s.format:
                raise err(f"{path} is not a {s.noun} (format {meta.get('format')!r}){hint}")
            version = meta.get("schema_version")
            if version != s.version:
                raise err(
                    f"{path} has {s.noun} schema version {version}, this mnasfpn reads "
                    f"version {s.version}{hint}"
                )
            missing = [t for t in s.tables if t not in names]
            if missing:
                raise err(f"{path} is not a {s.noun} (missing tables {', '.join(missing)}){hint}")
            # Reading every page catches files truncated after the header.
            row = self._conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else '?'}")

    def close(self) -> None:
        """Close; a writer also clears its stamp, returns the file to the plain journal
        format (so readers need no side files) and releases its lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.readonly:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("DELETE FROM meta WHERE name = ?", (WRITER_META,))
                    # Fails (harmlessly: the file stays WAL until a later close) while a
                    # reader is inside a transaction; do not wait long for one.
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("PRAGMA busy_timeout = 200")
                        self._conn.execute("PRAGMA journal_mode=DELETE")
                self._conn.close()
            finally:
                # Only after the connection is closed: closing any descriptor of the file
                # drops this process's POSIX locks on it, SQLite's included.
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- statements -------------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any error."""
        if self.readonly:
            raise self.schema.error(f"{self.path} was opened read-only; it cannot be changed")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read; a damaged file is one line, not a traceback."""
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self.schema.error(
                    f"{self.path} is not a {self.schema.noun} ({exc}){_remake(self.schema)}"
                ) from None

    # -- meta -------------------------------------------------------------------------

    def _meta_raw(self) -> dict[str, Any]:
        out = {}
        for name, value in self._conn.execute("SELECT name, value FROM meta"):
            try:
                out[name] = json.loads(value)
            except (TypeError, json.JSONDecodeError):
                out[name] = value
        return out

    def meta(self) -> dict[str, Any]:
        """Every meta value (stored as JSON), by name."""
        with self._lock:
            try:
                return self._meta_raw()
            except sqlite3.DatabaseError as exc:
                raise self.schema.error(
                    f"{self.path} is not a {self.schema.noun} ({exc}){_remake(self.schema)}"
                ) from None

    def set_meta(self, values: Mapping[str, Any]) -> None:
        with self.tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True, default=str)) for k, v in values.items()],
            )


# -- helpers ------------------------------------------------------------------------------


def _remake(schema: Schema) -> str:
    return f"; {schema.remake_hint}" if schema.remake_hint else ""


def _uri(path: Path) -> str:
    # A URI, so special characters in the path must be escaped.
    return "file:" + quote(str(path.resolve()))


def _is_wal(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return (
        len(header) == 100
        and header.startswith(b"SQLite format 3\0")
        and header[_WAL_HEADER_BYTE] == 2
    )


def _writable_place(path: Path) -> bool:
    folder = path.parent if str(path.parent) else Path(".")
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)


def _to_rollback_journal(path: Path, timeout: float) -> None:
    """Switch a WAL-format file without a live writer to the rollback journal format."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a writer is active: its file, leave it be
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE")
            finally:
                conn.close()
    finally:
        os.close(fd)


def _writer_stamp() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}


def _take_writer_lock(path: Path, schema: Schema) -> int:
    """An exclusive flock on the file itself (flock and SQLite's POSIX locks are
    independent on Linux), held until close: no lock file is left behind, and a writer
    that dies releases it with its last descriptor.

    Closing a descriptor drops the process's POSIX locks on the file, SQLite's included;
    so ours is closed only after the connection, and one process should not hold a writer
    of a file while it opens another of the same file."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise schema.error(
            f"{path} is being written by another process{_holder(path)}; wait for it to "
            f"finish (or stop it), or write to another file"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(path: Path) -> str:
    """' (pid N on HOST since T)' from the holder's stamp, when it can be read."""
    try:
        conn = sqlite3.connect(f"{_uri(path)}?mode=ro", uri=True, timeout=2)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (WRITER_META,)).fetchone()
        finally:
            conn.close()
        stamp = json.loads(row[0]) if row else None
    except (sqlite3.Error, json.JSONDecodeError, TypeError):
        return ""
    if not isinstance(stamp, dict):
        return ""
    return f" (pid {stamp.get('pid')} on {stamp.get('host')} since {stamp.get('since')})"
