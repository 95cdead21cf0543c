"""Building tables for real: resume after SIGKILL, and a phone build through the emulator."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnasfpn.cli import lut_main
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut import build as lut_build
from mnasfpn.lut.build import build_table, required_keys
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.profiler import micromodel

SPACE = "nasfpnlite-s"
SIZE = 64
CLI = "from mnasfpn.cli import lut_main; lut_main()"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lut-cache")


def _build_cmd(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        CLI,
        "build",
        "--device",
        "host",
        "--space",
        SPACE,
        "--input-size",
        str(SIZE),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--quiet",
        *extra,
    ]


def _count(path: Path, table: str) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as c:
            return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_build_resumes_after_sigkill_without_remeasuring(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "host.sqlite"
    expected = set(required_keys((SPACE,), DetectorConfig(input_size=SIZE)))
    timings = 2 * len(expected)  # two passes over every key
    # Slow timing (many runs per op) so the kill lands in the middle of the timing phase.
    slow = ("--set", "runs=fixed", "--set", "num_runs=3000", "--set", "min_repeats=3")
    slow += ("--set", "max_repeats=3")
    proc = subprocess.Popen(
        _build_cmd(out, cache_dir, "--passes", "2", *slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while _count(out, "op_passes") < 5:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "build never committed a row"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _count(out, "op_passes")
    assert 5 <= killed_at < timings, "the kill must interrupt the build"

    res = subprocess.run(
        _build_cmd(out, cache_dir, "--passes", "2"), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"({timings - killed_at} timings, 2 passes)" in res.stdout

    with TableStore.open(out) as store:
        rows = store.op_rows()
        sessions = [s["id"] for s in store.sessions() if s["kind"] == "build"]
    assert {r.key for r in rows} == expected
    assert len(sessions) == 2
    with sqlite3.connect(out) as c:
        passes = c.execute("SELECT key, pass, session FROM op_passes").fetchall()
        log = c.execute("SELECT key, pass FROM measurements WHERE ok = 1").fetchall()
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_session = Counter(session for _, _, session in passes)
    assert per_session[sessions[0]] == killed_at
    assert per_session[sessions[1]] == timings - killed_at
    # Every (key, pass) was timed exactly once, over both runs together.
    measured = Counter(log)
    assert set(measured) == {(k, p) for k in expected for p in (0, 1)}
    assert set(measured.values()) == {1}
    # A third build has nothing left to do.
    res = subprocess.run(
        _build_cmd(out, cache_dir, "--passes", "2"), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0 and "0 to measure" in res.stdout
    table = LatencyTable.open(out)
    assert len(table.latencies) == len(expected)
    assert all(v > 0 for v in table.latencies.values())


def test_an_op_entry_is_its_fastest_pass(tmp_path: Path) -> None:
    with TableStore.open(tmp_path / "t.sqlite", create=True) as store:
        sessions = [store.start_session("build", {"kind": "host"}) for _ in range(3)]
        key = "add/8x8x64/act=none"
        for p, median in enumerate((2.0, 1.5, 3.0)):
            done = store.add_op_pass(
                key, p, passes=3, median_ms=median, min_ms=median - 0.1, std_ms=median / 10,
                runs=10 + p, dispersion=0.01, session=sessions[p], worker=f"w{p}",
            )  # fmt: skip
            assert done == (p == 2)
            assert (key in store.measured_keys()) == done
        (row,) = store.op_rows()
    # Every statistic of the entry comes from the one fastest pass (pass 1), not the last.
    assert (row.median_ms, row.min_ms, row.std_ms, row.runs) == (1.5, 1.4, 0.15, 11)
    assert (row.session, row.worker) == (sessions[1], "w1")
    assert row.dispersion == pytest.approx((3.0 - 1.5) / 1.5)


def test_build_cli_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["--space", SPACE, "--device", "nokia"], "unknown device 'nokia'", 1),
        (["--space", SPACE, "--serial", "x"], "apply to phones only", 1),
        (["--space", "nope"], "unknown search space 'nope'; known: mnasfpn", 1),
        # Option values click checks are usage errors (status 2), still one "Error:" line.
        (["--space", SPACE, "--input-size", "100"], "multiple of 64", 2),
        (["--space", SPACE, "--set", "num_runs=abc"], "num_runs", 2),
    ]
    for extra, message, code in cases:
        args = ["build", "--out", str(tmp_path / "t.sqlite"), *extra]
        if "--device" not in extra:
            args += ["--device", "host"]
        res = CliRunner().invoke(lut_main, args)
        assert res.exit_code == code, res.output
        errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "t.sqlite").exists()


def test_build_through_the_adbd_emulator(tmp_path: Path, cache_dir: Path) -> None:
    emulator = pytest.importorskip("adbd_emulator")
    from adbd_emulator.fixtures import QUICK

    out = tmp_path / "pixel4.sqlite"
    with emulator.AdbdEmulator(emulator.EmulatorConfig()) as emu:
        opts = DeviceOptions(
            "pixel4", adb_transport="direct", adb_host=emu.address, overrides=dict(QUICK)
        )
        report = build_table(
            out,
            [SPACE],
            opts,
            config=DetectorConfig(input_size=SIZE),
            passes=1,
            cache_dir=cache_dir / "micromodels",
            show_progress=False,
        )
        pushed = len(emu.pushed)
    expected = set(required_keys((SPACE,), DetectorConfig(input_size=SIZE)))
    assert report.measured == len(expected) and not report.failed and not report.errors
    assert pushed >= len(expected)
    with TableStore.open(out) as store:
        meta = store.meta()
        assert store.measured_keys() == expected
    assert (meta["profile"], meta["device_model"], meta["abi"]) == (
        "pixel4",
        "Pixel 4",
        "arm64-v8a",
    )
    # The phone's identity includes how it was driven: its core mask and run counts.
    assert (meta["taskset_mask"], meta["num_runs"], meta["use_xnnpack"]) == ("80", 5, False)
    # The same table cannot take host measurements.
    res = CliRunner().invoke(
        lut_main,
        [
            "build",
            "--device",
            "host",
            "--space",
            SPACE,
            "--input-size",
            str(SIZE),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "profile 'pixel4' here vs 'host' now" in res.output


def test_build_sharded_across_two_phones(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = pytest.importorskip("adbd_emulator")
    from adbd_emulator.fixtures import QUICK, adb_connect, private_adb_server

    out = tmp_path / "pixel4.sqlite"
    with (
        private_adb_server() as port,
        emulator.AdbdEmulator(emulator.EmulatorConfig()) as a,
        emulator.AdbdEmulator(emulator.EmulatorConfig()) as b,
    ):
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
        adb_connect(port, a.address)
        adb_connect(port, b.address)
        opts = DeviceOptions("pixel4", serials=(a.address, b.address), overrides=dict(QUICK))
        report = build_table(
            out,
            [SPACE],
            opts,
            config=DetectorConfig(input_size=SIZE),
            passes=1,
            cache_dir=cache_dir / "micromodels",
            show_progress=False,
        )
        pushed = (len(a.pushed), len(b.pushed))
    expected = set(required_keys((SPACE,), DetectorConfig(input_size=SIZE)))
    assert report.measured == len(expected) and not report.errors
    with TableStore.open(out) as store:
        rows = store.op_rows()
    assert {r.key for r in rows} == expected
    per_phone = Counter(r.worker for r in rows)
    assert set(per_phone) == {a.address, b.address}
    assert all(n > 0 for n in pushed)


def test_a_failed_conversion_leaves_only_that_op_unmeasured(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = micromodel.micromodel_paths
    expected = required_keys((SPACE,), DetectorConfig(input_size=SIZE))
    bad = expected[len(expected) // 2]

    def failing(keys, cache, **kw):  # type: ignore[no-untyped-def]
        real([k for k in keys if k != bad], cache, **kw)
        raise micromodel.MicromodelError(f"1 op(s) failed to convert, first {bad!r}: boom")

    monkeypatch.setattr(lut_build, "micromodel_paths", failing)  # where the build looks it up
    # A copy of the shared cache (conversions already made) without `bad`'s micro-model.
    cache = tmp_path / "cache"
    if (cache_dir / "micromodels").is_dir():
        shutil.copytree(cache_dir / "micromodels", cache)
        micromodel.cache_path(bad, cache).unlink(missing_ok=True)
    out = tmp_path / "t.sqlite"
    report = build_table(
        out,
        [SPACE],
        DeviceOptions("host"),
        config=DetectorConfig(input_size=SIZE),
        passes=1,
        cache_dir=cache,
        show_progress=False,
    )
    assert report.measured == len(expected) - 1 and report.missing == 1
    assert report.errors and bad in report.errors[0]
    with TableStore.open(out) as store:
        assert store.measured_keys() == set(expected) - {bad}
    # The next build (conversions working again) measures just that op.
    monkeypatch.setattr(lut_build, "micromodel_paths", real)
    report = build_table(
        out,
        [SPACE],
        DeviceOptions("host"),
        config=DetectorConfig(input_size=SIZE),
        passes=1,
        cache_dir=cache_dir / "micromodels",
        show_progress=False,
    )
    assert (report.already, report.measured, report.missing) == (len(expected) - 1, 1, 0)
