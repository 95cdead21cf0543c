"""Table files: transactional rows, identity checks and clear errors for bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_table
from mnasfpn.cli import lut_main
from mnasfpn.lut.build import open_table_for
from mnasfpn.lut.store import SCHEMA_VERSION, TableError, TableStore
from mnasfpn.lut.table import LatencyTable

IDENTITY = {
    "device": "host",
    "profile": "host",
    "device_model": "test cpu",
    "abi": "x86_64",
    "runtime": "ai-edge-litert",
    "runtime_version": "2.3.0",
    "converter_version": "2.21.0",
    "input_size": 64,
    "num_classes": 90,
    "alpha": 1.0,
    "depth": 64,
}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.sqlite"
    make_table(good)
    data = good.read_bytes()
    files = {}
    files["empty"] = tmp_path / "empty.sqlite"
    files["empty"].write_bytes(b"")
    files["random"] = tmp_path / "random.sqlite"
    files["random"].write_bytes(bytes((i * 7919 + 13) % 256 for i in range(8192)))
    files["truncated"] = tmp_path / "truncated.sqlite"
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("not a table\n")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE people (name TEXT)")
        c.execute("INSERT INTO people VALUES ('x')")
    files["other-schema"] = other
    return files


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "text", "other-schema"])
def test_bad_files_are_rejected_in_one_line(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(TableError) as info:
        LatencyTable.open(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "not a latency table" in msg and "mnasfpn-lut build" in msg
    for args in (
        ["show", str(path)],
        ["predict", "--lut", str(path), "--arch", "nasfpnlite"],
        ["export", str(path), "--csv", str(tmp_path / "x.csv")],
    ):
        res = CliRunner().invoke(lut_main, args)
        assert res.exit_code == 1, res.output
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1
        assert "Traceback" not in res.output


def test_missing_file_and_schema_version(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no such latency table"):
        TableStore.open(tmp_path / "nope.sqlite")
    path = tmp_path / "t.sqlite"
    make_table(path)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(TableError, match=f"schema version 99.*reads version {SCHEMA_VERSION}"):
        TableStore.open(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile", "pixel4"),
        ("device_model", "other cpu"),
        ("input_size", 320),
        ("runtime_version", "2.4.0"),
        ("alpha", 0.75),
    ],
)
def test_mismatched_table_is_never_extended(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "t.sqlite"
    make_table(path)
    with pytest.raises(TableError) as info:
        open_table_for(path, {**IDENTITY, field: value}, {}, ["nasfpnlite-s"])
    msg = str(info.value)
    assert "\n" not in msg and field in msg and repr(value) in msg and "--out NEW.sqlite" in msg
    with TableStore.open(path) as store:
        assert store.meta()[field] == IDENTITY[field]


def test_same_identity_extends_and_merges_spaces(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    make_table(path)
    store = open_table_for(path, dict(IDENTITY), {"model": "test cpu"}, ["mnasfpn"])
    try:
        assert store.meta()["spaces"] == ["mnasfpn", "nasfpnlite-s"]
    finally:
        store.close()


def test_rows_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    with TableStore.open(path, create=True) as store:
        sid = store.start_session("build", {})
        store.add_op_pass(
            "add/8x8x64/act=none",
            0,
            passes=1,
            median_ms=0.01,
            min_ms=0.01,
            std_ms=0.0,
            runs=5,
            dispersion=0.0,
            session=sid,
        )
        # A duplicate insert fails as a whole: neither row nor log entry is added.
        with pytest.raises(sqlite3.IntegrityError):
            store.add_op_pass(
                "add/8x8x64/act=none",
                0,
                passes=1,
                median_ms=0.02,
                min_ms=0.02,
                std_ms=0.0,
                runs=5,
                dispersion=0.0,
                session=sid,
            )
        with pytest.raises(ValueError):
            store.add_op_pass(
                "add/4x4x64/act=none",
                0,
                passes=1,
                median_ms=float("nan"),
                min_ms=None,
                std_ms=None,
                runs=1,
                dispersion=None,
                session=sid,
            )
        assert store.op_latencies() == {"add/8x8x64/act=none": 0.01}
        assert [k for k, *_ in store.measurement_log()] == ["add/8x8x64/act=none"]
    # Closed, the file is the whole table again: plain journal format, no side files.
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sqlite"]


def test_export_never_overwrites_without_force(tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    make_table(table)
    other = tmp_path / "other.sqlite"
    make_table(other, ("nasfpnlite",))
    before = {p: p.read_bytes() for p in (table, other)}
    runner = CliRunner()
    for target, force, message in (
        (table, False, "is the input"),
        (table, True, "is the input"),
        (other, False, "exists; pass --force"),
    ):
        args = ["export", str(table), "--csv", str(target), *(["--force"] if force else [])]
        res = runner.invoke(lut_main, args)
        assert res.exit_code == 1 and message in res.output, res.output
        assert res.output.count("\n") == 1
    assert {p: p.read_bytes() for p in (table, other)} == before
    csv = tmp_path / "rows.csv"
    assert runner.invoke(lut_main, ["export", str(table), "--csv", str(csv)]).exit_code == 0
    rows = csv.read_text()
    assert runner.invoke(lut_main, ["export", str(table), "--csv", str(csv)]).exit_code == 1
    res = runner.invoke(lut_main, ["export", str(table), "--csv", str(csv), "--force"])
    assert res.exit_code == 0 and csv.read_text() == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite", "rows.csv", "t.sqlite"]
