"""How well a table predicts end-to-end latency: fidelity metrics, k-fold held-out
predictions of the calibrated table and of its baselines, and the choice of the
calibration's form. Pure numpy/scikit-learn/scipy: no device, no files."""

from __future__ import annotations

from typing import Any

import numpy as np

from mnasfpn.lut.calibration import FEATURE_SETS, Calibration, fit_calibration

FOLDS = 5
METHODS = ("calibrated", "raw_sum", "naive_sum", "naive_calibrated", "madds_linear")
METHOD_LABELS = {
    "calibrated": "connectivity table, calibrated",
    "raw_sum": "connectivity table, raw sum",
    "naive_sum": "naive table (all blocks), raw sum",
    "naive_calibrated": "naive table (all blocks), calibrated",
    "madds_linear": "MAdds, linear fit",
}


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    rel = (pred - meas) / meas
    tau = kendalltau(pred, meas).statistic if len(meas) > 1 else float("nan")
    return {
        "r2": float(r2_score(meas, pred)),
        "mape": float(np.mean(np.abs(rel))),
        "max_err": float(np.max(np.abs(rel))),
        "max_err_ms": float(np.max(np.abs(pred - meas))),
        "within10": float(np.mean(np.abs(rel) <= 0.10)),
        "within5": float(np.mean(np.abs(rel) <= 0.05)),
        "kendall_tau": float(tau),
        "bias": float(np.mean(rel)),
    }


TARGETS = ("fastest", "median", "min")
DEFAULT_TARGET = "fastest"


def end_to_end_latency(rounds: dict[int, dict[str, Any]], target: str = DEFAULT_TARGET) -> float:
    """One architecture's latency from its interleaved rounds; each round's `median_ms`
    holds the table's statistic (meta `statistic`).

    fastest: the lowest round, exactly as an op entry is its fastest pass (both sides of
    the fit see the same figure). median: the median of the rounds. min: the fastest
    single invocation over all rounds."""
    if target == "fastest":
        return float(min(r["median_ms"] for r in rounds.values()))
    if target == "median":
        return float(np.median([r["median_ms"] for r in rounds.values()]))
    if target == "min":
        return float(
            min(r["min_ms"] if r["min_ms"] is not None else r["median_ms"] for r in rounds.values())
        )
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def round_values(rounds: dict[int, dict[str, Any]]) -> list[float]:
    return [float(r["median_ms"]) for r in rounds.values()]


def round_spread(rounds: dict[int, dict[str, Any]]) -> float:
    """(max - min) / median of the rounds' figures: the same model, measured again."""
    v = [r["median_ms"] for r in rounds.values()]
    return float((max(v) - min(v)) / np.median(v))


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(idx, min(k, n)) if len(f)]


FIT_CHOICES: tuple[tuple[str, bool], ...] = tuple(
    (fs, rel) for fs in FEATURE_SETS for rel in (False, True)
)


def _cv_mape(x: np.ndarray, y: np.ndarray, choice: tuple[str, bool], seed: int) -> float:
    errs = []
    for test in _folds(len(y), FOLDS, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        cal = fit_calibration(x[train], y[train], choice[0], relative=choice[1])
        pred = apply_calibration(cal, x[test])
        errs += list(np.abs(pred - y[test]) / y[test])
    return float(np.mean(errs))


def apply_calibration(cal: Calibration, features: np.ndarray) -> np.ndarray:
    return cal.intercept_ms + np.asarray(features) @ np.asarray(cal.column_scales())


def choose_fit(
    x: np.ndarray, y: np.ndarray, seed: int
) -> tuple[tuple[str, bool], dict[str, float]]:
    """The calibration form (feature set, error weighting) with the best cross-validated
    MAPE on (x, y) alone (the caller's training split); with too few points, the
    smallest form. Candidates: feature sets major, type, type_part × absolute or relative
    error weighting."""
    if len(y) < 2 * FOLDS:
        return ("major", False), {}
    scores = {c: _cv_mape(x, y, c, seed) for c in FIT_CHOICES}
    best = min(FIT_CHOICES, key=lambda c: (scores[c], FIT_CHOICES.index(c)))
    return best, {f"{fs}/{'relative' if rel else 'absolute'}": v for (fs, rel), v in scores.items()}


def cross_validate(
    x: np.ndarray,
    x_naive: np.ndarray,
    madds: np.ndarray,
    y: np.ndarray,
    seed: int,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Out-of-fold predictions of every method (k-fold, seeded) and per-fold details."""
    from sklearn.linear_model import LinearRegression

    n = len(y)
    out = {m: np.zeros(n) for m in METHODS}
    out["raw_sum"] = x.sum(axis=1)
    out["naive_sum"] = x_naive.sum(axis=1)
    details = []
    for f, test in enumerate(_folds(n, FOLDS, seed)):
        train = np.setdiff1d(np.arange(n), test)
        (fs, rel), _ = choose_fit(x[train], y[train], seed + 1 + f)
        cal = fit_calibration(x[train], y[train], fs, relative=rel)
        out["calibrated"][test] = apply_calibration(cal, x[test])
        ncal = fit_calibration(x_naive[train], y[train], fs, relative=rel)
        out["naive_calibrated"][test] = apply_calibration(ncal, x_naive[test])
        lin = LinearRegression().fit(madds[train, None], y[train])
        out["madds_linear"][test] = lin.predict(madds[test, None])
        details.append(
            {
                "fold": f,
                "train": len(train),
                "test": len(test),
                "feature_set": fs,
                "weighting": "relative" if rel else "absolute",
            }
        )
    return out, details
