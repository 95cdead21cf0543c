"""When is an R² check meaningful? The noise floor of end-to-end measurements.

The same architecture measured in several rounds does not give the same figure; that
spread bounds how well *any* predictor can match the measurements. With the noise
variance estimated from the rounds, ``1 - noise variance / variance of the targets`` is the
R² a perfect predictor would reach: when that ceiling is below the required R², failing
the table says nothing about the table. The verdict then judges by what noise does not
hide (rank agreement, error well above the noise) and says so in one line.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A table whose ranking or error is this bad fails whatever the noise.
MIN_TAU = 0.7
MAX_MAPE = 0.15
NOISE_MAPE_FACTOR = 3.0


def relative_noise(rounds: Sequence[Sequence[float]]) -> float | None:
    """Median over architectures of the std / mean of their round values (None with
    fewer than two rounds anywhere)."""
    rel = [
        statistics.stdev(r) / statistics.fmean(r)
        for r in rounds
        if len(r) > 1 and statistics.fmean(r) > 0
    ]
    return statistics.median(rel) if rel else None


def r2_ceiling(y: np.ndarray, rounds: Sequence[Sequence[float]]) -> float | None:
    """The held-out R² a perfect predictor would reach against targets ``y`` whose
    architectures gave these round values: 1 - mean noise variance / var(y). A target
    drawn from n rounds (their fastest) varies about as little as their mean: the round
    variance / n."""
    noise = [statistics.variance(r) / len(r) for r in rounds if len(r) > 1]
    var_y = float(np.var(y))
    if not noise or var_y <= 0:
        return None
    return 1.0 - statistics.fmean(noise) / var_y


@dataclass(frozen=True)
class Verdict:
    ok: bool
    meaningful: bool  # was the R² check itself meaningful
    line: str


def r2_verdict(
    *,
    r2: float,
    min_r2: float,
    ceiling: float | None,
    noise: float | None,
    mape: float,
    tau: float,
) -> Verdict:
    if r2 >= min_r2:
        return Verdict(True, True, f"held-out R² {r2:.4f} >= --min-r2 {min_r2}")
    if ceiling is None or ceiling >= min_r2:
        what = (
            f"the measurements' noise allows R² up to {ceiling:.4f}"
            if ceiling is not None
            else "no repeated rounds to measure the noise"
        )
        return Verdict(
            False,
            True,
            f"held-out R² of the calibrated table is {r2:.4f} < --min-r2 {min_r2} ({what}); "
            "rebuild the table (more --passes) or check the device",
        )
    noise_txt = f"{100 * noise:.1f}%" if noise is not None else "unknown"
    mape_bar = max(MAX_MAPE, NOISE_MAPE_FACTOR * (noise or 0.0))
    if tau < MIN_TAU or mape > mape_bar:
        return Verdict(
            False,
            False,
            f"the table is bad beyond the noise: Kendall τ {tau:.3f} (need {MIN_TAU}), MAPE "
            f"{100 * mape:.1f}% (allowed {100 * mape_bar:.1f}% at {noise_txt} noise); "
            "rebuild it (more --passes) or check the device",
        )
    return Verdict(
        True,
        False,
        f"R² check not meaningful here: same-model noise {noise_txt} caps held-out R² at "
        f"{ceiling:.4f} < --min-r2 {min_r2}; judged by rank and error instead (τ {tau:.3f}, "
        f"MAPE {100 * mape:.1f}%): for an R² verdict rerun validate on a quieter machine "
        "or with more --rounds",
    )
