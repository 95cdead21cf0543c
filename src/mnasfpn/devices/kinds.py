"""Device kinds: how a profile's ``kind`` opens a device. A new kind of device is a
`Device` subclass plus one entry here (and profiles with that ``kind``).

Each opener imports its device module when it runs, so LiteRT and the adb libraries load
only when a device of that kind is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.transport import open_transport
from mnasfpn.registry import Registry

if TYPE_CHECKING:
    from mnasfpn.devices.base import Device
    from mnasfpn.devices.options import DeviceOptions
    from mnasfpn.devices.profiles import Profile

# (profile after overrides, the options, the serial of this one device) → an open device.
Opener = Callable[["Profile", "DeviceOptions", "str | None"], "Device"]


def _open_host(profile: Profile, options: DeviceOptions, serial: str | None) -> Device:
    if serial or options.adb_host or options.benchmark_binary:
        raise DeviceError(
            "--serial/--adb-host/--benchmark-binary apply to phones only; "
            "drop them for --device host"
        )
    # a kind's device module loads when a device of that kind is opened
    from mnasfpn.devices.host import HostDevice

    return HostDevice(profile)


def _open_adb(profile: Profile, options: DeviceOptions, serial: str | None) -> Device:
    # a kind's device module loads when a device of that kind is opened
    from mnasfpn.devices.adb import AdbDevice

    transport = open_transport(options.adb_transport, serial=serial, adb_host=options.adb_host)
    try:
        return AdbDevice(profile, transport, benchmark_binary=options.benchmark_binary)
    except BaseException:
        transport.close()
        raise


DEVICE_KINDS: Registry[Opener] = Registry(
    "device kind", {"host": _open_host, "adb": _open_adb}, error=DeviceError
)
