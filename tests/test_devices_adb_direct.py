"""The adb device end to end over adb-shell (direct TCP) against the loopback adbd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adbd_emulator import AdbdEmulator, EmulatorConfig, binary_bytes
from adbd_emulator.fixtures import QUICK, free_port
from mnasfpn.devices import DeviceError, open_device
from mnasfpn.devices.adb import AdbDevice


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[AdbdEmulator]:
    config = getattr(request, "param", None) or EmulatorConfig()
    with AdbdEmulator(config) as emu:
        yield emu


def _open(emu: AdbdEmulator, profile: str = "pixel4", **kw: object) -> AdbDevice:
    dev = open_device(profile, adb_transport="direct", adb_host=emu.address, overrides=QUICK, **kw)  # type: ignore[arg-type]
    assert isinstance(dev, AdbDevice)
    return dev


@pytest.mark.parametrize(
    "emulator",
    [
        EmulatorConfig(layout="new"),
        EmulatorConfig(layout="old"),
        EmulatorConfig(layout="old-nostats"),
    ],
    ids=["new", "old", "old-nostats"],
    indirect=True,
)
def test_batch_on_pixel4(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    batch = [models["tiny"], models["corrupt"], models["small"]]
    with _open(emulator) as dev:
        workdir = dev.workdir
        results = dev.time_models(batch)
        assert emulator.sandbox.path(workdir).is_dir()
    assert [r.model for r in results] == [str(p) for p in batch]
    ok = [results[0], results[2]]
    for r in ok:
        assert r.ok and r.median_ms and r.median_ms > 0
        assert r.min_ms is not None and r.min_ms <= r.median_ms
        assert r.repeats >= QUICK["min_repeats"]
        assert r.runs == QUICK["num_runs"] * r.repeats
        assert len(r.samples_ms) == r.repeats
    assert not results[1].ok and results[1].median_ms is None
    assert "status 1" in (results[1].error or "")
    # Everything pushed was removed by close(); the stock binary is left alone.
    assert not emulator.sandbox.path(workdir).exists()
    assert emulator.sandbox.path("/data/local/tmp/benchmark_model").is_file()
    # The profile's pinning and flags reached the binary.
    st = emulator.shell_state
    assert set(st.taskset_masks) == {"80"}
    args = st.benchmark_args[0]
    assert "--num_threads=1" in args and "--use_xnnpack=false" in args
    assert f"--num_runs={QUICK['num_runs']}" in args
    assert f"--warmup_runs={QUICK['warmup_runs']}" in args
    assert len(emulator.pushed) == len(batch)


def test_info_reads_the_phone(emulator: AdbdEmulator) -> None:
    with _open(emulator) as dev:
        info = dev.info()
    assert (info.model, info.abi, info.cores, info.core) == ("Pixel 4", "arm64-v8a", 8, 7)
    assert (info.governor, info.cur_freq_khz, info.max_freq_khz) == ("schedutil", 1785600, 2841600)
    assert info.temperature_c == 36.5
    assert info.os_version == "Android 10 (SDK 29)"
    assert info.serial == emulator.address
    assert info.binary == "/data/local/tmp/benchmark_model"
    assert info.binary_version and info.binary_version.startswith("md5 ")


@pytest.mark.parametrize("emulator", [EmulatorConfig(model="Pixel XL", cpus=4)], indirect=True)
def test_pixel1_pins_a_big_core(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    with _open(emulator, "pixel1") as dev:
        [r] = dev.time_models([models["tiny"]])
    assert r.ok
    assert set(emulator.shell_state.taskset_masks) == {"4"}


@pytest.mark.parametrize("emulator", [EmulatorConfig(model="Pixel 3")], indirect=True)
def test_profile_mismatch(emulator: AdbdEmulator) -> None:
    with pytest.raises(DeviceError) as err:
        _open(emulator, "pixel4")
    msg = str(err.value)
    assert "'Pixel 3'" in msg and "generic-android" in msg and "\n" not in msg
    with _open(emulator, "generic-android") as dev:
        assert dev.model == "Pixel 3"


@pytest.mark.parametrize("emulator", [EmulatorConfig(benchmark=None)], indirect=True)
def test_missing_binary(emulator: AdbdEmulator, tmp_path: Path, models: dict[str, Path]) -> None:
    with pytest.raises(DeviceError, match=r"no benchmark_model at .*--benchmark-binary"):
        _open(emulator)
    # Pushing one fixes it; it lives (and dies) in the session's work dir.
    local = tmp_path / "benchmark_model"
    local.write_bytes(binary_bytes("ok"))
    with _open(emulator, benchmark_binary=str(local)) as dev:
        assert dev.binary.startswith(dev.workdir)
        [r] = dev.time_models([models["tiny"]])
    assert r.ok
    assert not emulator.sandbox.path(dev.binary).exists()


@pytest.mark.parametrize("behaviour", ["crash", "elf"])
def test_pushed_binary_that_does_not_run(
    emulator: AdbdEmulator, tmp_path: Path, behaviour: str
) -> None:
    local = tmp_path / "benchmark_model"
    local.write_bytes(binary_bytes("crash") if behaviour == "crash" else b"\x7fELF\x02\x01\x01")
    with pytest.raises(DeviceError, match="does not run") as err:
        _open(emulator, benchmark_binary=str(local))
    assert ("139" if behaviour == "crash" else "126") in str(err.value)


@pytest.mark.parametrize(
    ("emulator", "expected"),
    [
        (EmulatorConfig(benchmark="crash"), "exited with status 139"),
        (EmulatorConfig(benchmark="garbage"), "could not parse"),
    ],
    indirect=["emulator"],
    ids=["crash", "garbage"],
)
def test_broken_stock_binary_fails_models(
    emulator: AdbdEmulator, models: dict[str, Path], expected: str
) -> None:
    with _open(emulator) as dev:
        results = dev.time_models([models["tiny"], models["small"]])
    for r in results:
        assert not r.ok and r.median_ms is None and r.samples_ms == []
        assert expected in (r.error or "")


@pytest.mark.parametrize(
    "emulator",
    [EmulatorConfig(drop_push_after_bytes=64, drop_push_times=1)],
    indirect=True,
)
def test_drop_mid_push_is_retried(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    with _open(emulator) as dev:
        [r] = dev.time_models([models["small"]])
    assert r.ok
    assert emulator.drops["push"] == 1
    assert emulator.connections >= 2


@pytest.mark.parametrize("emulator", [EmulatorConfig(drop_run_times=1)], indirect=True)
def test_drop_mid_run_is_retried(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    with _open(emulator) as dev:
        [r] = dev.time_models([models["tiny"]])
    assert r.ok and r.median_ms
    assert emulator.drops["run"] == 1 and emulator.connections >= 2


@pytest.mark.parametrize("emulator", [EmulatorConfig(drop_run_times=100)], indirect=True)
def test_persistent_drop_mid_run_fails_cleanly(
    emulator: AdbdEmulator, models: dict[str, Path]
) -> None:
    with _open(emulator) as dev:
        dev.retry_delay_s = 0.01
        results = dev.time_models([models["tiny"], models["small"]])
    assert [r.ok for r in results] == [False, False]
    assert "gave up" in (results[0].error or "")
    assert (results[1].error or "").startswith("not timed")
    assert all(r.median_ms is None for r in results)
    assert emulator.drops["run"] == dev.retries + 1


@pytest.mark.parametrize(
    "emulator",
    [EmulatorConfig(drop_push_after_bytes=16, drop_push_times=100)],
    indirect=True,
)
def test_persistent_drop_mid_push_fails_cleanly(
    emulator: AdbdEmulator, models: dict[str, Path]
) -> None:
    with _open(emulator) as dev:
        dev.retry_delay_s = 0.01
        results = dev.time_models([models["tiny"], models["small"]])
    assert not any(r.ok for r in results)
    assert all("gave up on push" in (r.error or "") for r in results)
    assert emulator.drops["push"] == dev.retries + 1


def test_cooldown_between_models_only(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    pauses: list[float] = []
    with open_device(
        "pixel4",
        adb_transport="direct",
        adb_host=emulator.address,
        overrides={**QUICK, "cooldown_s": 2.5},
    ) as dev:
        assert isinstance(dev, AdbDevice)
        dev._sleep = pauses.append  # type: ignore[method-assign]
        results = dev.time_models([models["tiny"], models["small"], models["tiny"]])
    assert all(r.ok for r in results)
    assert pauses == [2.5, 2.5]


def test_no_adbd_listening() -> None:
    with pytest.raises(DeviceError, match="nothing is listening at"):
        open_device("pixel4", adb_transport="direct", adb_host=f"127.0.0.1:{free_port()}")


def test_bad_transport_options() -> None:
    with pytest.raises(DeviceError, match="HOST:PORT"):
        open_device("pixel4", adb_transport="direct")
    with pytest.raises(DeviceError, match="HOST:PORT"):
        open_device("pixel4", adb_transport="direct", adb_host="nohost")
    with pytest.raises(DeviceError, match="unknown adb transport"):
        open_device("pixel4", adb_transport="usb")


def test_adaptive_runs_on_a_phone(emulator: AdbdEmulator, models: dict[str, Path]) -> None:
    # runs = adaptive: benchmark_model runs until the t interval of their averages is
    # within target_ci, between min_repeats and max_repeats runs.
    settings = {**QUICK, "runs": "adaptive", "min_repeats": 2, "max_repeats": 4}
    dev = open_device(
        "pixel4", adb_transport="direct", adb_host=emulator.address, overrides=settings
    )
    with dev:
        loose = dev.time_model(models["small"])
    assert loose.ok and 2 <= loose.repeats <= 4 and len(loose.samples_ms) == loose.repeats
    assert loose.runs == QUICK["num_runs"] * loose.repeats
    assert len(emulator.shell_state.benchmark_args) >= loose.repeats
    # An unreachable target runs to the maximum, and says it did not settle.
    strict = {**settings, "target_ci": 1e-9}
    dev = open_device("pixel4", adb_transport="direct", adb_host=emulator.address, overrides=strict)
    with dev:
        r = dev.time_model(models["small"])
    assert r.ok and r.repeats == 4 and not r.stable
