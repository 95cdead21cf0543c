"""Result types returned by every device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TimingResult:
    """Latency statistics of one model.

    ``ok=False`` results carry ``error`` and no numbers, so a failed model can never be
    mistaken for a measurement.
    """

    model: str
    ok: bool
    median_ms: float | None = None
    min_ms: float | None = None
    std_ms: float | None = None
    runs: int = 0
    repeats: int = 0
    dispersion: float | None = None
    stable: bool = False
    samples_ms: list[float] = field(default_factory=list)
    error: str | None = None
    # The load-robust estimate (see devices/stats.py) and how it was obtained: the
    # statistic, the clock ("cpu": the thread's CPU time, "wall"), the reference
    # kernel's worst slow-down around the kept measurement, whether that was still a
    # slow phase, and how many times the model was measured again because of one.
    latency_ms: float | None = None
    statistic: str | None = None
    clock: str | None = None
    ref_ratio: float | None = None
    slow_phase: bool = False
    remeasured: int = 0
    rounds_ms: list[list[float]] = field(default_factory=list)
    ref_ms: list[float] = field(default_factory=list)
    # With a paced statistic (devices/pace.py): the reference that spoke for the model,
    # its fast-phase level (base_ms) the entry is relative to, the measurement's pace
    # (median, min, max), the raw p10, and whether the pace moved beyond correction.
    pace: dict[str, Any] | None = None

    @classmethod
    def failed(cls, model: str, error: str) -> TimingResult:
        return cls(model=model, ok=False, error=error)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DeviceInfo:
    """What a device is, recorded next to every table built on it."""

    profile: str
    kind: str
    model: str
    serial: str | None = None
    abi: str | None = None
    cores: int | None = None
    core: int | None = None
    governor: str | None = None
    cur_freq_khz: int | None = None
    max_freq_khz: int | None = None
    temperature_c: float | None = None
    os_version: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    binary: str | None = None
    binary_version: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
