"""Errors raised by the device layer.

Every message is one line saying what happened and what to do, because it is shown to the
user verbatim by the CLI.
"""

from __future__ import annotations

from mnasfpn.errors import MnasfpnError


class DeviceError(MnasfpnError):
    """A device could not be opened, queried or used (one-line message)."""


class ConnectionDropped(DeviceError):
    """The link to the device went away; the step that raised it may be redone."""


class ModelRunError(DeviceError):
    """One model could not be timed; the batch goes on and reports it as failed."""
