"""The host device's load-robust timing: per-invoke CPU time, the chosen statistic, and
re-measurement when its reference kernel shows a slow phase."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from mnasfpn.devices import DeviceError, load_profile
from mnasfpn.devices.host import HostDevice
from mnasfpn.devices.stats import DEFAULT_STATISTIC, estimate

QUICK = {"num_runs": 10, "warmup_runs": 2, "min_repeats": 2, "max_repeats": 4}


def test_the_paced_statistic_is_the_default_and_reads_the_references(
    models: dict[str, Path],
) -> None:
    with HostDevice(load_profile("host").replace(**QUICK)) as dev:
        assert dev.timing_statistic == "pace-p10-cpu"
        r = dev.time_model(models["small"])
        summary = dev.pace_summary()
    assert r.ok and r.statistic == "pace-p10" and r.pace is not None
    assert r.pace["reference"] in ("compute", "memory") and r.pace["base_ms"] > 0
    assert r.latency_ms == estimate(r.rounds_ms, "pace-p10")
    assert summary is not None and summary["references"][r.pace["reference"]]["fast_ms"] > 0


def test_results_carry_the_statistic_on_cpu_time(models: dict[str, Path]) -> None:
    dev = HostDevice(load_profile("host").replace(**QUICK), statistic=DEFAULT_STATISTIC)
    try:
        assert dev.clock == "cpu" and dev.timing_statistic == f"{DEFAULT_STATISTIC}-cpu"
        r = dev.time_model(models["small"])
    finally:
        dev.close()
    assert r.ok and r.statistic == DEFAULT_STATISTIC and r.clock == "cpu"
    assert r.latency_ms == estimate(r.rounds_ms, DEFAULT_STATISTIC)
    assert r.min_ms is not None and r.median_ms is not None
    assert r.min_ms <= r.latency_ms <= r.median_ms  # type: ignore[operator]
    assert sum(len(x) for x in r.rounds_ms) == r.runs == len(r.samples_ms)
    assert len(r.ref_ms) == 2 and all(x > 0 for x in r.ref_ms)


def test_wall_clock_and_its_limits() -> None:
    profile = load_profile("host")
    with pytest.raises(DeviceError, match="threads = 1"):
        HostDevice(profile.replace(threads=2), clock="cpu")
    with pytest.raises(DeviceError, match="unknown clock"):
        HostDevice(profile, clock="tsc")
    dev = HostDevice(profile.replace(threads=2))
    try:
        assert dev.clock == "wall"  # another thread's work is not on this one's CPU time
    finally:
        dev.close()


def test_a_slow_phase_seen_by_the_reference_kernel_is_re_measured(
    models: dict[str, Path],
) -> None:
    dev = HostDevice(load_profile("host").replace(**QUICK), statistic=DEFAULT_STATISTIC)
    dev.settle_s = 0.0
    try:
        worker = dev._ensure_worker()
        real = worker.request
        slow_refs = {"left": 0}

        def request(timeout: float = 600.0, **req: Any) -> dict[str, Any]:
            rep = real(timeout, **req)
            if req.get("op") == "ref" and slow_refs["left"] > 0:
                slow_refs["left"] -= 1
                rep = {**rep, "cpu_ms": rep["cpu_ms"] * 2, "wall_ms": rep["wall_ms"] * 2}
            return rep

        worker.request = request  # type: ignore[method-assign]
        quiet = dev.time_models([models["tiny"]] * 4)  # the reference's baseline
        slow_refs["left"] = 2  # both checks around the next model read 2x slow
        r = dev.time_model(models["tiny"])
    finally:
        dev.close()
    # (This busy machine may have real slow phases too: counts are compared, not fixed.)
    assert r.ok and r.remeasured >= 1
    used = sum(x.remeasured for x in [*quiet, r])
    assert dev.budget.used == used == dev.load_summary()["remeasured"]


def test_adaptive_runs_stop_on_the_interval_and_share_reference_checks(
    models: dict[str, Path],
) -> None:
    profile = load_profile("host").replace(
        runs="adaptive", min_runs=40, max_runs=400, max_time_s=5.0, warmup_runs=2
    )
    dev = HostDevice(profile, statistic=DEFAULT_STATISTIC)
    refs = {"n": 0}
    try:
        worker = dev._ensure_worker()
        real = worker.request

        def request(timeout: float = 600.0, **req: Any) -> dict[str, Any]:
            refs["n"] += req.get("op") == "ref"
            return real(timeout, **req)

        worker.request = request  # type: ignore[method-assign]
        results = dev.time_models([models["tiny"], models["small"], models["tiny"]])
    finally:
        dev.close()
    for r in results:
        assert r.ok and 40 <= r.runs <= 400 and r.runs == len(r.samples_ms)
        assert r.runs == sum(len(x) for x in r.rounds_ms) and len(r.ref_ms) == 2
        assert r.latency_ms == estimate(r.rounds_ms, DEFAULT_STATISTIC)
    # One reference check between consecutive models, not two (more only to re-measure:
    # the check after it and those while waiting for a slow phase to pass).
    extra = sum(r.remeasured for r in results)
    polls = math.ceil(dev.settle_s / dev.settle_poll_s) + 1
    assert refs["n"] <= len(results) + 1 + extra * (1 + polls)
    if not extra:
        assert refs["n"] == len(results) + 1


def test_fixed_runs_stay_available(models: dict[str, Path]) -> None:
    dev = HostDevice(
        load_profile("host").replace(runs="fixed", **QUICK), statistic=DEFAULT_STATISTIC
    )
    try:
        r = dev.time_model(models["tiny"])
    finally:
        dev.close()
    # Rounds of num_runs, at least min_repeats of them.
    assert r.ok and all(len(x) == QUICK["num_runs"] for x in r.rounds_ms)
    assert QUICK["min_repeats"] <= r.repeats == len(r.rounds_ms) <= QUICK["max_repeats"]


def test_a_re_measure_waits_for_the_reference_to_read_quiet_not_a_fixed_time() -> None:
    dev = HostDevice(load_profile("host"))
    try:
        for _ in range(5):
            dev.drift.observe(1.0)  # the quiet machine's reference level
        readings = iter([1.5, 1.4, 1.01, 1.6])
        taken: list[float] = []

        def reference() -> float:
            taken.append(next(readings))
            return taken[-1]

        t0 = time.monotonic()
        dev._wait_until_quiet(reference)
        # Stopped at the first quiet reading, after two short polls.
        assert taken == [1.5, 1.4, 1.01]
        assert time.monotonic() - t0 < dev.settle_s

        # A phase that does not pass: gives up after settle_s.
        dev.settle_s, dev.settle_poll_s = 0.1, 0.01
        polls = {"n": 0}

        def slow() -> float:
            polls["n"] += 1
            return 2.0

        t0 = time.monotonic()
        dev._wait_until_quiet(slow)
        assert 0.1 <= time.monotonic() - t0 < 1.0 and 2 <= polls["n"] <= 12
    finally:
        dev.close()
