"""The adb device's shell hygiene: every remote path is quoted, and the retry loop pauses
through the device's own sleep hook (so it can be observed and shortened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adbd_emulator import AdbdEmulator, EmulatorConfig
from adbd_emulator.fixtures import QUICK, build_models
from mnasfpn.devices import open_device
from mnasfpn.devices.adb import AdbDevice

ODD_PATH = "/data/local/tmp/my bench;$(x)/benchmark_model"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


def test_binary_path_with_spaces_and_shell_characters(models: dict[str, Path]) -> None:
    with AdbdEmulator(EmulatorConfig(benchmark_path=ODD_PATH)) as emu:
        overrides = {**QUICK, "benchmark_binary": ODD_PATH}
        with open_device(
            "pixel4", adb_transport="direct", adb_host=emu.address, overrides=overrides
        ) as dev:
            assert isinstance(dev, AdbDevice) and dev.binary == ODD_PATH
            info = dev.info()
            [r] = dev.time_models([models["tiny"]])
    assert r.ok and r.median_ms, r.error
    assert info.binary_version and info.binary_version.startswith("md5 ")


def test_retry_pauses_use_the_sleep_hook(models: dict[str, Path]) -> None:
    with AdbdEmulator(EmulatorConfig(drop_run_times=2)) as emu:
        dev = open_device("pixel4", adb_transport="direct", adb_host=emu.address, overrides=QUICK)
        assert isinstance(dev, AdbDevice)
        pauses: list[float] = []
        dev._sleep = pauses.append  # type: ignore[method-assign]
        dev.retry_delay_s = 0.25
        with dev:
            [r] = dev.time_models([models["tiny"]])
    assert r.ok
    # Two drops in the same run: the second retry waits twice as long (linear back-off).
    assert pauses == [0.25, 0.5]
