"""A temp directory standing in for the device's ``/``."""

from __future__ import annotations

import posixpath
from pathlib import Path


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, device_path: str) -> Path:
        """Map an absolute device path into the sandbox; nothing can escape the root."""
        norm = posixpath.normpath("/" + device_path.lstrip("/"))
        return self.root / norm.lstrip("/")

    def write(self, device_path: str, data: bytes | str) -> Path:
        p = self.path(device_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        p.write_bytes(data)
        return p

    def populate(
        self,
        *,
        cpus: int,
        max_khz: int,
        cur_khz: int,
        governor: str,
        temp_millic: int,
    ) -> None:
        for cpu in range(cpus):
            base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
            self.write(f"{base}/scaling_governor", governor + "\n")
            self.write(f"{base}/scaling_cur_freq", f"{cur_khz}\n")
            self.write(f"{base}/cpuinfo_max_freq", f"{max_khz}\n")
        self.write("/sys/devices/system/cpu/possible", f"0-{cpus - 1}\n")
        self.write("/sys/class/thermal/thermal_zone0/temp", f"{temp_millic}\n")
        self.path("/data/local/tmp").mkdir(parents=True, exist_ok=True)
