"""The validation's outputs: the result object, its report folder (Markdown report,
per-architecture CSV, metrics JSON) and the predicted-vs-measured scatter plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.lut.calibration import Calibration
from mnasfpn.lut.fidelity import METHOD_LABELS, METHODS


@dataclass
class ValidationResult:
    lut: Path
    n: int
    folds: list[dict[str, Any]]
    metrics: dict[str, dict[str, float]]
    calibration: Calibration
    report_path: Path
    plot_path: Path
    measured_new: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=dict)

    def _noise_text(self) -> str:
        n = self.noise
        if n.get("round_spread_median") is None:
            return "one round each"
        lo, hi = n["latency_range_ms"]
        ceiling = n.get("r2_ceiling")
        return (
            f"range {lo:.1f}-{hi:.1f} ms, same-model round-to-round spread median "
            f"{100 * n['round_spread_median']:.1f}% (p90 {100 * n['round_spread_p90']:.1f}%)"
            + (f", R² ceiling {ceiling:.4f}" if ceiling is not None else "")
            + self._pace_text()
        )

    def _pace_text(self) -> str:
        """The machine's pace over the run and how much of the raw spread it explained."""
        n = self.noise
        if n.get("raw_round_spread_median") is None:
            return ""
        ranges = ", ".join(
            f"{name} {lo:.2f}-{hi:.2f}x"
            for name, (lo, hi) in (n.get("pace_range") or {}).items()
            if lo is not None and hi is not None
        )
        lo, hi = n["e2e_pace_range"]
        explained = n.get("pace_explained")
        return (
            f"; the machine's pace over the run: {ranges or 'no op timings'} (ops), "
            f"{lo:.2f}-{hi:.2f}x (end-to-end rounds); raw round spread median "
            f"{100 * n['raw_round_spread_median']:.1f}% (p90 "
            f"{100 * n['raw_round_spread_p90']:.1f}%)"
            + (
                f", {100 * explained:.0f}% of its variance explained by the pace"
                if explained is not None
                else ""
            )
            + (
                f"; {n['pace_flagged']} entries marked beyond correction"
                if n.get("pace_flagged")
                else ""
            )
        )

    def summary_text(self) -> str:
        sizes = sorted({(d["train"], d["test"]) for d in self.folds})
        lines = [
            f"{self.n} architectures, {len(self.folds)}-fold cross-validation "
            f"(train/test sizes {', '.join(f'{a}/{b}' for a, b in sizes)}); "
            f"{self.measured_new} new end-to-end runs; target: {self.noise.get('target')} "
            f"round of {self.noise.get('statistic')}, {self._noise_text()}",
            f"{'method':<40} {'R2':>7} {'MAPE':>7} {'max':>7} {'±10%':>6} {'±5%':>6} {'tau':>6}",
        ]
        for m in METHODS:
            r = self.metrics[m]
            lines.append(
                f"{METHOD_LABELS[m]:<40} {r['r2']:7.4f} {100 * r['mape']:6.2f}% "
                f"{100 * r['max_err']:6.1f}% {100 * r['within10']:5.1f}% "
                f"{100 * r.get('within5', float('nan')):5.1f}% {r['kendall_tau']:6.3f}"
            )
        cal = self.calibration
        lines.append(
            f"stored calibration (per {cal.feature_set}, {cal.stats.get('weighting')} errors): "
            + cal.terms_text()
        )
        return "\n".join(lines)


def plot_scatter(
    preds: dict[str, np.ndarray], measured: np.ndarray, out: Path, *, title: str
) -> None:
    # matplotlib: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6.5), dpi=120)
    lo = float(min(measured.min(), *(p.min() for p in preds.values()))) * 0.9
    hi = float(max(measured.max(), *(p.max() for p in preds.values()))) * 1.1
    line = np.linspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.85", label="±10%")
    ax.plot(line, line, "k-", lw=1, label="y = x")
    markers = dict(zip(METHODS, ("o", "s", "^", "v", "x"), strict=True))
    for m in METHODS:
        ax.scatter(measured, preds[m], marker=markers[m], s=22, alpha=0.75, label=METHOD_LABELS[m])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured end-to-end latency (ms)")
    ax.set_ylabel("predicted latency (ms, held-out)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def write_report(
    result: ValidationResult, rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path
) -> None:
    # pandas: only when a table is written
    import pandas as pd

    pd.DataFrame(rows).to_csv(out_dir / "architectures.csv", index=False)
    (out_dir / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": result.metrics,
                "folds": result.folds,
                "calibration": result.calibration.to_dict(),
            },
            indent=2,
        )
    )
    sizes = sorted({(d["train"], d["test"]) for d in result.folds})
    lines = [
        f"# Latency table validation: {result.lut.name}",
        "",
        f"- device: {meta.get('profile')} ({meta.get('device_model')}), "
        f"{meta.get('runtime')} {meta.get('runtime_version')}, micro-models by "
        f"{meta.get('converter_version')}",
        f"- input size {meta.get('input_size')}, spaces {', '.join(meta.get('spaces', []))}",
        f"- {result.n} architectures measured end to end ({result.noise.get('target')} of "
        f"interleaved rounds); "
        f"{len(result.folds)}-fold cross-validation, train/test sizes "
        f"{', '.join(f'{a}/{b}' for a, b in sizes)}; every figure below is on held-out "
        "architectures",
        f"- measured latency: {result.noise.get('target')} over {result.noise.get('rounds')} "
        f"interleaved rounds of the table's statistic ({result.noise.get('statistic')}, as "
        f"its op entries); {result._noise_text()} (the noise floor of any predictor)",
        "",
        "| method | R² | MAPE | max error | within ±10% | within ±5% | Kendall τ | mean bias |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        r = result.metrics[m]
        lines.append(
            f"| {METHOD_LABELS[m]} | {r['r2']:.4f} | {100 * r['mape']:.2f}% | "
            f"{100 * r['max_err']:.1f}% ({r['max_err_ms']:.2f} ms) | {100 * r['within10']:.1f}% "
            f"| {100 * r.get('within5', float('nan')):.1f}% | {r['kendall_tau']:.3f} "
            f"| {100 * r['bias']:+.2f}% |"
        )
    cal = result.calibration
    lines += [
        "",
        f"Stored calibration (fitted on all {result.n}, features per {cal.feature_set}, "
        f"{cal.stats.get('weighting')} errors; chosen by inner cross-validation): "
        + cal.terms_text("; "),
        "",
        f"![predicted vs measured]({result.plot_path.name})",
        "",
        "Per-architecture numbers: `architectures.csv`; metrics: `metrics.json`.",
    ]
    result.report_path.write_text("\n".join(lines) + "\n")
