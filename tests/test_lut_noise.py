"""validate's verdict: an R² bar that the measurement noise makes unreachable is not a
failure of the table, but a table that is bad beyond the noise still fails."""

from __future__ import annotations

import numpy as np
import pytest

from mnasfpn.lut.noise import r2_ceiling, r2_verdict, relative_noise


def _rounds(y: np.ndarray, rel: float, n: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(v * (1 + rng.normal(0, rel, n))) for v in y]


def test_ceiling_tracks_noise_against_the_spread_of_latencies() -> None:
    y = np.linspace(20, 180, 40)
    quiet = r2_ceiling(y, _rounds(y, 0.01, 4))
    noisy = r2_ceiling(y, _rounds(y, 0.30, 4))
    assert quiet is not None and noisy is not None
    assert quiet > 0.999 and noisy < quiet
    narrow = np.linspace(95, 105, 40)  # a narrow latency range: noise dominates
    assert r2_ceiling(narrow, _rounds(narrow, 0.05, 4)) < 0.5  # type: ignore[operator]
    assert r2_ceiling(y, [[v] for v in y]) is None
    assert relative_noise(_rounds(y, 0.05, 6)) == pytest.approx(0.05, rel=0.35)
    assert relative_noise([[1.0]]) is None


def test_a_good_r2_passes() -> None:
    v = r2_verdict(r2=0.99, min_r2=0.95, ceiling=0.999, noise=0.01, mape=0.03, tau=0.95)
    assert v.ok and v.meaningful


def test_low_r2_with_a_reachable_ceiling_fails() -> None:
    v = r2_verdict(r2=0.80, min_r2=0.95, ceiling=0.99, noise=0.02, mape=0.12, tau=0.85)
    assert not v.ok and v.meaningful and "< --min-r2" in v.line


def test_noise_that_caps_r2_below_the_bar_is_said_not_failed() -> None:
    v = r2_verdict(r2=0.88, min_r2=0.95, ceiling=0.90, noise=0.06, mape=0.07, tau=0.85)
    assert v.ok and not v.meaningful
    assert v.line.startswith("R² check not meaningful here") and "\n" not in v.line
    assert "quieter machine" in v.line


@pytest.mark.parametrize(("mape", "tau"), [(0.40, 0.85), (0.07, 0.30)])
def test_a_really_bad_table_still_fails_under_noise(mape: float, tau: float) -> None:
    v = r2_verdict(r2=0.2, min_r2=0.95, ceiling=0.90, noise=0.06, mape=mape, tau=tau)
    assert not v.ok and "bad beyond the noise" in v.line
