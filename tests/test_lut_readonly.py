"""Reading a table never needs to write: predict, show and export work on a read-only
file in a read-only folder and leave no file behind; writing to one is one line."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from conftest import ReadOnlyRunner, make_table
from mnasfpn.cli import lut_main

CLI = "from mnasfpn.cli import lut_main; lut_main()"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_reads_leave_no_files(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite")
    assert _files(tmp_path) == ["t.sqlite"]
    runner = CliRunner()
    for args in (
        ["show", str(tmp_path / "t.sqlite")],
        ["predict", "--lut", str(tmp_path / "t.sqlite"), "--arch", "nasfpnlite"],
    ):
        res = runner.invoke(lut_main, args)
        assert res.exit_code == 0, res.output
        assert _files(tmp_path) == ["t.sqlite"]


def test_read_only_table_in_read_only_folder(tmp_path: Path, run_readonly: ReadOnlyRunner) -> None:
    folder = tmp_path / "luts"
    folder.mkdir()
    table = folder / "t.sqlite"
    make_table(table)
    csv = tmp_path / "rows.csv"
    out = {}
    for args in (
        ["show", str(table)],
        ["predict", "--lut", str(table), "--arch", "nasfpnlite"],
        ["export", str(table), "--csv", str(csv)],
    ):
        res = run_readonly(folder, [sys.executable, "-c", CLI, *args])
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr
        out[args[0]] = res.stdout
    assert "nasfpnlite (repeats" in out["predict"]
    assert len(csv.read_text().splitlines()) > 10
    res = run_readonly(
        folder,
        [sys.executable, "-c", CLI, "build", "--device", "host", "--space", "nasfpnlite-s",
         "--input-size", "64", "--out", str(table), "--quiet"],
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.startswith(f"Error: {table} is read-only") and res.stderr.count("\n") == 1
    assert _files(folder) == ["t.sqlite"]
