"""The machine's pace: timings divided by what reference kernels took at the same time.

On some machines the core itself runs slower in phases (an AMD EPYC VM: up to 1.8x, for
1-67 s; phones: throttling, governors), and every op slows with it. A low quantile of
the raw timings then reads the phase the op happened to be timed in. Here each target
invocation is timed between invocations of a reference kernel (host_worker's paced
``run``); the reference's level around an invocation over its fast-phase level is the
*pace* at that moment, and the invocation's time divided by it is its time at the
machine's fast-phase pace. Ops do not all move alike: compute-bound ones (conv,
depthwise) move with a conv reference, memory-bound ones (add, resize, pooling, mul) with
a streaming add (correlations in ../shared/noise/README.md), so the reference is chosen
by what the op is bound by.

Pure (no clocks, no devices): tested on replayed paces (tests/test_pace.py).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# Reference kernels: op keys of the project's own micro-model writer; the .tflite files
# ship in devices/references (tests/test_pace.py checks they equal the writer's output).
# compute: the ~1 ms conv of the recordings (builtin kernels); memory: an add streaming
# 10 MB, past the core's private caches.
REFERENCE_KEYS: dict[str, str] = {
    "compute": "conv2d/in20x20x64/out20x20x512/k1s1/act=none",
    "memory": "add/40x40x512/act=none",
}
# TFLite builtins that make a model compute-bound; a model with none is memory-bound.
COMPUTE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}
)
# Reference invocations whose median is the level around a target invocation: enough to
# shrug off one reference's jitter, few enough (~10-30 ms at the host's grain) to follow
# phases that last a second or more.
WINDOW = 7
# Above this pace (the reference this many times slower than its fast phase) a pace is
# not trusted to be divided out: such invocations are dropped, and a measurement left
# with too few is marked (the recordings' worst phases are 1.8x).
PACE_LIMIT = 2.5
# The share of a measurement's invocations that must be within PACE_LIMIT.
MIN_CORRECTABLE = 0.5
STATISTIC = "pace-p10"


def reference_path(name: str) -> Path:
    """The shipped .tflite of reference ``name`` (compute or memory)."""
    folder = resources.files("mnasfpn.devices").joinpath("references")
    return Path(str(folder.joinpath(f"{name}.tflite")))


def bound_by(op_names: Iterable[str]) -> str:
    """Which reference speaks for a model: compute when it has a conv-like op."""
    return "compute" if any(o in COMPUTE_OPS for o in op_names) else "memory"


# Op types (the table's keys, devices/references' micro-model file names) that are
# memory-bound; any other op, or a whole model, speaks through the compute reference.
MEMORY_OP_TYPES = frozenset(
    {"add", "mul", "maxpool", "resize_nearest", "concat", "reshape", "mean", "sigmoid"}
)


def bound_by_name(path: str | Path) -> str:
    """By a micro-model's file name (``<op type>-<digest>.tflite``): where the op types
    cannot be read from the model (a phone's stock benchmark_model)."""
    return "memory" if Path(path).name.split("-", 1)[0] in MEMORY_OP_TYPES else "compute"


def local_levels(
    times: Sequence[float], ref_times: Sequence[float], ref_ms: Sequence[float]
) -> list[float]:
    """For each time, the median of the WINDOW reference timings nearest to it (the
    references' times must be sorted)."""
    if not ref_ms:
        raise ValueError("no reference timings to read the pace from")
    n = len(ref_ms)
    k = min(WINDOW, n)
    out = []
    for t in times:
        i = bisect.bisect_left(ref_times, t)
        lo = max(0, min(i - k // 2, n - k))
        out.append(statistics.median(ref_ms[lo : lo + k]))
    return out


@dataclass(frozen=True)
class Paced:
    """One measurement at the fast-phase pace: the corrected invocations, the pace each
    ran at (level / fast level), and whether too many were beyond PACE_LIMIT."""

    corrected: list[float]
    paces: list[float]
    uncorrectable: bool

    @property
    def pace_median(self) -> float:
        return statistics.median(self.paces)


def correct(samples: Sequence[float], levels: Sequence[float], base: float) -> Paced:
    """Divide each invocation by its pace; drop those beyond PACE_LIMIT (and say so
    when they were too many to leave a measurement)."""
    paces = [lv / base for lv in levels]
    kept = [s / p for s, p in zip(samples, paces, strict=True) if p <= PACE_LIMIT]
    bad = len(kept) < MIN_CORRECTABLE * len(samples)
    if bad or not kept:
        kept = [s / p for s, p in zip(samples, paces, strict=True)]
    return Paced(kept, paces, bad)


@dataclass
class PaceTracker:
    """Each reference's fast-phase level over a device's life: the lowest measurement
    level seen (a measurement's level is the median of its reference timings, robust to
    one fast outlier; load only slows a kernel down). Seeded from a table's record, so a
    resumed build and a validation share the table's fast level; paces seen are kept for
    the range a table records."""

    base: dict[str, float] = field(default_factory=dict)
    # Each measurement's reference level (ms), for the range of paces over the run.
    levels: dict[str, list[float]] = field(default_factory=dict)
    uncorrectable: int = 0

    def seed(self, bases: Mapping[str, float]) -> None:
        for name, b in bases.items():
            if b and b > 0 and math.isfinite(b):
                self.base[name] = min(self.base.get(name, math.inf), float(b))

    def update(self, name: str, ref_ms: Sequence[float]) -> float:
        """Fold one measurement's reference timings in; returns the fast level now."""
        level = statistics.median(ref_ms)
        self.base[name] = min(self.base.get(name, math.inf), level)
        return self.base[name]

    def record(self, name: str, level_ms: float, paced: Paced) -> None:
        self.levels.setdefault(name, []).append(level_ms)
        self.uncorrectable += paced.uncorrectable

    def summary(self) -> dict[str, object]:
        """Per reference: its fast level and the range of the measurements' paces (their
        reference levels over the final fast level)."""
        refs = {}
        for name, base in self.base.items():
            seen = sorted(lv / base for lv in self.levels.get(name, []))
            refs[name] = {
                "key": REFERENCE_KEYS.get(name),
                "fast_ms": base,
                "measurements": len(seen),
                "pace_min": seen[0] if seen else None,
                "pace_p50": statistics.median(seen) if seen else None,
                "pace_max": seen[-1] if seen else None,
            }
        return {"statistic": STATISTIC, "references": refs, "uncorrectable": self.uncorrectable}
