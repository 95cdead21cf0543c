"""The fitted calibration: latency ≈ overhead + Σ scale[feature] · (summed table latency)
+ Σ coefficient[structure] · (structural quantity of the live ops).

Stored as JSON inside the table (never a pickle), so a table outlives library versions.
Features are per op type (``conv2d``) or per op type and part (``conv2d@head``). A feature
the fit never saw keeps scale 1.0 (the raw table entry).

Scales are bounded to [SCALE_MIN, SCALE_MAX]: an op's latency inside a model is its
isolated latency give or take cache effects, not 0 nor 5 times it. Without the bound, a
feature whose sum hardly varies across architectures (the small ops: add, pool, resize,
mul) trades against the overhead term, and under load the fit drove it to ×0 and moved
its milliseconds into the overhead; the bound keeps such a feature physical while the
data still decide the scale within it.

Structure features: why isolated entries stop adding up under XNNPACK. An entry is the
op timed alone, invocation after invocation, so its weights and inputs sit in the core's
L2. Inside the whole model every op's weights were evicted by the ops before it and come
from L3 or memory on every invocation. Timing one op right after evicting the caches
(benchmarks/fidelity_by_kernels.py) adds a similar time under builtin kernels and under
XNNPACK (0.04–0.20 ms an op here, most for the largest weights); XNNPACK runs the paper
cell 4.4× faster, so the same cold-cache cost is a larger share of the model: over 43
validated detectors the raw sum missed by −16% under XNNPACK against −6.9% builtin. What
a per-type fit leaves over follows the live ops' weight bytes (r = +0.60, ~0.15 ms per
MiB here) and not the number of XNNPACK partitions (r = 0.00; each resize_nearest, which
XNNPACK does not take, splits the delegate). So the calibration may add ``weight_mib``
(fp32 weight MiB of the live ops, from the IR) with a non-negative coefficient.

The other way round, every entry carries one invocation's fixed cost (the Python call,
the interpreter's and the delegate's dispatch), which a whole model pays once, not once
per op: a few µs an op, invisible beside builtin kernels but a share of XNNPACK's faster
ops, largest for small inputs. ``live_ops`` (the live op count) takes it, with a
coefficient of either sign bounded to ±0.1 ms an op. Validate's fit choice tries no
structure term, the weight term, and both, and keeps what lowers the cross-validated
error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.ops import PARTS, TFLITE_OP

OP_TYPES: tuple[str, ...] = tuple(TFLITE_OP)
CALIBRATION_FORMAT = "mnasfpn-lut-calibration"
# Version 2 adds structure coefficients; a calibration without them is still written as
# version 1, so an older mnasfpn reads every table it can predict correctly.
CALIBRATION_VERSION = 2
READABLE_VERSIONS = (1, 2)
# "major": one scale each for the op types that carry most of the latency and one for
# all the others together (few parameters, least prone to fitting noise); "type": one
# per op type; "type_part": one per op type and part.
FEATURE_SETS = ("major", "type", "type_part")
MAJOR_TYPES = ("conv2d", "dwconv2d")
# Quantities of the live ops other than table latency that the fit may use (see the
# module docstring), in the column order of every structure matrix.
STRUCTURE_FEATURES: tuple[str, ...] = ("weight_mib", "live_ops")
# Each coefficient's range (ms per unit).
STRUCTURE_BOUNDS: dict[str, tuple[float, float]] = {
    "weight_mib": (0.0, math.inf),
    "live_ops": (-0.1, 0.1),
}
# The structure terms a fit may use, smallest first (validate's fit choice tries each).
STRUCTURE_SETS: tuple[tuple[str, ...], ...] = ((), ("weight_mib",), STRUCTURE_FEATURES)
SCALE_MIN = 0.5
SCALE_MAX = 2.0


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
    # Milliseconds per unit of each STRUCTURE_FEATURES entry (absent: 0).
    structure: dict[str, float] = field(default_factory=dict)

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
        for name, value in self.structure.items():
            if name not in STRUCTURE_FEATURES:
                raise CalibrationError(
                    f"unknown calibration structure feature {name!r}; known: "
                    f"{', '.join(STRUCTURE_FEATURES)} (refit with mnasfpn-lut validate)"
                )
            lo, hi = STRUCTURE_BOUNDS[name]
            if not math.isfinite(value) or not lo <= value <= hi:
                raise CalibrationError(f"calibration coefficient of {name!r} is {value!r}")

    def column_scales(self) -> list[float]:
        """One scale per `feature_columns()` entry (1.0 where the fit had no such feature)."""
        return [
            float(self.scales.get(feature_name(t, p, self.feature_set), 1.0))
            for t, p in feature_columns()
        ]

    def terms_text(self, sep: str = ", ") -> str:
        """The fitted terms in words: overhead, scales, structure coefficients."""
        terms = [f"{k} ×{v:.3f}" for k, v in sorted(self.scales.items())]
        terms += [f"{k} {v:.3f} ms each" for k, v in sorted(self.structure.items())]
        return f"overhead {self.intercept_ms:.3f} ms{sep}" + ", ".join(terms)

    def structure_coefs(self) -> list[float]:
        """One coefficient per `STRUCTURE_FEATURES` entry (0 where the fit had none)."""
        return [float(self.structure.get(name, 0.0)) for name in STRUCTURE_FEATURES]

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION if self.structure else 1,
            "feature_set": self.feature_set,
            "intercept_ms": self.intercept_ms,
            "scales": dict(sorted(self.scales.items())),
            "stats": self.stats,
        }
        if self.structure:
            doc["structure"] = dict(sorted(self.structure.items()))
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        if not isinstance(doc, Mapping) or doc.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError("not a calibration document")
        if doc.get("version") not in READABLE_VERSIONS:
            raise CalibrationError(
                f"calibration version {doc.get('version')!r} is not supported "
                f"(this mnasfpn reads {', '.join(map(str, READABLE_VERSIONS))}); "
                "refit with mnasfpn-lut validate"
            )
        try:
            scales = {str(k): float(v) for k, v in dict(doc["scales"]).items()}
            structure = {str(k): float(v) for k, v in dict(doc.get("structure", {})).items()}
            return cls(
                intercept_ms=float(doc["intercept_ms"]),
                scales=scales,
                feature_set=str(doc.get("feature_set", "type")),
                stats=dict(doc.get("stats", {})),
                structure=structure,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"malformed calibration document ({exc})") from None


def collapse(features: Any, feature_set: str) -> tuple[Any, list[str]]:
    """(n × len(feature_columns())) matrix → the fit's design matrix and feature names."""
    cols = feature_columns()
    x = np.asarray(features, dtype=float)
    names = list(dict.fromkeys(feature_name(t, p, feature_set) for t, p in cols))
    out = np.zeros((x.shape[0], len(names)))
    for j, (t, p) in enumerate(cols):
        out[:, names.index(feature_name(t, p, feature_set))] += x[:, j]
    return out, names


