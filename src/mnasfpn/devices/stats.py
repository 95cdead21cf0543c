"""Timing statistics shared by all devices: from per-invoke samples to one latency.

A measurement is a list of *rounds* (consecutive invocations of one model), each with an
optional *reference* timing taken just before it: a fixed micro-kernel whose latency only
changes when the machine does. Everything here is pure (no clocks, no devices), so it is
tested on synthetic timing streams.

Why not simply the median: a shared or virtual machine is slow in phases lasting seconds
(another tenant, frequency, a phone's thermal throttling). A median over one short burst
absorbs the phase it ran in; statistics that keep the undisturbed part of the samples
(low quantiles, minima of round medians) or that divide the phase out (the reference
ratio) resist it. ``benchmarks/timing_statistics.py`` measures every candidate quiet and
under load; :data:`DEFAULT_STATISTIC` is the one that moved least.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnasfpn.devices.results import TimingResult

Rounds = Sequence[Sequence[float]]

# Chosen by `benchmarks/timing_statistics.py` (figures in its docstring): the 10th
# percentile of all invocations, on the worker thread's CPU time. With both cores busy it
# moved at most 3.0% (median +5.6%, and wall-clock statistics +200..+900% on detectors,
# which another process preempts many times per invocation), with the smallest spread
# between repetitions (1.0% quiet).
DEFAULT_STATISTIC = "p10"


def _flat(rounds: Rounds) -> list[float]:
    return [float(x) for r in rounds for x in r]


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _lower_half_mean(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return statistics.fmean(s[: max(1, (len(s) + 1) // 2)])


def _min_round_median(rounds: Rounds) -> float:
    return min(statistics.median(r) for r in rounds if len(r))


def _ref_normalized(rounds: Rounds, refs: Sequence[float | None], baseline: float | None) -> float:
    """Median over rounds of round median × baseline / the reference just before it."""
    scaled = [
        statistics.median(r) * baseline / ref
        for r, ref in zip(rounds, refs, strict=False)
        if len(r) and ref and baseline
    ]
    return statistics.median(scaled) if scaled else math.nan


# name -> f(rounds); every one returns milliseconds of the same clock as its input.
_PLAIN: dict[str, Callable[[Rounds], float]] = {
    "median": lambda r: statistics.median(_flat(r)),
    "mean": lambda r: statistics.fmean(_flat(r)),
    "p25": lambda r: _quantile(_flat(r), 0.25),
    "p10": lambda r: _quantile(_flat(r), 0.10),
    "min": lambda r: min(_flat(r)),
    "lower_half_mean": lambda r: _lower_half_mean(_flat(r)),
    "min_round_median": _min_round_median,
}
# pace-p10: the p10 of invocations each divided by the machine's pace at that moment
# (devices/pace.py); the rounds it is given are already divided, so here it is a p10.
PACED: dict[str, Callable[[Rounds], float]] = {"pace-p10": _PLAIN["p10"]}
STATISTICS: tuple[str, ...] = (*_PLAIN, "ref_normalized", *PACED)


def check_statistic(name: str) -> str:
    if name not in STATISTICS:
        raise ValueError(f"unknown timing statistic {name!r}; known: {', '.join(STATISTICS)}")
    return name


def estimate(
    rounds: Rounds,
    statistic: str = DEFAULT_STATISTIC,
    *,
    refs: Sequence[float | None] = (),
    ref_baseline: float | None = None,
) -> float:
    """One latency (ms) from the rounds by the named statistic."""
    check_statistic(statistic)
    if not any(len(r) for r in rounds):
        raise ValueError("no timing samples")
    if statistic == "ref_normalized":
        return _ref_normalized(rounds, refs, ref_baseline)
    return float({**_PLAIN, **PACED}[statistic](rounds))


def candidates(
    rounds: Rounds, *, refs: Sequence[float | None] = (), ref_baseline: float | None = None
) -> dict[str, float]:
    """Every statistic of the same rounds (the reference one only when refs were taken)."""
    out = {name: float(f(rounds)) for name, f in _PLAIN.items()}
    if refs and ref_baseline:
        out["ref_normalized"] = _ref_normalized(rounds, refs, ref_baseline)
    return out


def dispersion(samples: Sequence[float]) -> float:
    """Interquartile range over the median: robust to the outliers of a noisy host."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return (q3 - q1) / med if med > 0 else 0.0


