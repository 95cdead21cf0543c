"""Validation: sampling across the latency range, the calibration fit, and a real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_table
from mnasfpn.cli import lut_main
from mnasfpn.lut.calibration import (
    FEATURE_SETS,
    SCALE_MAX,
    SCALE_MIN,
    STRUCTURE_FEATURES,
    Calibration,
    feature_columns,
    fit_calibration,
)
from mnasfpn.lut.fidelity import (
    METHODS,
    apply_calibration,
    choose_fit,
    cross_validate,
    metrics,
)
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.lut.validate import sample_architectures


def test_samples_spread_over_the_predicted_range(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite", ("mnasfpn",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    picked = sample_architectures(table, ["mnasfpn"], 12, seed=3)
    names = [g.name for g in picked if g.name]
    assert set(names) == {"paper-mnasfpn", "paper-mnasfpn-nosdo", "nasfpnlite"}
    sampled = [g for g in picked if not g.name]
    assert len(sampled) == 12
    raw = table.predict(sampled, calibrated=False)
    pool = table.predict(
        [g for g in sample_architectures(table, ["mnasfpn"], 60, seed=4) if not g.name],
        calibrated=False,
    )
    # One pick per quantile bin: the picks reach both tails of the pool's range.
    assert raw.min() < np.quantile(pool, 0.1) and raw.max() > np.quantile(pool, 0.9)
    assert sample_architectures(table, ["mnasfpn"], 12, seed=3) == picked


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = feature_columns()
    x = np.zeros((n, len(cols)))
    for j, (t, part) in enumerate(cols):
        if t in ("conv2d", "dwconv2d", "add", "maxpool") and part != "predictor":
            x[:, j] = rng.uniform(1, 30, n)
    true_scale = np.array([{"conv2d": 0.8, "dwconv2d": 1.4}.get(t, 1.0) for t, _ in cols])
    y = 3.0 + x @ true_scale
    y *= 1 + rng.normal(0, 0.002, n)
    return x, x * rng.uniform(1.0, 1.3, x.shape), y


def test_calibration_recovers_scales_and_beats_the_raw_sum() -> None:
    x, x_naive, y = _synthetic(60, 1)
    cal = fit_calibration(x, y, "type")
    assert cal.intercept_ms == pytest.approx(3.0, abs=0.75)
    assert cal.scales["conv2d"] == pytest.approx(0.8, rel=0.05)
    assert cal.scales["dwconv2d"] == pytest.approx(1.4, rel=0.05)
    assert all(v >= 0 for v in cal.scales.values())
    madds = x[:, 0] * 3 + 5
    preds, folds = cross_validate(x, x_naive, madds, y, seed=0)
    assert set(preds) == set(METHODS)
    assert sum(f["test"] for f in folds) == 60 and len(folds) == 5
    m = {k: metrics(v, y) for k, v in preds.items()}
    assert m["calibrated"]["r2"] > 0.99 and m["calibrated"]["within10"] == 1.0
    assert m["calibrated"]["mape"] < m["raw_sum"]["mape"]
    assert m["calibrated"]["mape"] < m["naive_sum"]["mape"]
    assert m["calibrated"]["kendall_tau"] > m["madds_linear"]["kendall_tau"]
    (fs, _, structure), scores = choose_fit(x, y, seed=0)
    assert fs in FEATURE_SETS and len(scores) == 2 * len(FEATURE_SETS) and structure == ()
    np.testing.assert_allclose(
        apply_calibration(cal, x), cal.intercept_ms + x @ cal.column_scales()
    )


def test_a_nearly_constant_op_type_keeps_a_physical_scale() -> None:
    """The small ops' sum hardly varies across architectures; with noise that happens to
    run against it, an unbounded fit traded it for the overhead and set it to ×0 (seen
    under load). The bounded fit keeps it within [SCALE_MIN, SCALE_MAX] and the overhead
    stays what it was."""
    rng = np.random.default_rng(5)
    n = 40
    cols = feature_columns()
    x = np.zeros((n, len(cols)))
    conv = rng.uniform(20, 120, n)
    other = 6.0 + rng.normal(0, 0.3, n)  # ~5% variation: fitted, but weakly identified
    x[:, cols.index(("conv2d", "head"))] = conv
    x[:, cols.index(("add", "head"))] = other
    # Noise anti-correlated with the small ops' sum: on its own it asks for a negative
    # scale (the least-squares "other" scale here is 1 - 3 = -2).
    y = 2.0 + conv + other - 3.0 * (other - other.mean())
    unbounded = np.linalg.lstsq(np.column_stack([conv, other, np.ones(n)]), y, rcond=None)[0]
    assert unbounded[1] < 0  # what the old positive-only fit clipped to ×0
    cal = fit_calibration(x, y, "major")
    assert cal.scales["other"] == pytest.approx(SCALE_MIN)
    assert "other" in cal.stats["at_bound"]
    assert cal.intercept_ms == pytest.approx(2.0 + 6.0 * (1 - SCALE_MIN), abs=0.5)
    assert SCALE_MIN <= cal.scales["conv2d"] <= SCALE_MAX
    # A true scale inside the bounds is found as before.
    cal = fit_calibration(x, 2.0 + 1.3 * conv + other, "major")
    assert cal.scales["conv2d"] == pytest.approx(1.3, rel=0.02)  # shrunk a little
    assert cal.stats["at_bound"] == []


def test_the_cold_weight_term_is_fitted_and_chosen_only_where_it_helps() -> None:
    """A planted cost per MiB of weights (what XNNPACK shows: isolated entries are timed
    with warm caches) is recovered with its coefficient; the fit choice takes the
    structure form for such data and leaves it out when there is no such cost."""
    x, x_naive, y = _synthetic(60, 2)
    rng = np.random.default_rng(7)
    assert STRUCTURE_FEATURES == ("weight_mib", "live_ops")
    weights = np.column_stack([rng.uniform(5, 30, 60), rng.integers(200, 500, 60)])
    y_cold = y + 0.4 * weights[:, 0]
    cal = fit_calibration(x, y_cold, "type", structure=weights)
    assert cal.structure["weight_mib"] == pytest.approx(0.4, rel=0.05)
    assert cal.structure["live_ops"] == pytest.approx(0.0, abs=2e-3)
    assert cal.scales["conv2d"] == pytest.approx(0.8, rel=0.05)
    np.testing.assert_allclose(apply_calibration(cal, x, weights), y_cold, rtol=0.01)
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert cal.to_dict()["version"] == 2 and "weight_mib" in cal.terms_text()
    choice, scores = choose_fit(x, y_cold, 0, weights)
    assert "weight_mib" in choice[2] and len(scores) == 6 * len(FEATURE_SETS)
    preds, folds = cross_validate(x, x_naive, x[:, 0], y_cold, 0, weights)
    assert all("weight_mib" in f["structure"] for f in folds)
    assert metrics(preds["calibrated"], y_cold)["mape"] < 0.01
    # Without the cost, the plain form wins (or the coefficient is ~0).
    choice, _ = choose_fit(x, y, 0, weights)
    plain = fit_calibration(x, y, "type", structure=weights)
    assert not choice[2] or plain.structure.get("weight_mib", 0.0) < 0.02
    with pytest.raises(ValueError, match="structure"):
        apply_calibration(cal, x)
    # Each entry's own invocation cost, paid once per model and not once per op: a
    # negative per-op coefficient, found as such; bounded to ±0.1 ms an op.
    y_ops = y - 0.004 * weights[:, 1]
    cal = fit_calibration(x, y_ops, "type", structure=weights, use=("weight_mib", "live_ops"))
    assert cal.structure["live_ops"] == pytest.approx(-0.004, abs=1e-3)
    assert fit_calibration(x, y - 0.5 * weights[:, 1], "type", structure=weights).structure[
        "live_ops"
    ] == pytest.approx(-0.1)
    assert fit_calibration(x, y_ops, "type", structure=weights, use=()).structure == {}


def test_metrics_by_hand() -> None:
    meas = np.array([10.0, 20.0, 40.0, 80.0])
    pred = np.array([11.0, 19.0, 40.0, 100.0])
    m = metrics(pred, meas)
    assert m["mape"] == pytest.approx((0.1 + 0.05 + 0 + 0.25) / 4)
    assert m["within10"] == 0.75 and m["max_err"] == pytest.approx(0.25)
    assert m["within5"] == 0.5
    assert m["kendall_tau"] == pytest.approx(1.0)


@pytest.mark.slow  # exports and times whole detectors (tiny ones)
def test_validate_end_to_end_on_the_host(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "host.sqlite"
    runner = CliRunner()
    res = runner.invoke(
        lut_main,
        [
            "build",
            "--device",
            "host",
            "--space",
            "nasfpnlite-s",
            "--input-size",
            "64",
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    args = [
        "validate",
        "--lut",
        str(out),
        "--samples",
        "6",
        "--rounds",
        "2",
        "--cache-dir",
        str(cache),
        "--report",
        str(tmp_path / "rep"),
        "--quiet",
        "--min-r2",
        "-10",
    ]
    res = runner.invoke(lut_main, args)
    assert res.exit_code == 0, res.output
    assert "connectivity table, calibrated" in res.output
    for name in ("report.md", "predicted_vs_measured.png", "architectures.csv", "metrics.json"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    with TableStore.open(out) as store:
        runs = store.e2e_runs()
        archs = store.e2e_archs()
        assert store.calibration_doc() is not None
    assert len(archs) == 9 and all(set(runs[a]) == {0, 1} for a in archs)
    # Everything is stored: a second validate measures nothing new.
    res = runner.invoke(lut_main, args)
    assert res.exit_code == 0 and "; 0 new end-to-end runs" in res.output
    # Predictions now go through the calibration; a --min-r2 no table can reach (above 1) is
    # refused as bad input before anything is measured, not judged.
    res = runner.invoke(lut_main, ["predict", "--lut", str(out), "--arch", "nasfpnlite"])
    assert "[calibrated]" in res.output and "overhead" in res.output
    res = runner.invoke(lut_main, [*args[:-2], "--min-r2", "1.01"])
    assert res.exit_code == 2 and "--min-r2" in res.output and "1.01" in res.output


def test_validate_refuses_several_phones(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite")
    res = CliRunner().invoke(
        lut_main,
        ["validate", "--lut", str(tmp_path / "t.sqlite"), "--serial", "a", "--serial", "b"],
    )
    assert res.exit_code == 1
    assert "on one phone, not 2: give one --serial" in res.output
    assert res.output.count("\n") == 1
