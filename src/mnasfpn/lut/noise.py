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
from typing import Any

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


def _log_round_variance(rounds: Sequence[Sequence[float]]) -> float | None:
    """Mean over architectures of the variance of their log round values."""
    v = [float(np.var(np.log(r), ddof=1)) for r in rounds if len(r) > 1 and min(r) > 0]
    return statistics.fmean(v) if v else None


def pace_noise(
    runs: Sequence[dict[int, dict[str, Any]]], pace_meta: dict[str, Any] | None
) -> dict[str, Any]:
    """What the pace did to the end-to-end rounds: the raw rounds' spread (before the
    pace was divided out), the share of the raw round-to-round variance the pace
    explained (1 - variance of log paced rounds / that of log raw rounds), and the
    range of paces the run saw (per reference, from the table's pace record). Empty for
    a table whose statistic reads no pace."""
    raw = [[r["raw_ms"] for r in a.values() if r.get("raw_ms")] for a in runs]
    paced = [[r["median_ms"] for r in a.values() if r.get("raw_ms")] for a in runs]
    if not any(len(r) > 1 for r in raw):
        return {}
    spread = [(max(r) - min(r)) / statistics.median(r) for r in raw if len(r) > 1]
    v_raw, v_paced = _log_round_variance(raw), _log_round_variance(paced)
    paces = [x / y for a, b in zip(raw, paced, strict=True) for x, y in zip(a, b, strict=True)]
    refs = (pace_meta or {}).get("references") or {}
    return {
        "raw_round_spread_median": statistics.median(spread),
        "raw_round_spread_p90": float(np.quantile(spread, 0.9)),
        "pace_explained": (1.0 - v_paced / v_raw) if v_raw and v_paced is not None else None,
        "e2e_pace_range": [min(paces), max(paces)],
        "pace_range": {n: [r.get("pace_min"), r.get("pace_max")] for n, r in sorted(refs.items())},
        "pace_flagged": (pace_meta or {}).get("flagged", 0),
    }


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