# -- drift: is the machine in a slow phase? -------------------------------------------


@dataclass
class DriftMonitor:
    """Tracks a reference kernel's timings over a long run.

    The baseline is a low quantile of every reference timing seen (a quiet machine's
    level: load only ever slows a kernel down); a timing above ``baseline × (1 + margin)``
    marks a slow phase. Until ``min_history`` timings exist nothing is called slow (there
    is no baseline yet to be slow against).
    """

    margin: float = 0.15
    quantile: float = 0.10
    min_history: int = 5
    history: list[float] = field(default_factory=list)

    @property
    def baseline(self) -> float | None:
        if len(self.history) < self.min_history:
            return None
        return _quantile(self.history, self.quantile)

    def ratio(self, ref_ms: float) -> float | None:
        """ref / baseline (1.0 = as fast as the quiet machine)."""
        base = self.baseline
        return ref_ms / base if base else None

    def is_slow(self, ref_ms: float) -> bool:
        r = self.ratio(ref_ms)
        return r is not None and r > 1.0 + self.margin

    def observe(self, ref_ms: float) -> bool:
        """Record one reference timing; True when it shows a slow phase."""
        if not (ref_ms > 0 and math.isfinite(ref_ms)):
            raise ValueError(f"invalid reference timing {ref_ms!r}")
        slow = self.is_slow(ref_ms)
        self.history.append(float(ref_ms))
        return slow

    def summary(self) -> dict[str, float | int | None]:
        base = self.baseline
        ratios = [h / base for h in self.history] if base else []
        return {
            "reference_timings": len(self.history),
            "reference_baseline_ms": base,
            "slow_fraction": (
                sum(r > 1.0 + self.margin for r in ratios) / len(ratios) if ratios else None
            ),
            "reference_ratio_p90": _quantile(ratios, 0.9) if ratios else None,
            "margin": self.margin,
        }


@dataclass
class RemeasureBudget:
    """Bounds re-measurement of items that ran in a slow phase: at most ``per_item``
    extra tries for one item and ``fraction`` of the items seen (at least ``floor``) in
    all, so a machine that stays slow costs a bounded amount of time, not a hang."""

    per_item: int = 2
    fraction: float = 0.10
    floor: int = 4
    items: int = 0
    used: int = 0

    def allow(self, tries_so_far: int) -> bool:
        total = max(self.floor, math.ceil(self.fraction * self.items))
        return tries_so_far < self.per_item and self.used < total

    def spend(self) -> None:
        self.used += 1


@dataclass(frozen=True)
class Attempt:
    """One measurement of one item: its rounds and the reference ratio while it ran."""

    rounds: tuple[tuple[float, ...], ...]
    ref_ratio: float | None  # worst (highest) reference / baseline around it
    slow: bool
    refs: tuple[float, ...] = ()


