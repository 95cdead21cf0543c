"""Devices that time ``.tflite`` files: the host CPU (LiteRT) and Android phones (adb).

Nothing here imports TensorFlow; LiteRT and the adb libraries are imported only when a
device of that kind is opened.
"""

from __future__ import annotations

from typing import Any

from mnasfpn.devices.base import Device, ProgressCallback
from mnasfpn.devices.errors import ConnectionDropped, DeviceError, ModelRunError
from mnasfpn.devices.profiles import Profile, list_profiles, load_profile, match_profile
from mnasfpn.devices.results import DeviceInfo, TimingResult

__all__ = [
    "ConnectionDropped",
    "Device",
    "DeviceError",
    "DeviceInfo",
    "ModelRunError",
    "Profile",
    "ProgressCallback",
    "TimingResult",
    "list_profiles",
    "load_profile",
    "match_profile",
    "open_device",
]


def open_device(
    name: str,
    *,
    serial: str | None = None,
    adb_transport: str = "server",
    adb_host: str | None = None,
    benchmark_binary: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Device:
    """Open the device described by profile ``name``.

    ``adb_transport`` is ``"server"`` (adbutils through the adb server) or ``"direct"``
    (adb-shell straight to adbd at ``adb_host`` = ``HOST:PORT``). ``benchmark_binary`` is
    a local ``benchmark_model`` to push. ``overrides`` changes profile fields (e.g.
    ``{"num_runs": 10}``).
    """
    profile = load_profile(name)
    if overrides:
        profile = profile.replace(**overrides)
    if profile.kind == "host":
        if serial or adb_host or benchmark_binary:
            raise DeviceError(
                "--serial/--adb-host/--benchmark-binary apply to phones only; "
                "drop them for --device host"
            )
        from mnasfpn.devices.host import HostDevice

        return HostDevice(profile)
    from mnasfpn.devices.adb import AdbDevice
    from mnasfpn.devices.transport import open_transport

    transport = open_transport(adb_transport, serial=serial, adb_host=adb_host)
    try:
        return AdbDevice(profile, transport, benchmark_binary=benchmark_binary)
    except BaseException:
        transport.close()
        raise
