"""A phone that throttles in phases: detection by its frequency cap, bounded re-timing
after a cool-down, and the kept measurement at the unthrottled level."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from adbd_emulator import AdbdEmulator, EmulatorConfig
from adbd_emulator.fixtures import QUICK, build_models
from mnasfpn.devices import open_device
from mnasfpn.devices.adb import AdbDevice
from mnasfpn.devices.errors import DeviceError

SLOW = 3.0  # far above the emulator's own run-to-run noise


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


def _open(emu: AdbdEmulator) -> AdbDevice:
    dev = open_device(
        "pixel4",
        adb_transport="direct",
        adb_host=emu.address,
        overrides={**QUICK, "min_repeats": 2, "max_repeats": 2},
    )
    assert isinstance(dev, AdbDevice)
    return dev


def test_emulator_throttles_in_phases_and_shows_it_in_sysfs() -> None:
    with AdbdEmulator(EmulatorConfig(throttle_phases=((2, 1.0), (3, SLOW)))) as emu:
        assert [emu.throttle_factor(i) for i in range(7)] == [1, 1, SLOW, SLOW, SLOW, 1, 1]
        cap = emu.sandbox.path("/sys/devices/system/cpu/cpu7/cpufreq/scaling_max_freq")
        assert int(cap.read_text()) == emu.config.max_khz
        assert [emu._next_run_slowdown() for _ in range(3)] == [1, 1, SLOW]
        assert int(cap.read_text()) == int(emu.config.max_khz / SLOW)  # run 3 throttles


def test_a_model_timed_while_throttled_is_timed_again_after_a_cool_down(
    models: dict[str, Path],
) -> None:
    # 6 quiet runs (three 2-run models), then 2 throttled runs, quiet again. The cap
    # read after model 2 already shows the throttle coming: it is timed again (runs 6-7,
    # throttled, flagged again), and once more (quiet, kept). Nothing else is repeated.
    # 20×: far beyond what a busy test machine does to the emulator's wall-clock runs.
    config = EmulatorConfig(throttle_phases=((6, 1.0), (2, 20.0), (100, 1.0)))
    pauses: list[float] = []
    with AdbdEmulator(config) as emu, _open(emu) as dev:
        dev._sleep = pauses.append  # type: ignore[method-assign]
        results = dev.time_models([models["small"]] * 5)
    assert all(r.ok for r in results)
    assert [r.remeasured for r in results] == [0, 0, 2, 0, 0]
    assert pauses == [dev.throttle_cooldown_s] * 2
    assert not any(r.slow_phase for r in results)
    assert results[2].ref_ratio is not None and results[2].ref_ratio < 1.05
    latencies = [r.latency_ms for r in results]
    assert all(x is not None for x in latencies)
    level = statistics.median(latencies)  # type: ignore[type-var]
    # The kept timing is the unthrottled one (the throttled runs were 20× slower).
    assert results[2].latency_ms < 5 * level  # type: ignore[operator]
    assert results[2].statistic == dev.statistic and results[2].clock == "wall"


def test_a_phone_that_stays_throttled_costs_a_bounded_number_of_retries(
    models: dict[str, Path],
) -> None:
    config = EmulatorConfig(throttle_phases=((2, 1.0), (10**6, SLOW)))
    pauses: list[float] = []
    with AdbdEmulator(config) as emu, _open(emu) as dev:
        dev._sleep = pauses.append  # type: ignore[method-assign]
        results = dev.time_models([models["small"]] * 6)
        budget = dev.budget
    assert all(r.ok for r in results)
    assert sum(r.remeasured for r in results) == budget.used == len(pauses)
    assert budget.used <= max(budget.floor, budget.per_item * len(results))
    assert max(r.remeasured for r in results) <= budget.per_item
    # Told, not hidden: every later model says it was kept from a throttled phase.
    assert all(r.slow_phase for r in results[1:])
    assert all(r.ref_ratio is not None and r.ref_ratio > 2 for r in results[1:])


PACE = 2.5  # a phone that runs this much slower for a while, without a frequency cap


def _open_paced(emu: AdbdEmulator, statistic: str) -> AdbDevice:
    dev = open_device(
        "pixel4",
        adb_transport="direct",
        adb_host=emu.address,
        overrides={
            **QUICK,
            "num_runs": 30,
            "min_repeats": 3,
            "max_repeats": 3,
            "statistic": statistic,
        },
    )
    assert isinstance(dev, AdbDevice)
    return dev


@pytest.mark.parametrize("statistic", ["pace-p10", "p10"])
def test_a_scripted_pace_is_divided_out_by_the_reference_runs_beside_each_target(
    models: dict[str, Path], statistic: str
) -> None:
    # Quiet while the first timing runs, then the phone stays PACE slower (nothing in
    # sysfs shows it): pace-p10 reads it from the reference runs beside each target run.
    config = EmulatorConfig(steady_times=True)
    with AdbdEmulator(config) as emu, _open_paced(emu, statistic) as dev:
        quiet = dev.time_model(models["small"])
        emu.config.pace_phases = ((1, PACE),)
        slow = dev.time_model(models["small"])
        summary = dev.pace_summary()
        args = list(emu.shell_state.benchmark_args)
    assert quiet.ok and slow.ok and not slow.remeasured  # no throttling was seen
    ratio = slow.latency_ms / quiet.latency_ms  # type: ignore[operator]
    if statistic == "p10":
        assert ratio > 0.8 * PACE and slow.pace is None
        return
    assert 0.98 < ratio < 1.02, (ratio, quiet.pace, slow.pace)
    assert slow.pace is not None and slow.pace["pace"] > 0.8 * PACE
    assert slow.pace["raw_ms"] > 0.8 * PACE * quiet.latency_ms  # type: ignore[operator]
    assert summary is not None and summary["references"]["compute"]["pace_max"] > 2.0
    # Every target run has a reference run right before and right after it.
    graphs = [a for run in args for a in run if a.startswith("--graph=")]
    targets = [i for i, g in enumerate(graphs) if "ref-" not in g]
    assert len(targets) == 6 and targets[0] > 2
    assert all("ref-compute" in graphs[i - 1] and "ref-compute" in graphs[i + 1] for i in targets)


def test_a_pace_reference_that_cannot_run_on_the_phone_is_one_line() -> None:
    # The emulated binary answers --help but prints no timings: the reference cannot run.
    with (
        AdbdEmulator(EmulatorConfig(benchmark="garbage")) as emu,
        pytest.raises(DeviceError) as err,
    ):
        _open_paced(emu, "pace-p10")
    msg = str(err.value)
    assert "\n" not in msg and "pace reference compute" in msg and "statistic=p10" in msg