# Pull of each scale toward 1 (the raw table), in units of the milliseconds that scale
# moves on an average training architecture (at least 1% of the mean latency, so a sliver
# op type cannot stand in for something else). Small: it decides only what the data
# leave undecided within the bounds.
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
    structure: Any = None,
    use: Sequence[str] | None = None,
) -> Calibration:
    """Overhead + per-feature scales bounded to [SCALE_MIN, SCALE_MAX] and shrunk toward
    the raw table, plus coefficients (within STRUCTURE_BOUNDS) of the `structure` columns
    (n × len(STRUCTURE_FEATURES)) named in `use` (all of them by default) when given:
    bounded linear least squares (scipy's lsq_linear).

    With `relative`, squared errors are weighted by 1/measured², i.e. the fit minimizes
    relative rather than absolute error (what a ±10% target asks for)."""
    # scipy (~0.5 s to import): only when it computes
    from scipy.optimize import lsq_linear

    x, names = collapse(features, feature_set)
    y = np.asarray(measured, dtype=float)
    n = len(y)
    s = np.zeros((n, 0)) if structure is None else np.asarray(structure, dtype=float)
    if s.shape != (n, len(STRUCTURE_FEATURES)) and s.shape[1] != 0:
        raise CalibrationError(
            f"structure matrix has shape {s.shape}; expected ({n}, {len(STRUCTURE_FEATURES)})"
        )
    mean = x.mean(axis=0)
    varies = x.std(axis=0) > CONSTANT_CV * np.maximum(mean, 1e-12)
    fitted = np.flatnonzero(x.any(axis=0) & varies)
    fixed = np.flatnonzero(x.any(axis=0) & ~varies)
    # A structure column that does not vary is the overhead term again: left out.
    wanted = STRUCTURE_FEATURES if use is None else tuple(use)
    used = [
        j
        for j in range(s.shape[1])
        if STRUCTURE_FEATURES[j] in wanted and s[:, j].std() > CONSTANT_CV * abs(s[:, j].mean())
    ]
    bounds = [STRUCTURE_BOUNDS[STRUCTURE_FEATURES[j]] for j in used]
    target = y - x[:, fixed].sum(axis=1)  # constant features keep scale 1
    k, m = len(fitted), len(used)
    design = np.hstack([x[:, fitted], s[:, used], np.ones((n, 1))])
    weight = 1.0 / y**2 if relative else np.ones(n)
    if k and shrink > 0:
        pull = np.sqrt(shrink * n) * np.maximum(mean[fitted], PULL_FLOOR * y.mean())
        design = np.vstack([design, np.hstack([np.diag(pull), np.zeros((k, m + 1))])])
        target = np.concatenate([target, pull])  # row j: pull · s_j ≈ pull
        weight = np.concatenate([weight, np.full(k, weight[:n].mean())])
    root = np.sqrt(weight)
    lower = np.concatenate([np.full(k, SCALE_MIN), [b[0] for b in bounds], [-np.inf]])
    upper = np.concatenate([np.full(k, SCALE_MAX), [b[1] for b in bounds], [np.inf]])
    coef = lsq_linear(design * root[:, None], target * root, bounds=(lower, upper)).x
    scales = {names[j]: float(c) for j, c in zip(fitted, coef[:k], strict=True)}
    scales.update({names[j]: 1.0 for j in fixed})
    struct = {STRUCTURE_FEATURES[j]: float(c) for j, c in zip(used, coef[k : k + m], strict=True)}
    intercept = float(coef[k + m])
    pred = intercept + x[:, fitted] @ coef[:k] + s[:, used] @ coef[k : k + m]
    pred = pred + x[:, fixed].sum(axis=1)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    stats = {
        "n_train": n,
        "train_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
        "train_mape": float(np.mean(np.abs(pred - y) / y)),
        "weighting": "relative" if relative else "absolute",
        "shrink": shrink,
        "scale_bounds": [SCALE_MIN, SCALE_MAX],
        "fixed_at_1": [names[j] for j in fixed],
        "at_bound": [
            names[j]
            for j, c in zip(fitted, coef[:k], strict=True)
            if c <= SCALE_MIN + 1e-9 or c >= SCALE_MAX - 1e-9
        ],
    }
    return Calibration(intercept, scales, feature_set, stats, struct)
