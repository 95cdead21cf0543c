"""Adaptive run counts: time a model until its latency statistic is known well enough.

The statistic a table holds is a quantile of the per-invocation timings (p10 by default).
Its confidence interval needs no assumption about their distribution: the true
q-quantile lies between the order statistics x_(l) and x_(u) with probability
P(l <= B < u), B ~ Binomial(n, q) (e.g. David & Nagaraja, *Order Statistics*, §7.1).
A measurement stops as soon as that interval's half-width, relative to the estimate, is
within a target; with a minimum and a maximum invocation count and a time cap, so that a
5 µs op and a 90 ms detector both get what they need and no more.

Pure (no devices, no clocks other than the one passed in): tested on synthetic samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# The statistics the rule can bound: quantiles of the pooled invocations.
# pace-p10: p10 of invocations already divided by their pace (devices/pace.py).
QUANTILE_OF: dict[str, float] = {"p10": 0.10, "p25": 0.25, "median": 0.50, "pace-p10": 0.10}
RUN_POLICIES: tuple[str, ...] = ("adaptive", "fixed")


@lru_cache(maxsize=4096)
def order_statistic_ranks(n: int, q: float, confidence: float) -> tuple[int, int] | None:
    """1-based ranks (l, u) with P(x_(l) <= true q-quantile <= x_(u)) >= confidence,
    equal-tailed (each tail at most (1 - confidence) / 2); None when n samples are too
    few for such an interval to exist."""
    if n < 1 or not (0 < q < 1) or not (0 < confidence < 1):
        return None
    # numpy and scipy only when timing: the devices package imports without them
    import numpy as np
    from scipy.special import bdtr  # the binomial CDF

    tail = (1.0 - confidence) / 2.0
    # cdf[r - 1] = P(B <= r - 1) = P(x_(r) > quantile), for ranks r = 1..n.
    cdf = bdtr(np.arange(n), n, q)
    # Lower rank: the largest with P(B <= l - 1) <= tail (none: no lower bound exists).
    lower = np.flatnonzero(cdf <= tail)
    # Upper rank: the smallest with P(B <= u - 1) >= 1 - tail.
    upper = np.flatnonzero(cdf >= 1.0 - tail)
    if not len(lower) or not len(upper):
        return None
    return int(lower[-1]) + 1, int(upper[0]) + 1


def min_samples(q: float, confidence: float, limit: int = 100_000) -> int:
    """The fewest samples for which the distribution-free interval exists."""
    # The lower bound is the binding one for low quantiles: (1 - q)^n <= tail.
    n = max(1, math.ceil(math.log((1.0 - confidence) / 2.0) / math.log1p(-q)))
    while n < limit and order_statistic_ranks(n, q, confidence) is None:
        n += 1
    return n


def quantile_interval(
    samples: Sequence[float], q: float, confidence: float
) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the q-quantile, or None (too few)."""
    ranks = order_statistic_ranks(len(samples), q, confidence)
    if ranks is None:
        return None
    s = sorted(samples)
    return s[ranks[0] - 1], s[ranks[1] - 1]


def relative_half_width(samples: Sequence[float], q: float, confidence: float) -> float:
    """Half the interval's width over the sample quantile (inf while it cannot be had)."""
    ci = quantile_interval(samples, q, confidence)
    if ci is None:
        return math.inf
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    est = s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)
    return (ci[1] - ci[0]) / (2.0 * est) if est > 0 else math.inf


def mean_half_width(samples: Sequence[float], confidence: float) -> float:
    """Student's t interval of the mean, half its width over the mean (inf below 2
    samples): for a few samples that are themselves averages, such as a phone's
    benchmark_model runs."""
    n = len(samples)
    mean = math.fsum(samples) / n if n else 0.0
    if n < 2 or mean <= 0:
        return math.inf
    from scipy.special import stdtrit  # Student's t quantile; scipy only when timing

    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in samples) / (n - 1))
    return float(stdtrit(n - 1, 1.0 - (1.0 - confidence) / 2.0)) * sd / math.sqrt(n) / mean


