"""Devices that time ``.tflite`` files: the host CPU (LiteRT) and Android phones (adb).

Nothing here imports TensorFlow; LiteRT and the adb libraries are imported only when a
device of that kind is opened (devices/kinds.py).
"""

from __future__ import annotations

from typing import Any

from mnasfpn.devices.base import Device, ProgressCallback
from mnasfpn.devices.errors import ConnectionDropped, DeviceError, ModelRunError
from mnasfpn.devices.kinds import DEVICE_KINDS
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.devices.profiles import PROFILES, Profile, load_profile, match_profile
from mnasfpn.devices.results import DeviceInfo, TimingResult

__all__ = [
    "DEVICE_KINDS",
    "PROFILES",
    "ConnectionDropped",
    "Device",
    "DeviceError",
    "DeviceInfo",
    "DeviceOptions",
    "ModelRunError",
    "Profile",
    "ProgressCallback",
    "TimingResult",
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
    """Open the device described by profile ``name`` (`DeviceOptions.open` for one device).

    ``adb_transport`` is ``"server"`` (adbutils through the adb server) or ``"direct"``
    (adb-shell straight to adbd at ``adb_host`` = ``HOST:PORT``). ``benchmark_binary`` is
    a local ``benchmark_model`` to push. ``overrides`` changes profile fields (e.g.
    ``{"num_runs": 10}``).
    """
    options = DeviceOptions(
        name,
        adb_transport=adb_transport,
        adb_host=adb_host,
        benchmark_binary=benchmark_binary,
        overrides=dict(overrides or {}),
    )
    return options.open(serial)
