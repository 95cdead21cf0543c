"""Repeat-until-stable timing loop and summary statistics shared by all devices."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from mnasfpn.devices.results import TimingResult


def dispersion(samples: Sequence[float]) -> float:
    """Interquartile range over the median: robust to the outliers of a noisy host."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return (q3 - q1) / med if med > 0 else 0.0


def summarize(
    model: str,
    samples_ms: Sequence[float],
    *,
    repeats: int,
    stable: bool,
    runs: int | None = None,
    min_ms: float | None = None,
    std_ms: float | None = None,
) -> TimingResult:
    """Build a successful result; explicit ``min_ms``/``std_ms`` win over the samples'."""
    if not samples_ms:
        return TimingResult.failed(model, "no timing samples were collected")
    samples = [float(s) for s in samples_ms]
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
    )


def repeat_until_stable(
    measure_round: Callable[[], Sequence[float]],
    *,
    min_repeats: int,
    max_repeats: int,
    tolerance: float,
) -> tuple[list[float], int, bool]:
    """Run rounds until the last ``min_repeats`` round medians agree within ``tolerance``.

    Returns all samples, the number of rounds and whether the medians settled before the
    cap. Agreement is (max - min) / median of the recent round medians: a cumulative
    median would look "stable" after a few rounds by construction, even while another
    process on a shared host, or a phone's throttling, keeps moving the latency.
    """
    window = max(2, min_repeats)
    samples: list[float] = []
    round_medians: list[float] = []
    while len(round_medians) < max(1, max_repeats):
        batch = list(measure_round())
        if not batch:
            raise ValueError("a timing round returned no samples")
        samples.extend(batch)
        round_medians.append(statistics.median(batch))
        recent = round_medians[-window:]
        centre = statistics.median(recent)
        if (
            len(recent) == window
            and centre > 0
            and (max(recent) - min(recent)) / centre <= tolerance
        ):
            return samples, len(round_medians), True
    return samples, len(round_medians), False