@dataclass(frozen=True)
class StopRule:
    """When to stop timing one model: the interval of the ``quantile`` of its
    invocations (or, with ``quantile`` None, of their mean) has a relative half-width
    <= ``target`` at ``confidence`` (after at least ``min_runs``), or ``max_runs``
    samples were taken, or ``max_time_s`` passed."""

    quantile: float | None = 0.10
    target: float = 0.01
    confidence: float = 0.95
    min_runs: int = 40
    max_runs: int = 1000
    max_time_s: float = 2.0

    def __post_init__(self) -> None:
        q_ok = self.quantile is None or 0 < self.quantile < 1
        if not (q_ok and 0 < self.confidence < 1 and self.target > 0):
            raise ValueError("need 0 < quantile < 1, 0 < confidence < 1 and target > 0")
        if not (1 <= self.min_runs <= self.max_runs and self.max_time_s > 0):
            raise ValueError("need 1 <= min_runs <= max_runs and max_time_s > 0")

    def half_width(self, samples: Sequence[float]) -> float:
        """The relative half-width of this rule's interval on ``samples``."""
        if self.quantile is None:
            return mean_half_width(samples, self.confidence)
        return relative_half_width(samples, self.quantile, self.confidence)

    def fewest(self) -> int:
        """The fewest samples that can give an interval at all."""
        return 2 if self.quantile is None else min_samples(self.quantile, self.confidence)


@dataclass(frozen=True)
class AdaptiveRun:
    """What :func:`run_until_confident` took: its chunks (the rounds), why it stopped
    (``ci``, ``max_runs`` or ``time``) and the last relative half-width."""

    rounds: list[list[float]]
    stopped_by: str
    half_width: float
    elapsed_s: float

    @property
    def invocations(self) -> int:
        return sum(len(r) for r in self.rounds)

    @property
    def converged(self) -> bool:
        return self.stopped_by == "ci"


# A chunk at most doubles the invocations so far (an early, rough half-width must not buy
# a huge chunk) and at least adds a quarter (so a near miss is not re-checked per run).
_GROW_MIN, _GROW_MAX = 1.25, 2.0


def next_chunk(n: int, half_width: float, rule: StopRule, elapsed_s: float) -> int:
    """How many more invocations to take after ``n`` (0: stop for runs or time).

    The half-width of a quantile's interval shrinks about as 1/sqrt(n), so the total
    that should meet the target is n·(half_width/target)², clamped to [1.25n, 2n]; the
    time cap is applied at the rate seen so far."""
    if n >= rule.max_runs:
        return 0
    if math.isfinite(half_width):
        want = n * (half_width / rule.target) ** 2
    else:
        want = max(rule.fewest(), _GROW_MAX * n)
    total = min(max(math.ceil(want), math.ceil(_GROW_MIN * n)), math.ceil(_GROW_MAX * n))
    total = min(max(total, n + 1), rule.max_runs)
    if n > 0 and elapsed_s > 0:
        left = rule.max_time_s - elapsed_s
        affordable = math.floor(left / (elapsed_s / n))
        if affordable < 1:
            return 0
        total = min(total, n + affordable)
    return total - n


def run_until_confident(
    run: Callable[[int], Sequence[float]],
    rule: StopRule,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AdaptiveRun:
    """Call ``run(k)`` (k invocations → their timings) in growing chunks until ``rule``
    is met. The first chunk is ``min_runs``; the clock covers the calls themselves."""
    t0 = clock()
    rounds: list[list[float]] = []
    samples: list[float] = []
    k = rule.min_runs
    while True:
        batch = [float(x) for x in run(k)]
        if not batch:
            raise ValueError("a timing round returned no samples")
        rounds.append(batch)
        samples += batch
        hw = rule.half_width(samples)
        elapsed = clock() - t0
        if hw <= rule.target and len(samples) >= rule.min_runs:
            return AdaptiveRun(rounds, "ci", hw, elapsed)
        k = next_chunk(len(samples), hw, rule, elapsed)
        if k == 0:
            why = "max_runs" if len(samples) >= rule.max_runs else "time"
            return AdaptiveRun(rounds, why, hw, elapsed)
