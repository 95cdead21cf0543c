"""The interface every device implements."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from mnasfpn.devices.profiles import Profile
from mnasfpn.devices.results import DeviceInfo, TimingResult
from mnasfpn.devices.stats import DEFAULT_STATISTIC, DriftMonitor, RemeasureBudget

# Called once per model, in order, as (index, total, result).
ProgressCallback = Callable[[int, int, TimingResult], None]
ModelPath = str | os.PathLike[str]


class Device(abc.ABC):
    """Times ``.tflite`` files on one device; a context manager that cleans up on exit.

    Every result's ``latency_ms`` is ``statistic`` (devices/stats.py) on ``clock``; a
    device watches for slow phases with ``drift`` and re-measures within ``budget``.
    """

    profile: Profile
    statistic: str = DEFAULT_STATISTIC
    clock: str = "wall"
    drift: DriftMonitor
    budget: RemeasureBudget

    @property
    def timing_statistic(self) -> str:
        """What a table records as its entries' statistic, e.g. ``p10-cpu``."""
        return f"{self.statistic}-{self.clock}"

    def load_summary(self) -> dict[str, Any]:
        """What the drift control saw so far: reference level, slow share, re-measures."""
        return {**self.drift.summary(), "remeasured": self.budget.used}

    def seed_pace(self, bases: dict[str, float]) -> None:  # noqa: B027 (optional hook)
        """Start from a table's fast-phase reference levels (devices/pace.py); a device
        whose statistic reads no pace ignores them."""

    def pace_summary(self) -> dict[str, Any] | None:
        """The references' fast levels and the paces seen (None: no paced statistic)."""
        return None

    def load_note(self) -> str | None:
        """One line when the machine's load made these timings unreliable in a way the
        drift control cannot repair (e.g. multi-thread wall times on busy cores)."""
        return None

    @abc.abstractmethod
    def info(self) -> DeviceInfo:
        """What the device is, read fresh (frequencies and temperature change)."""

    @abc.abstractmethod
    def time_models(
        self, paths: Sequence[ModelPath], progress: ProgressCallback | None = None
    ) -> list[TimingResult]:
        """Time a batch; results come back in the order of ``paths``.

        A model that cannot be timed is returned with ``ok=False`` and an error, the
        others are still timed.
        """

    def time_model(self, path: ModelPath) -> TimingResult:
        return self.time_models([path])[0]

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device (stop workers, remove pushed files). Idempotent."""

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def model_label(path: ModelPath) -> str:
    return str(Path(path))
