"""`DeviceOptions`: which device to open and how to reach it, as one object.

What ``--device``, ``--serial``, ``--adb-transport``, ``--adb-host``,
``--benchmark-binary`` and ``--set`` give a command (cli_common.device_options), and what
`build_table`, `validate` and ``profile`` take whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mnasfpn.devices.base import Device
from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.kinds import DEVICE_KINDS
from mnasfpn.devices.profiles import Profile, load_profile


@dataclass
class DeviceOptions:
    """Which device profile, which phone(s) and how to reach them, which overrides."""

    # The profile; None where the command has its own (validate: the table's).
    name: str | None = None
    # Phones to use: several identical ones share a build; none: the only attached one.
    serials: tuple[str, ...] = ()
    adb_transport: str = "server"
    adb_host: str | None = None
    benchmark_binary: str | None = None
    # Profile fields to change (``--set``), typed by the profile schema.
    overrides: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> DeviceOptions:
        return dataclasses.replace(self, **changes)

    def profile(self) -> Profile:
        """The profile after the overrides: one line if the name is unknown or the
        profile refuses an override (a type, a range, a field that cannot change)."""
        if self.name is None:
            raise DeviceError("no device profile given; pass --device NAME")
        profile = load_profile(self.name)
        return profile.replace(**self.overrides) if self.overrides else profile

    def open(self, serial: str | None = None) -> Device:
        """Open one device: `serial`, else the first of `serials`, else the only one."""
        profile = self.profile()
        if serial is None and self.serials:
            serial = self.serials[0]
        return DEVICE_KINDS.get(profile.kind)(profile, self, serial)

    def open_all(self) -> list[Device]:
        """One opened device per serial (one device when no serial is given)."""
        devices: list[Device] = []
        try:
            for serial in self.serials or (None,):
                devices.append(self.open(serial))
        except BaseException:
            for d in devices:
                d.close()
            raise
        return devices
