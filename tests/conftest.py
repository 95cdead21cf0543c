"""Fixtures and helpers shared by the test modules (they import the helpers from here):
tables of the real schema with a deterministic latency per key, a scripted device for
builds without timing, the small TFLite models the device tests time (converted once per
test session), and a way to run a command on a read-only folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from mnasfpn.devices.options import DeviceOptions
from mnasfpn.devices.profiles import Profile, load_profile
from mnasfpn.devices.results import DeviceInfo, TimingResult
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut import build as lut_build
from mnasfpn.lut.build import required_keys
from mnasfpn.lut.store import TableStore
from mnasfpn.profiler import micromodel

# The input size of the test tables (small: fast to enumerate and to build graphs for).
SIZE = 64

# -- the CLIs ----------------------------------------------------------------------------


def error_line(result: Result) -> str:
    """The one `Error:` line of a refused command: a non-zero exit, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


# -- tables ------------------------------------------------------------------------------


def key_latency(key: str) -> float:
    """A deterministic, distinct latency per key (so sums identify the keys summed)."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return 0.001 + h / 2**32


def record_op(store: TableStore, key: str, ms: float, session: str) -> None:
    """One op measured in one pass, as a build records it."""
    store.add_op_pass(
        key, 0, passes=1, median_ms=ms, min_ms=ms, std_ms=0.0, runs=1, dispersion=0.0,
        session=session,
    )  # fmt: skip


def make_table(
    path: Path,
    spaces: Sequence[str] = ("nasfpnlite-s",),
    *,
    input_size: int = SIZE,
    drop: tuple[str, ...] = (),
    profile: str = "host",
) -> dict[str, float]:
    """A table file of the real schema with `key_latency` for every key of `spaces` (less
    `drop`), as a host build would write it; returns the latencies."""
    config = DetectorConfig(input_size=input_size)
    keys = [k for k in required_keys(spaces, config) if k not in drop]
    lat = {k: key_latency(k) for k in keys}
    with TableStore.open(path, create=True) as store:
        store.set_meta(
            {
                "device": "host",
                "profile": profile,
                "device_model": "test cpu",
                "abi": "x86_64",
                "runtime": "ai-edge-litert",
                "runtime_version": "2.3.0",
                "converter_version": "2.21.0",
                "input_size": input_size,
                "num_classes": 90,
                "alpha": 1.0,
                "depth": 64,
                "spaces": list(spaces),
            }
        )
        sid = store.start_session("build", {"model": "test cpu"})
        for k, v in lat.items():
            record_op(store, k, v, sid)
    return lat


# -- a scripted device: builds without TensorFlow or timing --------------------------------

SCRIPTED_SPACE = "nasfpnlite-s"
SCRIPTED_CONFIG = DetectorConfig(input_size=SIZE)


class ScriptedDevice:
    """Times a model as a fixed function of its file name (and of the pass, by call count);
    `fail_after` timings, it raises as a phone that went away would."""

    timing_statistic = "median-wall"

    def load_summary(self) -> dict[str, Any]:
        return {"remeasured": 0}

    def __init__(self, profile: Profile, *, fail_after: int | None = None) -> None:
        self.profile = profile
        self.calls = 0
        self.fail_after = fail_after

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            profile=self.profile.name, kind="host", model="scripted cpu", abi="x86_64",
            core=1, runtime="ai-edge-litert", runtime_version="2.3.0",
            binary_version="numpy 2",
        )  # fmt: skip

    def time_models(
        self, paths: Sequence[Path], progress: Callable[[int, int, TimingResult], None]
    ) -> list[TimingResult]:
        out = []
        for i, p in enumerate(paths):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise ConnectionError("device went away")
            self.calls += 1
            base = 0.01 + int(hashlib.sha1(Path(p).name.encode()).hexdigest()[:6], 16) / 2**24
            ms = base * (1 + (self.calls % 3) / 10)
            res = TimingResult(
                model=str(p), ok=True, median_ms=ms, min_ms=ms * 0.9, std_ms=ms / 50, runs=5,
                dispersion=0.01, latency_ms=ms, statistic="median", clock="wall",
            )  # fmt: skip
            out.append(res)
            progress(i, len(paths), res)
        return out

    def close(self) -> None:
        pass


class ScriptedOptions(DeviceOptions):
    fail_after: int | None = None

    def open_all(self) -> list[Any]:
        profile = load_profile(self.name)
        if self.overrides:
            profile = profile.replace(**self.overrides)
        return [ScriptedDevice(profile, fail_after=self.fail_after)]


@pytest.fixture
def fake_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Micro-models are empty files named by key (the scripted device never reads them)."""
    cache = tmp_path / "cache"

    def paths(keys: Sequence[str], cache_dir: Path, **kw: Any) -> dict[str, Path]:
        out = {}
        for k in keys:
            p = micromodel.cache_path(k, cache_dir)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
            out[k] = p
        if kw.get("progress"):
            kw["progress"](len(out))
        return out

    monkeypatch.setattr(lut_build, "micromodel_paths", paths)  # where the build looks it up
    return cache


# -- device models and read-only folders ---------------------------------------------------

ReadOnlyRunner = Callable[[Path, Sequence[str]], subprocess.CompletedProcess[str]]

# Bind-mount the folder onto itself read-only inside a private mount namespace, then run
# the command there: read-only even for root, who ignores file modes.
_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small float models and a corrupt file (see adbd_emulator.fixtures)."""
    from adbd_emulator.fixtures import build_models

    return build_models(tmp_path_factory.mktemp("models"))


def _can_mount_readonly(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "ro-probe"
    probe.mkdir(exist_ok=True)
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _RO_MOUNT, str(probe),
         "sh", "-c", "! touch \"$0/x\" 2>/dev/null", str(probe)],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return res.returncode == 0


@pytest.fixture(scope="session")
def run_readonly(tmp_path_factory: pytest.TempPathFactory) -> ReadOnlyRunner:
    """run_readonly(folder, argv): argv run with `folder` and every file in it read-only
    (file modes for a normal user; a read-only bind mount for root). Skips the test when
    neither is possible."""
    root = os.geteuid() == 0
    if root and not _can_mount_readonly(tmp_path_factory.mktemp("ro")):
        pytest.skip("running as root without mount namespaces: cannot make a folder read-only")

    def run(folder: Path, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if root:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", _RO_MOUNT,
                   str(folder), *argv]  # fmt: skip
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)

    return run
