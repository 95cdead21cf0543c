"""Reading CPU frequency, governor and temperature from sysfs-like text."""

from __future__ import annotations

import glob
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFreq:
    governor: str | None
    cur_khz: int | None
    max_khz: int | None


def cpufreq_paths(core: int) -> dict[str, str]:
    base = f"/sys/devices/system/cpu/cpu{core}/cpufreq"
    return {
        "governor": f"{base}/scaling_governor",
        "cur": f"{base}/scaling_cur_freq",
        "max": f"{base}/cpuinfo_max_freq",
        # The thermal governor lowers this cap below cpuinfo_max_freq while it throttles.
        "cap": f"{base}/scaling_max_freq",
    }


def parse_int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def cap_ratio(max_khz: int | None, cap_khz: int | None) -> float | None:
    """cpuinfo_max / scaling_max: 1.0 uncapped, 1.4 when capped to 71% (throttling)."""
    if not max_khz or not cap_khz or cap_khz <= 0:
        return None
    return max(1.0, max_khz / cap_khz)


def parse_temperature_c(text: str | None) -> float | None:
    """Thermal zones report millidegrees on most kernels, degrees on some old ones."""
    value = parse_int(text)
    if value is None:
        return None
    return value / 1000.0 if abs(value) >= 1000 else float(value)


def parse_cpu_count(possible: str | None) -> int | None:
    """Count CPUs in a kernel range list such as ``0-3,6``."""
    if not possible or not possible.strip():
        return None
    count = 0
    try:
        for part in possible.strip().split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
    except ValueError:
        return None
    return count


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def local_cpufreq(core: int) -> CpuFreq:
    paths = cpufreq_paths(core)
    return CpuFreq(
        governor=_read(paths["governor"]),
        cur_khz=parse_int(_read(paths["cur"])),
        max_khz=parse_int(_read(paths["max"])),
    )


def local_temperature_c() -> float | None:
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp")):
        t = parse_temperature_c(_read(zone))
        if t is not None:
            return t
    return None


def local_cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model"):
            return value.strip()

    return platform.processor() or platform.machine()
