"""The search objective: Reward(m) = mAP(m) · (LAT(m) / T)^w (MnasNet, MnasFPN Eq. 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnasfpn.errors import MnasfpnError


@dataclass(frozen=True)
class RewardSpec:
    """w < 0 trades accuracy for latency softly; `max_ms` is a hard limit applied before
    training (a child predicted slower is rejected and costs no training time)."""

    w: float = -0.3
    target_ms: float = 100.0
    max_ms: float | None = None

    def __post_init__(self) -> None:
        # nan compares false with everything: it would pass a sign check, then make every
        # reward nan and the stored settings unequal to themselves
        if not math.isfinite(self.w):
            raise MnasfpnError(f"--w must be a finite number, got {self.w}")
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise MnasfpnError(f"--target-ms must be a positive number, got {self.target_ms}")
        if self.max_ms is not None and not (math.isfinite(self.max_ms) and self.max_ms > 0):
            raise MnasfpnError(f"--max-ms must be a positive number, got {self.max_ms}")

    def rejects(self, latency_ms: float) -> bool:
        return self.max_ms is not None and latency_ms > self.max_ms

    def reward(self, map_value: float, latency_ms: float) -> float:
        return float(map_value) * (float(latency_ms) / self.target_ms) ** self.w