def measure_with_drift_control(
    measure: Callable[[], tuple[Rounds, Sequence[float]]],
    monitor: DriftMonitor,
    budget: RemeasureBudget,
    *,
    statistic: str = DEFAULT_STATISTIC,
    settle: Callable[[], None] | None = None,
) -> tuple[Attempt, list[Attempt]]:
    """Measure one item; while it ran in a slow phase and the budget allows, let the
    machine settle and measure it again.

    ``measure`` returns (rounds, the reference timings taken around them). The kept
    attempt is the quiet one when there is one, else the lowest estimate (load slows a
    kernel down, never speeds it up). Returns (kept, every attempt).
    """
    budget.items += 1
    attempts: list[Attempt] = []
    while True:
        rounds, refs = measure()
        slow = False
        worst: float | None = None
        for ref in refs:
            slow |= monitor.observe(ref)
            r = monitor.ratio(ref)
            if r is not None:
                worst = r if worst is None else max(worst, r)
        attempts.append(
            Attempt(
                tuple(tuple(float(x) for x in r) for r in rounds),
                worst,
                slow,
                tuple(float(x) for x in refs),
            )
        )
        if not slow or not budget.allow(len(attempts) - 1):
            break
        budget.spend()
        if settle is not None:
            settle()
    quiet = [a for a in attempts if not a.slow]
    pool = quiet or attempts
    kept = min(pool, key=lambda a: estimate(a.rounds, statistic))
    return kept, attempts


# -- results ---------------------------------------------------------------------------


def summarize(
    model: str,
    samples_ms: Sequence[float],
    *,
    repeats: int,
    stable: bool,
    runs: int | None = None,
    min_ms: float | None = None,
    std_ms: float | None = None,
    rounds: Rounds | None = None,
    statistic: str = DEFAULT_STATISTIC,
    clock: str = "wall",
    ref_ratio: float | None = None,
    slow_phase: bool = False,
    remeasured: int = 0,
    ref_ms: Sequence[float] = (),
    pace: dict[str, Any] | None = None,
) -> TimingResult:
    """Build a successful result; explicit ``min_ms``/``std_ms`` win over the samples'.

    ``latency_ms`` is ``statistic`` over ``rounds`` (one round of all samples when not
    given); the median, min and std stay alongside for tables that predate it.
    """
    if not samples_ms:
        return TimingResult.failed(model, "no timing samples were collected")
    samples = [float(s) for s in samples_ms]
    by_round = rounds if rounds is not None and any(len(r) for r in rounds) else [samples]
    return TimingResult(
        model=model,
        ok=True,
        median_ms=statistics.median(samples),
        min_ms=min(samples) if min_ms is None else min(min_ms, min(samples)),
        std_ms=(statistics.pstdev(samples) if std_ms is None else std_ms),
        runs=len(samples) if runs is None else runs,
        repeats=repeats,
        dispersion=dispersion(samples),
        stable=stable,
        samples_ms=samples,
        latency_ms=estimate(by_round, statistic),
        statistic=statistic,
        clock=clock,
        ref_ratio=ref_ratio,
        slow_phase=slow_phase,
        remeasured=remeasured,
        rounds_ms=[[float(x) for x in r] for r in by_round],
        ref_ms=[float(x) for x in ref_ms],
        pace=pace,
    )


def repeat_until_stable(
    measure_round: Callable[[], Sequence[float]],
    *,
    min_repeats: int,
    max_repeats: int,
    tolerance: float,
    statistic: str = "median",
) -> tuple[list[list[float]], int, bool]:
    """Run rounds until the last ``min_repeats`` rounds agree within ``tolerance``.

    Returns the rounds, their number and whether they settled before the cap. Each round
    is summarised by ``statistic``; agreement is (max - min) / median of the recent
    summaries: a cumulative figure would look "stable" after a few rounds by
    construction, even while another process, or a phone's throttling, keeps moving the
    latency.
    """
    check_statistic(statistic)
    window = max(2, min_repeats)
    rounds: list[list[float]] = []
    summaries: list[float] = []
    while len(rounds) < max(1, max_repeats):
        batch = [float(x) for x in measure_round()]
        if not batch:
            raise ValueError("a timing round returned no samples")
        rounds.append(batch)
        summaries.append(estimate([batch], statistic))
        recent = summaries[-window:]
        centre = statistics.median(recent)
        if (
            len(recent) == window
            and centre > 0
            and (max(recent) - min(recent)) / centre <= tolerance
        ):
            return rounds, len(rounds), True
    return rounds, len(rounds), False
