"""A build stopped during conversion: SIGKILL leaves no worker behind; Ctrl-C stops within
about two seconds, says so, and leaves a table the next build resumes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnasfpn.lut.store import TableStore

CLI = "from mnasfpn.cli import lut_main; lut_main()"
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None,
        reason="conversion workers run the TensorFlow converter",
    ),
]


def _session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, command) of every live process in session `sid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # After the command: state, ppid, pgrp, session.
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append((int(entry.name), cmd.strip()))
    return out


def _start_build(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out = tmp_path / "t.sqlite"
    # An empty cache and the TensorFlow converter: conversions run in worker processes.
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-c", CLI, "build", "--device", "host", "--space", "nasfpnlite-s",
           "--input-size", "64", "--out", str(out), "--cache-dir", str(cache), "--jobs", "2",
           "--passes", "1", "--converter", "tf", "--quiet"]  # fmt: skip
    # The default SIGINT action, whoever started the tests: a shell starts a background job
    # (`make test &`) with SIGINT ignored, the build would inherit that, and Python installs
    # no KeyboardInterrupt handler for an ignored signal.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    # Wait until the workers are converting (their first micro-models are on disk).
    while not any(cache.rglob("*.tflite")):
        if proc.poll() is not None:
            pytest.fail(f"build ended early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no conversion started"
        time.sleep(0.05)
    assert len(_session_members(proc.pid)) >= 3, "expected the build and its workers"
    return proc, out, cache


def _wait_gone(sid: int, timeout: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := _session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigkill_during_conversion_leaves_no_workers(tmp_path: Path) -> None:
    proc, _, _ = _start_build(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        left = _wait_gone(proc.pid, 15)
        assert not left, f"processes outlived the killed build: {left}"
    finally:
        for pid, _ in _session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_during_conversion_stops_fast_and_resumes(tmp_path: Path) -> None:
    proc, out, _ = _start_build(tmp_path)
    try:
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
        stopped_s = time.monotonic() - t0
        assert proc.returncode == 130, err.decode()[-2000:]
        assert "interrupted" in err.decode() and "Traceback" not in err.decode()
        # About two seconds on a quiet machine; generous here for a loaded test machine.
        assert stopped_s < 6, f"took {stopped_s:.1f} s to stop"
        assert not _wait_gone(proc.pid, 10)
    finally:
        for pid, _ in _session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
    # The table is free for the next build, which resumes it.
    with TableStore.open(out) as store:
        assert store.meta()["profile"] == "host"
