"""The fitted calibration: latency ≈ overhead + Σ scale[feature] · (summed table latency).

Stored as JSON inside the table (never a pickle), so a table outlives library versions.
Features are per op type (``conv2d``) or per op type and part (``conv2d@head``). A feature
the fit never saw keeps scale 1.0 (the raw table entry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.ops import PARTS, TFLITE_OP

OP_TYPES: tuple[str, ...] = tuple(TFLITE_OP)
CALIBRATION_FORMAT = "mnasfpn-lut-calibration"
CALIBRATION_VERSION = 1
# "major": one scale each for the op types that carry most of the latency and one for
# all the others together (few parameters, least prone to fitting noise); "type": one
# per op type; "type_part": one per op type and part.
FEATURE_SETS = ("major", "type", "type_part")
MAJOR_TYPES = ("conv2d", "dwconv2d")


def feature_columns() -> list[tuple[str, str]]:
    """The (op type, part) columns every feature matrix uses, in a fixed order."""
    return [(t, p) for t in OP_TYPES for p in PARTS]


def feature_name(op_type: str, part: str, feature_set: str) -> str:
    if feature_set == "major":
        return op_type if op_type in MAJOR_TYPES else "other"
    return op_type if feature_set == "type" else f"{op_type}@{part}"


class CalibrationError(MnasfpnError, ValueError):
    pass


@dataclass
class Calibration:
    intercept_ms: float
    scales: dict[str, float]
    feature_set: str = "type"
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise CalibrationError(
                f"unknown calibration feature set {self.feature_set!r}; known: {FEATURE_SETS}"
            )
        if not math.isfinite(self.intercept_ms):
            raise CalibrationError("calibration intercept is not a finite number")
        for name, value in self.scales.items():
            if not math.isfinite(value) or value < 0:
                raise CalibrationError(f"calibration scale of {name!r} is {value!r}")

    def column_scales(self) -> list[float]:
        """One scale per `feature_columns()` entry (1.0 where the fit had no such feature)."""
        return [
            float(self.scales.get(feature_name(t, p, self.feature_set), 1.0))
            for t, p in feature_columns()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "feature_set": self.feature_set,
            "intercept_ms": self.intercept_ms,
            "scales": dict(sorted(self.scales.items())),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        if not isinstance(doc, Mapping) or doc.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError("not a calibration document")
        if doc.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(
                f"calibration version {doc.get('version')!r} is not supported "
                f"(this mnasfpn reads {CALIBRATION_VERSION}); refit with mnasfpn-lut validate"
            )
        try:
            scales = {str(k): float(v) for k, v in dict(doc["scales"]).items()}
            return cls(
                intercept_ms=float(doc["intercept_ms"]),
                scales=scales,
                feature_set=str(doc.get("feature_set", "type")),
                stats=dict(doc.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"malformed calibration document ({exc})") from None


def collapse(features: Any, feature_set: str) -> tuple[Any, list[str]]:
    """(n × len(feature_columns())) matrix → the fit's design matrix and feature names."""
    import numpy as np

    cols = feature_columns()
    x = np.asarray(features, dtype=float)
    names = list(dict.fromkeys(feature_name(t, p, feature_set) for t, p in cols))
    out = np.zeros((x.shape[0], len(names)))
    for j, (t, p) in enumerate(cols):
        out[:, names.index(feature_name(t, p, feature_set))] += x[:, j]
    return out, names


# Pull of each scale toward 1 (the raw table), in units of the milliseconds that scale
# moves on an average training architecture (at least 1% of the mean latency, so a sliver
# op type cannot stand in for something else at scale 70). Small: it decides only what
# the data leave undecided.
SHRINK = 0.01
PULL_FLOOR = 0.01
# A feature whose summed latency varies less than this (relative) across the training
# architectures cannot be told apart from the overhead term: its scale stays 1.
CONSTANT_CV = 0.01


def fit_calibration(
    features: Any,
    measured: Sequence[float],
    feature_set: str = "type",
    *,
    relative: bool = False,
    shrink: float = SHRINK,
) -> Calibration:
    """Overhead + non-negative per-feature scales (scikit-learn positive least squares),
    shrunk toward the raw table.

    With `relative`, squared errors are weighted by 1/measured², i.e. the fit minimizes
    relative rather than absolute error (what a ±10% target asks for)."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x, names = collapse(features, feature_set)
    y = np.asarray(measured, dtype=float)
    n = len(y)
    mean = x.mean(axis=0)
    varies = x.std(axis=0) > CONSTANT_CV * np.maximum(mean, 1e-12)
    fitted = np.flatnonzero(x.any(axis=0) & varies)
    fixed = np.flatnonzero(x.any(axis=0) & ~varies)
    target = y - x[:, fixed].sum(axis=1)  # constant features keep scale 1
    k = len(fitted)
    # Columns: the fitted features, then +1 and -1 so the overhead may take either sign
    # while LinearRegression(positive=True) keeps every scale >= 0.
    design = np.hstack([x[:, fitted], np.ones((n, 1)), -np.ones((n, 1))])
    weight = 1.0 / y**2 if relative else np.ones(n)
    if k and shrink > 0:
        pull = np.sqrt(shrink * n) * np.maximum(mean[fitted], PULL_FLOOR * y.mean())
        design = np.vstack([design, np.hstack([np.diag(pull), np.zeros((k, 2))])])
        target = np.concatenate([target, pull])  # row j: pull · s_j ≈ pull
        weight = np.concatenate([weight, np.full(k, weight[:n].mean())])
    model = LinearRegression(positive=True, fit_intercept=False)
    model.fit(design, target, sample_weight=weight)
    coef = model.coef_
    scales = {names[j]: float(c) for j, c in zip(fitted, coef[:k], strict=True)}
    scales.update({names[j]: 1.0 for j in fixed})
    intercept = float(coef[k] - coef[k + 1])
    pred = intercept + x[:, fitted] @ coef[:k] + x[:, fixed].sum(axis=1)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    stats = {
        "n_train": n,
        "train_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
        "train_mape": float(np.mean(np.abs(pred - y) / y)),
        "weighting": "relative" if relative else "absolute",
        "shrink": shrink,
        "fixed_at_1": [names[j] for j in fixed],
    }
    return Calibration(intercept, scales, feature_set, stats)
