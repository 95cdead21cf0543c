"""A loopback adbd emulator for testing the adb device without a phone."""

from adbd_emulator.benchmark import binary_bytes
from adbd_emulator.server import AdbdEmulator, EmulatorConfig

__all__ = ["AdbdEmulator", "EmulatorConfig", "binary_bytes"]
