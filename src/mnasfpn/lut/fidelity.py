"""How well a table predicts end-to-end latency: fidelity metrics, k-fold held-out
predictions of the calibrated table and of its baselines, and the choice of the
calibration's form. Pure numpy/scikit-learn/scipy: no device, no files."""

from __future__ import annotations

from typing import Any

import numpy as np

from mnasfpn.lut.calibration import FEATURE_SETS, STRUCTURE_SETS, Calibration, fit_calibration

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
    # scipy (~0.5 s to import): only when it computes
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


# (feature set, relative weighting, structure terms used): the calibration's forms.
FitChoice = tuple[str, bool, tuple[str, ...]]
FIT_CHOICES: tuple[FitChoice, ...] = tuple(
    (fs, rel, st) for st in STRUCTURE_SETS for fs in FEATURE_SETS for rel in (False, True)
)


def fit_choice(
    x: np.ndarray, y: np.ndarray, s: np.ndarray | None, choice: FitChoice
) -> Calibration:
    """`fit_calibration` in the form `choice` (structure columns `s` used only if it says)."""
    fs, rel, st = choice
    return fit_calibration(x, y, fs, relative=rel, structure=s if st else None, use=st)


def _cv_mape(
    x: np.ndarray, y: np.ndarray, s: np.ndarray | None, choice: FitChoice, seed: int
) -> float:
    errs = []
    for test in _folds(len(y), FOLDS, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        cal = fit_choice(x[train], y[train], None if s is None else s[train], choice)
        pred = apply_calibration(cal, x[test], None if s is None else s[test])
        errs += list(np.abs(pred - y[test]) / y[test])
    return float(np.mean(errs))


def apply_calibration(
    cal: Calibration, features: np.ndarray, structure: np.ndarray | None = None
) -> np.ndarray:
    out = cal.intercept_ms + np.asarray(features) @ np.asarray(cal.column_scales())
    if cal.structure:
        if structure is None:
            raise ValueError("this calibration uses structure features; pass them")
        out = out + np.asarray(structure) @ np.asarray(cal.structure_coefs())
    return out


def choice_label(choice: FitChoice) -> str:
    fs, rel, st = choice
    return f"{fs}/{'relative' if rel else 'absolute'}" + "".join(f"+{t}" for t in st)


def choose_fit(
    x: np.ndarray, y: np.ndarray, seed: int, structure: np.ndarray | None = None
) -> tuple[FitChoice, dict[str, float]]:
    """The calibration form with the best cross-validated MAPE on (x, y) alone (the
    caller's training split); with too few points, the smallest form. Candidates: feature
    sets major, type, type_part × absolute or relative error weighting × each of
    STRUCTURE_SETS (only the empty one without `structure`)."""
    if len(y) < 2 * FOLDS:
        return ("major", False, ()), {}
    choices = [c for c in FIT_CHOICES if structure is not None or not c[2]]
    scores = {c: _cv_mape(x, y, structure, c, seed) for c in choices}
    best = min(choices, key=lambda c: (scores[c], choices.index(c)))
    return best, {choice_label(c): v for c, v in scores.items()}


def cross_validate(
    x: np.ndarray,
    x_naive: np.ndarray,
    madds: np.ndarray,
    y: np.ndarray,
    seed: int,
    structure: np.ndarray | None = None,
    structure_naive: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Out-of-fold predictions of every method (k-fold, seeded) and per-fold details.
    `structure` (and `structure_naive` for the naive table) let the fit use the
    structure features."""
    s, sn = structure, structure_naive if structure_naive is not None else structure
    # scikit-learn (~1 s to import): only when it computes
    from sklearn.linear_model import LinearRegression

    n = len(y)
    out = {m: np.zeros(n) for m in METHODS}
    out["raw_sum"] = x.sum(axis=1)
    out["naive_sum"] = x_naive.sum(axis=1)
    details = []
    for f, test in enumerate(_folds(n, FOLDS, seed)):
        train = np.setdiff1d(np.arange(n), test)
        choice = choose_fit(x[train], y[train], seed + 1 + f, None if s is None else s[train])[0]
        cal = fit_choice(x[train], y[train], None if s is None else s[train], choice)
        out["calibrated"][test] = apply_calibration(cal, x[test], None if s is None else s[test])
        ncal = fit_choice(x_naive[train], y[train], None if sn is None else sn[train], choice)
        out["naive_calibrated"][test] = apply_calibration(
            ncal, x_naive[test], None if sn is None else sn[test]
        )
        lin = LinearRegression().fit(madds[train, None], y[train])
        out["madds_linear"][test] = lin.predict(madds[test, None])
        details.append(
            {
                "fold": f,
                "train": len(train),
                "test": len(test),
                "feature_set": choice[0],
                "weighting": "relative" if choice[1] else "absolute",
                "structure": sorted(cal.structure),
            }
        )
    return out, details
