"""Validation: sampling across the latency range, the calibration fit, and a real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mnasfpn.cli import lut_main
from mnasfpn.lut.calibration import FEATURE_SETS, feature_columns, fit_calibration
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
from test_lut_predict import make_table


def test_samples_spread_over_the_predicted_range(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite", ("mnasfpn",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    picked = sample_architectures(table, ["mnasfpn"], 12, seed=3)
    names = [g.name for g in picked if g.name]
    assert set(names) == {"paper-mnasfpn", "paper-mnasfpn-nosdo", "nasfpnlite"}
    sampled = [g for g in picked if not g.name]
    assert len(sampled) == 12
    raw = table.predict_raw(sampled)
    pool = table.predict_raw(
        [g for g in sample_architectures(table, ["mnasfpn"], 60, seed=4) if not g.name]
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
    (fs, _), scores = choose_fit(x, y, seed=0)
    assert fs in FEATURE_SETS and len(scores) == 2 * len(FEATURE_SETS)
    np.testing.assert_allclose(
        apply_calibration(cal, x), cal.intercept_ms + x @ cal.column_scales()
    )


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
    # Predictions now go through the calibration; an impossible --min-r2 fails cleanly.
    res = runner.invoke(lut_main, ["predict", "--lut", str(out), "--arch", "nasfpnlite"])
    assert "[calibrated]" in res.output and "overhead" in res.output
    res = runner.invoke(lut_main, [*args[:-2], "--min-r2", "1.01"])
    assert res.exit_code == 1 and "< --min-r2 1.01" in res.output


def test_validate_refuses_several_phones(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite")
    res = CliRunner().invoke(
        lut_main,
        ["validate", "--lut", str(tmp_path / "t.sqlite"), "--serial", "a", "--serial", "b"],
    )
    assert res.exit_code == 1
    assert "on one phone, not 2: give one --serial" in res.output
    assert res.output.count("\n") == 1
