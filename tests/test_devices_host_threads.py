"""Host timing beyond one builtin thread: XNNPACK at one thread on the cpu clock, two
threads pinned to two cores on the wall clock, and the contention check that goes with
wall-clock timing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnasfpn.devices import DeviceError, load_profile, open_device
from mnasfpn.devices import contention as cm
from mnasfpn.devices.host import HostDevice, choose_cores

QUICK = {"num_runs": 5, "warmup_runs": 3, "min_repeats": 1, "max_repeats": 2}


def test_cores_one_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    two = load_profile("host-xnnpack-2t")
    assert choose_cores(two) == [2, 3]
    assert choose_cores(two.replace(core=3)) == [3, 0]
    assert choose_cores(load_profile("host")) == [3]
    with pytest.raises(DeviceError, match=r"runs 8 threads .*--set threads=4") as err:
        choose_cores(two.replace(threads=8))
    assert "\n" not in str(err.value)


def test_contention_from_cpu_pressure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    psi = tmp_path / "cpu"
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(cm.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(cm, "read_loadavg", lambda: 3.2)
    mon = cm.ContentionMonitor([0, 1], 2, psi)
    for total in (5_000_000, 5_100_000, 6_000_000):
        psi.write_text(f"some avg10=1.00 avg60=2.00 avg300=3.00 total={total}\n")
        mon.sample()
    # 1 s of waiting over 4 s of timing.
    assert mon.pressure() == pytest.approx(0.25)
    s = mon.summary()
    assert s["contended"] is True and s["loadavg_max"] == 3.2 and s["cores"] == [0, 1]
    note = mon.note()
    assert note and "\n" not in note and "25% of the time" in note and "quiet machine" in note


def test_contention_without_psi_falls_back_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cm, "read_loadavg", lambda: 2.2)
    mon = cm.ContentionMonitor([0, 1], 2, tmp_path / "missing")
    mon.sample()
    mon.sample()
    assert mon.pressure() is None and mon.summary()["contended"] is False
    assert mon.note() is None
    monkeypatch.setattr(cm, "read_loadavg", lambda: 4.0)
    mon.sample()
    assert mon.summary()["contended"] is True and "load average up to 4.0" in (mon.note() or "")


def test_xnnpack_one_thread_runs_on_the_calling_thread(models: dict[str, Path]) -> None:
    """The cpu clock stays valid under XNNPACK at one thread: no pool thread does work."""
    with open_device("host-xnnpack", overrides=QUICK) as dev:
        assert isinstance(dev, HostDevice) and dev.clock == "cpu"
        worker = dev._ensure_worker()
        # Enough invocations that the worker's other threads (a few µs now and then) are
        # not a share of it.
        rep = worker.request(
            op="load", path=str(models["small"]), threads=1, warmup=60, xnnpack=True
        )
        assert rep["ok"] and rep["offthread_share"] < 0.05 and rep["offthread_ms"] < 0.5
        r = dev.time_model(models["small"])
        assert r.ok and r.clock == "cpu" and r.latency_ms and r.latency_ms > 0
        assert dev.info().extra["xnnpack"] == "true"
        assert dev.load_note() is None  # the cpu clock is not inflated by load


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_two_threads_pin_two_cores_and_time_on_the_wall_clock(models: dict[str, Path]) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    with open_device("host-xnnpack-2t", overrides=QUICK) as dev:
        assert isinstance(dev, HostDevice) and dev.clock == "wall"
        assert dev._worker is not None
        assert dev._worker.hello["affinity"] == allowed[-2:]
        assert os.sched_getaffinity(dev._worker.proc.pid) == set(allowed[-2:])
        r = dev.time_model(models["small"])
        assert r.ok and r.clock == "wall" and r.latency_ms and r.latency_ms > 0
        info = dev.info()
        assert info.extra["threads"] == "2" and info.extra["cores"] == ",".join(
            map(str, allowed[-2:])
        )
        seen = dev.load_summary()["contention"]
        assert seen["threads"] == 2 and seen["cores"] == allowed[-2:]
        assert seen["contended"] in (True, False)  # measured either way, never unknown here
    with pytest.raises(DeviceError, match="cpu clock needs threads = 1"):
        HostDevice(load_profile("host-xnnpack-2t"), clock="cpu")


def test_work_off_the_calling_thread_is_refused_on_the_cpu_clock(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnasfpn.devices.host as host

    monkeypatch.setattr(host, "OFFTHREAD_LIMIT", -1.0)  # any share is too much
    monkeypatch.setattr(host, "OFFTHREAD_MIN_MS", -1.0)
    with open_device("host-xnnpack", overrides=QUICK) as dev:
        r = dev.time_model(models["tiny"])
    assert not r.ok and "ran off the calling thread" in (r.error or "")
    assert "\n" not in (r.error or "")


def test_a_contended_multi_thread_build_says_so_and_records_it(tmp_path: Path) -> None:
    from mnasfpn.lut.build import record_load
    from mnasfpn.lut.store import TableStore

    class Busy:
        def load_summary(self) -> dict:
            return {"slow_fraction": 0.0, "contention": {"contended": True}}

        def load_note(self) -> str:
            return "2-thread wall-clock timings on cores [0, 1] were contended"

    with TableStore.open(tmp_path / "t.sqlite", create=True) as store:
        note = record_load(store, "build", [Busy()], 0, 0)
        seen = store.meta()["timing_load"]["build"]
    assert note == "2-thread wall-clock timings on cores [0, 1] were contended"
    assert seen["devices"][0]["contention"]["contended"] is True


def test_show_tells_a_contended_multi_thread_table() -> None:
    from mnasfpn.lut.show import _load_lines

    seen = {"remeasured": 0, "slow_kept": 0, "devices": [{"slow_fraction": 0.0}]}
    busy = {"threads": 2, "cpu_pressure": 0.4, "contended": True}
    assert "contended" not in _load_lines({"build": seen})[0]
    seen["devices"][0]["contention"] = busy
    line = _load_lines({"build": seen})[0]
    assert "CPU pressure 40%" in line and "cores contended" in line
    busy.update(threads=1)  # one thread: the cpu clock, which load does not inflate
    assert "contended" not in _load_lines({"build": seen})[0]
