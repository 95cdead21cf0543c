"""Which devices can be used right now: the host plus phones on the adb server."""

from __future__ import annotations

from dataclasses import dataclass

from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.profiles import match_profile
from mnasfpn.devices.transport import adb_server_address, attached_serials


@dataclass(frozen=True)
class AttachedDevice:
    serial: str
    state: str
    model: str | None
    profile: str | None


def attached_phones() -> tuple[list[AttachedDevice], str | None]:
    """Phones known to the adb server, and why none could be listed (or None)."""
    try:
        serials = attached_serials()
    except DeviceError as e:
        return [], str(e)
    # adb libraries: only when a phone is reached
    import adbutils

    host, port = adb_server_address()
    client = adbutils.AdbClient(host=host, port=port)
    phones = []
    for serial, state in serials:
        model = None
        if state == "device":
            try:
                model = client.device(serial=serial).shell("getprop ro.product.model").strip()
            except (adbutils.AdbError, OSError):
                model = None
        phones.append(AttachedDevice(serial, state, model, match_profile(model) if model else None))
    return phones, None
