"""The adb device through a real adb server (adbutils) against the loopback adbd.

A private server runs on a free non-default port for this module and is killed at
teardown, so nothing here touches a developer's own adb server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from adbd_emulator import AdbdEmulator, EmulatorConfig
from adbd_emulator.fixtures import (
    QUICK,
    adb_binary,
    adb_connect,
    free_port,
    private_adb_server,
)
from mnasfpn.devices import DeviceError, open_device
from mnasfpn.devices.adb import AdbDevice
from mnasfpn.devices.cli import devices_command
from mnasfpn.devices.transport import ServerTransport


@pytest.fixture(scope="module")
def adb_port() -> Iterator[int]:
    with private_adb_server() as port:
        yield port


@pytest.fixture
def phone(
    request: pytest.FixtureRequest, adb_port: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AdbdEmulator]:
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb_port))
    config = getattr(request, "param", None) or EmulatorConfig()
    with AdbdEmulator(config) as emu:
        adb_connect(adb_port, emu.address)
        try:
            yield emu
        finally:
            subprocess.run(
                [adb_binary(), "-P", str(adb_port), "disconnect", emu.address],
                capture_output=True,
                timeout=30,
            )


def test_batch_through_the_server(phone: AdbdEmulator, models: dict[str, Path]) -> None:
    # No --serial: the only attached phone is picked.
    with open_device("pixel4", overrides=QUICK) as dev:
        assert isinstance(dev, AdbDevice) and isinstance(dev.transport, ServerTransport)
        assert dev.transport.serial == phone.address
        info = dev.info()
        results = dev.time_models([models["tiny"], models["corrupt"]])
        workdir = dev.workdir
    assert info.model == "Pixel 4" and info.max_freq_khz == 2841600
    assert results[0].ok and results[0].median_ms and results[0].median_ms > 0
    assert not results[1].ok and results[1].error
    assert set(phone.shell_state.taskset_masks) == {"80"}
    assert not phone.sandbox.path(workdir).exists()


@pytest.mark.parametrize(
    "phone", [EmulatorConfig(drop_push_after_bytes=64, drop_push_times=1)], indirect=True
)
def test_server_drop_mid_push(phone: AdbdEmulator, models: dict[str, Path]) -> None:
    with open_device("pixel4", serial=phone.address, overrides=QUICK) as dev:
        [r] = dev.time_models([models["small"]])
    assert r.ok
    assert phone.drops["push"] == 1 and phone.connections >= 2


@pytest.mark.parametrize("phone", [EmulatorConfig(drop_run_times=1)], indirect=True)
def test_server_drop_mid_run(phone: AdbdEmulator, models: dict[str, Path]) -> None:
    with open_device("pixel4", serial=phone.address, overrides=QUICK) as dev:
        [r] = dev.time_models([models["tiny"]])
    assert r.ok and r.median_ms
    assert phone.drops["run"] == 1 and phone.connections >= 2


@pytest.mark.parametrize("phone", [EmulatorConfig(model="Pixel XL")], indirect=True)
def test_server_profile_mismatch(phone: AdbdEmulator) -> None:
    with pytest.raises(DeviceError, match=r"'Pixel XL'.*'Pixel 4'"):
        open_device("pixel4", serial=phone.address)


def test_unknown_serial(phone: AdbdEmulator) -> None:
    with pytest.raises(DeviceError, match="not attached"):
        open_device("pixel4", serial="127.0.0.1:1")


def test_devices_lists_the_phone_with_its_profile(phone: AdbdEmulator) -> None:
    out = CliRunner().invoke(devices_command, [])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("host") and "profile: host" in lines[0]
    assert any(phone.address in ln and "Pixel 4" in ln and "profile: pixel4" in ln for ln in lines)


def test_no_phone_attached(adb_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb_port))
    with pytest.raises(DeviceError, match="no phone attached"):
        open_device("generic-android")


def test_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(free_port()))
    with pytest.raises(DeviceError, match="no adb server"):
        open_device("generic-android")
    out = CliRunner().invoke(devices_command, [])
    assert out.exit_code == 0
    assert out.output.startswith("host")
    assert "phones unavailable: no adb server" in out.output
