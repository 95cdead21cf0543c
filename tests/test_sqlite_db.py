"""The SQLite plumbing shared by the latency table and the search's trial store."""

from __future__ import annotations

import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from conftest import ReadOnlyRunner
from mnasfpn.errors import MnasfpnError
from mnasfpn.sqlite_db import Database, DatabaseError, Schema

SCHEMA = Schema(
    format="test-store",
    version=3,
    ddl="CREATE TABLE IF NOT EXISTS items (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    tables=("items",),
    noun="test store",
    make_hint="make it with maker",
    remake_hint="remake it with maker",
)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_create_write_read_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Database.open(path, SCHEMA, create=True) as db:
        with db.tx() as c:
            c.execute("INSERT INTO items VALUES ('a', 1)")
        db.set_meta({"note": {"x": [1, 2]}})
        # A failed transaction leaves nothing behind.
        with pytest.raises(sqlite3.IntegrityError), db.tx() as c:
            c.execute("INSERT INTO items VALUES ('b', 2)")
            c.execute("INSERT INTO items VALUES ('a', 3)")
    with Database.open(path, SCHEMA, readonly=True) as db:
        assert db.query("SELECT k, v FROM items") == [("a", 1)]
        meta = db.meta()
        assert (meta["format"], meta["schema_version"], meta["note"]) == (
            "test-store",
            3,
            {"x": [1, 2]},
        )
        assert "writer" not in meta  # a closed writer leaves no stamp
        with pytest.raises(DatabaseError, match="opened read-only"):
            db.set_meta({"y": 1})
    assert _files(tmp_path) == ["s.db"]


def test_errors_are_one_line_project_errors(tmp_path: Path) -> None:
    cases = {
        "missing": (tmp_path / "none.db", "no such test store; make it with maker"),
        "empty": (tmp_path / "empty.db", "(empty file); remake it with maker"),
        "text": (tmp_path / "t.txt", "is not a test store"),
        "folder": (tmp_path, "is a directory"),
    }
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "t.txt").write_text("hello\n" * 100)
    other = Schema(format="other", version=3, ddl=SCHEMA.ddl, tables=("items",))
    with Database.open(tmp_path / "other.db", other, create=True):
        pass
    cases["format"] = (tmp_path / "other.db", "format 'other'")
    newer = Schema(format="test-store", version=9, ddl=SCHEMA.ddl, tables=("items",))
    with Database.open(tmp_path / "newer.db", newer, create=True):
        pass
    cases["version"] = (tmp_path / "newer.db", "schema version 9, this mnasfpn reads version 3")
    for name, (path, text) in cases.items():
        for readonly in (True, False):
            with pytest.raises(MnasfpnError) as info:
                Database.open(path, SCHEMA, readonly=readonly)
            msg = str(info.value)
            assert text in msg and "\n" not in msg, (name, msg)


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Database.open(path, SCHEMA, create=True) as first:
        with pytest.raises(DatabaseError) as info:
            Database.open(path, SCHEMA)
        msg = str(info.value)
        assert "being written by another process" in msg and f"pid {os.getpid()}" in msg
        # Readers are not blocked by a writer.
        with Database.open(path, SCHEMA, readonly=True) as reader:
            assert reader.query("SELECT COUNT(*) FROM items") == [(0,)]
        with first.tx() as c:
            c.execute("INSERT INTO items VALUES ('a', 1)")
    # Released on close.
    with Database.open(path, SCHEMA) as again:
        assert again.query("SELECT v FROM items") == [(1,)]


def test_reading_an_old_wal_file_leaves_no_side_files(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Database.open(path, SCHEMA, create=True):
        pass
    with closing(sqlite3.connect(path)) as c:  # as files written before this module
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("INSERT INTO items VALUES ('a', 1)")
        c.commit()
    assert _files(tmp_path) == ["s.db"]
    with Database.open(path, SCHEMA, readonly=True) as db:
        assert db.query("SELECT v FROM items") == [(1,)]
    assert _files(tmp_path) == ["s.db"]


def test_read_only_file_and_folder(tmp_path: Path, run_readonly: ReadOnlyRunner) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "s.db"
    with Database.open(path, SCHEMA, create=True) as db, db.tx() as c:
        c.execute("INSERT INTO items VALUES ('a', 1)")
    with closing(sqlite3.connect(path)) as c:  # also the WAL format of older files
        c.execute("PRAGMA journal_mode=WAL")
    script = f"""
import sys
from mnasfpn.sqlite_db import Database, DatabaseError
from test_sqlite_db import SCHEMA
with Database.open({str(path)!r}, SCHEMA, readonly=True) as db:
    print("rows", db.query("SELECT k, v FROM items"))
try:
    Database.open({str(path)!r}, SCHEMA)
except DatabaseError as exc:
    print("write:", exc)
"""
    env_path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    res = run_readonly(folder, ["env", f"PYTHONPATH={env_path}", sys.executable, "-c", script])
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "rows [('a', 1)]"
    assert lines[1].startswith(f"write: {path} is read-only") and len(lines) == 2
    assert _files(folder) == ["s.db"]
