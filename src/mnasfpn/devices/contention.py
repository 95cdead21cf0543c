"""Is anything else competing for the CPU while a device times on the wall clock?

One interpreter thread is timed on its own CPU time, which other processes cannot
inflate. Several threads are timed on the wall clock (the pool threads' work is not the
calling thread's), and there every other runnable task on the machine shows up as
latency: a 2-core machine with another job cannot give uncontended 2-thread figures.
This monitor samples Linux's CPU pressure (`/proc/pressure/cpu`, "some": the share of
time at least one runnable task waited for a core) and the load average around each
timed model, so the table can say how contended its wall times were.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

PSI_CPU = Path("/proc/pressure/cpu")
# Above this share of the timing span with some task waiting for a core, wall-clock
# figures are not the uncontended latency.
PRESSURE_LIMIT = 0.05
# Without PSI: a 1-minute load average above our own threads plus this is contention.
LOAD_MARGIN = 0.5


def read_pressure_us(path: Path = PSI_CPU) -> int | None:
    """Total microseconds some task waited for a CPU (PSI "some" total), or None."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("some "):
                fields = dict(f.split("=", 1) for f in line.split()[1:])
                return int(fields["total"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def read_loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class ContentionMonitor:
    """Samples taken between timed models; `summary` and `note` judge the whole span."""

    def __init__(self, cores: list[int], threads: int, psi_path: Path = PSI_CPU) -> None:
        self.cores = list(cores)
        self.threads = threads
        self.psi_path = psi_path
        self._first: tuple[float, int | None] | None = None
        self._last: tuple[float, int | None] | None = None
        self._loads: list[float] = []

    def sample(self) -> None:
        point = (time.monotonic(), read_pressure_us(self.psi_path))
        if self._first is None:
            self._first = point
        self._last = point
        load = read_loadavg()
        if load is not None:
            self._loads.append(load)

    def pressure(self) -> float | None:
        """Share of the sampled span in which some task waited for a core."""
        if self._first is None or self._last is None:
            return None
        (t0, p0), (t1, p1) = self._first, self._last
        if p0 is None or p1 is None or t1 - t0 <= 0:
            return None
        return min(1.0, (p1 - p0) / 1e6 / (t1 - t0))

    def summary(self) -> dict[str, Any]:
        pressure = self.pressure()
        load = max(self._loads) if self._loads else None
        if pressure is not None:
            contended: bool | None = pressure > PRESSURE_LIMIT
        elif load is not None:
            contended = load > self.threads + LOAD_MARGIN
        else:
            contended = None
        return {
            "threads": self.threads,
            "cores": self.cores,
            "cpu_pressure": pressure,
            "loadavg_max": load,
            "contended": contended,
        }

    def note(self) -> str | None:
        s = self.summary()
        if not s["contended"]:
            return None
        seen = []
        if s["cpu_pressure"] is not None:
            seen.append(f"some task waited for a core {100 * s['cpu_pressure']:.0f}% of the time")
        if s["loadavg_max"] is not None:
            seen.append(f"load average up to {s['loadavg_max']:.1f}")
        return (
            f"{self.threads}-thread wall-clock timings on cores {self.cores} were contended "
            f"({', '.join(seen)}): they are not the uncontended latency; multi-thread "
            "tables need a quiet machine (recorded in the table's timing_load)"
        )
