"""`mnasfpn-lut validate`: the table against end-to-end measurements.

1. Sample many genotypes of the table's spaces, predict their raw sums and pick `samples`
   of them stratified by quantile of predicted latency (plus the named paper cells).
2. Export each whole detector (`export_tflite`, `jobs` processes, all before any timing)
   and time them on the table's device in `rounds` interleaved rounds; every round of
   every architecture is stored in the table, so a second validate measures nothing new.
3. Fit the calibration (overhead + non-negative per-op-type scales, scikit-learn) and
   report k-fold held-out fidelity for it and for the baselines: raw table sum, naive sum
   over all blocks (dead ones included), naive sum calibrated, MAdds-linear.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.lut.build import DeviceOptions, default_cache_dir, identity_of
from mnasfpn.lut.calibration import FEATURE_SETS, Calibration, fit_calibration
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.parallel import spawn_map
from mnasfpn.searchspace.genotype import Genotype, genotype_from_dict
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture
from mnasfpn.searchspace.spaces import get_space

SAMPLE_REPEATS = (3, 4, 5)
POOL_PER_SAMPLE = 50
FOLDS = 5
# End-to-end models run long: fewer invocations per round, more rounds across the batch.
E2E_OVERRIDES: dict[str, Any] = {
    "warmup_runs": 3,
    "num_runs": 10,
    "min_repeats": 2,
    "max_repeats": 6,
}
METHODS = ("calibrated", "raw_sum", "naive_sum", "naive_calibrated", "madds_linear")
METHOD_LABELS = {
    "calibrated": "connectivity table, calibrated",
    "raw_sum": "connectivity table, raw sum",
    "naive_sum": "naive table (all blocks), raw sum",
    "naive_calibrated": "naive table (all blocks), calibrated",
    "madds_linear": "MAdds, linear fit",
}


def arch_id(genotype: Genotype, input_size: int) -> str:
    doc = genotype.to_dict()
    doc.pop("name", None)
    text = json.dumps(doc, sort_keys=True) + f"@{input_size}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def sample_architectures(
    table: LatencyTable, spaces: Sequence[str], samples: int, seed: int
) -> list[Genotype]:
    """`samples` genotypes spread over the predicted latency range, plus named cells."""
    rng = random.Random(seed)
    pool: list[Genotype] = []
    per_space = max(POOL_PER_SAMPLE * samples // max(len(spaces), 1), samples)
    for name in spaces:
        sp = get_space(name)
        pool += [sp.sample(rng).with_repeats(rng.choice(SAMPLE_REPEATS)) for _ in range(per_space)]
    # Distinct genotypes only.
    uniq = {arch_id(g, table.input_size): g for g in pool}
    pool = list(uniq.values())
    raw = table.predict_raw(pool)
    order = np.argsort(raw, kind="stable")
    picked: list[Genotype] = []
    edges = np.linspace(0, len(order), samples + 1).astype(int)
    for lo, hi in pairwise(edges.tolist()):
        if hi > lo:
            picked.append(pool[int(order[rng.randrange(lo, hi)])])
    for name in ARCHITECTURES:
        g = get_architecture(name)
        try:
            table.predict_raw([g])
        except TableError:
            continue
        picked.append(g)
    return picked


def _export_one(doc: dict[str, Any], settings: dict[str, Any], out: str) -> tuple[str, float]:
    from mnasfpn.ir.build import BackboneConfig, PredictorConfig, build_opgraph
    from mnasfpn.model.export import export_tflite

    t0 = time.perf_counter()
    g = genotype_from_dict(doc)
    graph = build_opgraph(
        g,
        backbone=BackboneConfig(alpha=settings["alpha"]),
        predictor=PredictorConfig(depth=settings["depth"]),
        input_size=settings["input_size"],
        num_classes=settings["num_classes"],
    )
    export_tflite(graph, out)
    return out, time.perf_counter() - t0


def export_models(
    jobs_list: list[tuple[Genotype, Path]],
    settings: dict[str, Any],
    jobs: int,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Export the detectors (in `jobs` spawned processes); returns the wall time."""
    t0 = time.perf_counter()
    todo = [(g, p) for g, p in jobs_list if not p.exists()]
    if not todo:
        return 0.0
    tasks = [(g.to_dict(), settings, str(p)) for g, p in todo]
    for _ in spawn_map(_export_one, tasks, jobs):
        if progress:
            progress(1)
    return time.perf_counter() - t0


# -- metrics ---------------------------------------------------------------------------


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
        "kendall_tau": float(tau),
        "bias": float(np.mean(rel)),
    }


TARGETS = ("median", "min")


def end_to_end_latency(rounds: dict[int, dict[str, Any]], target: str = "median") -> float:
    """One architecture's latency from its interleaved rounds.

    median: the median of the rounds' medians (the usual figure). min: the fastest single
    invocation over all rounds, the least disturbed run on a shared machine (long models
    are preempted more often than the micro-models, whose medians the table holds)."""
    if target == "median":
        return float(np.median([r["median_ms"] for r in rounds.values()]))
    if target == "min":
        return float(
            min(r["min_ms"] if r["min_ms"] is not None else r["median_ms"] for r in rounds.values())
        )
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def round_spread(rounds: dict[int, dict[str, Any]]) -> float:
    """(max - min) / median of the rounds' medians: the same model, measured again."""
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


# -- the command -----------------------------------------------------------------------


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
        return (
            f"range {lo:.1f}-{hi:.1f} ms, same-model round-to-round spread median "
            f"{100 * n['round_spread_median']:.1f}% (p90 {100 * n['round_spread_p90']:.1f}%)"
        )

    def summary_text(self) -> str:
        sizes = sorted({(d["train"], d["test"]) for d in self.folds})
        lines = [
            f"{self.n} architectures, {len(self.folds)}-fold cross-validation "
            f"(train/test sizes {', '.join(f'{a}/{b}' for a, b in sizes)}); "
            f"{self.measured_new} new end-to-end runs; target: {self.noise.get('target')} "
            f"latency, {self._noise_text()}",
            f"{'method':<40} {'R2':>7} {'MAPE':>7} {'max':>7} {'±10%':>6} {'tau':>6}",
        ]
        for m in METHODS:
            r = self.metrics[m]
            lines.append(
                f"{METHOD_LABELS[m]:<40} {r['r2']:7.4f} {100 * r['mape']:6.2f}% "
                f"{100 * r['max_err']:6.1f}% {100 * r['within10']:5.1f}% {r['kendall_tau']:6.3f}"
            )
        cal = self.calibration
        lines.append(
            f"stored calibration (per {cal.feature_set}, {cal.stats.get('weighting')} errors): "
            f"overhead {cal.intercept_ms:.3f} ms, "
            + ", ".join(f"{k} ×{v:.3f}" for k, v in sorted(cal.scales.items()))
        )
        return "\n".join(lines)


def validate(
    lut_path: Path,
    *,
    samples: int = 40,
    seed: int = 0,
    report_dir: Path,
    jobs: int = 2,
    rounds: int = 3,
    target: str = "median",
    spaces: list[str] | None = None,
    serials: Sequence[str] = (),
    adb_transport: str = "server",
    adb_host: str | None = None,
    benchmark_binary: str | None = None,
    overrides: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
) -> ValidationResult:
    from tqdm import tqdm

    from mnasfpn.ir.build import BackboneConfig, PredictorConfig, build_opgraph

    table = LatencyTable.open(lut_path)
    meta = table.meta
    st = table.settings
    spaces = spaces or table.spaces
    if not spaces:
        raise TableError(f"{lut_path} lists no spaces; rebuild it with mnasfpn-lut build")
    settings = {
        "input_size": st.input_size,
        "num_classes": st.num_classes,
        "alpha": st.alpha,
        "depth": st.depth,
    }
    genotypes = sample_architectures(table, spaces, samples, seed)
    ids = [arch_id(g, st.input_size) for g in genotypes]
    cache = (cache_dir or default_cache_dir()) / "detectors" / f"tf-{meta.get('converter_version')}"
    paths = {a: cache / f"{a}-{st.input_size}.tflite" for a in ids}
    timings: dict[str, float] = {}
    measured_new = 0
    with TableStore.open(lut_path) as store:
        for g, a in zip(genotypes, ids, strict=True):
            graph = build_opgraph(
                g,
                backbone=BackboneConfig(alpha=st.alpha),
                predictor=PredictorConfig(depth=st.depth),
                input_size=st.input_size,
                num_classes=st.num_classes,
            )
            store.add_e2e_arch(
                a,
                name=g.name,
                genotype=g.to_json(indent=None),
                input_size=st.input_size,
                summary=json.dumps(graph.summary(), default=str),
            )
        runs = store.e2e_runs()
        todo = {a: [r for r in range(rounds) if r not in runs.get(a, {})] for a in ids}
        need = [a for a in dict.fromkeys(ids) if todo[a]]
        if need:
            echo(
                f"exporting {len(need)} detectors ({jobs} processes), then timing "
                f"{sum(len(todo[a]) for a in need)} runs on {meta.get('profile')}"
            )
            by_id = dict(zip(ids, genotypes, strict=True))
            with tqdm(
                total=len(need), desc="export", unit="model", disable=not show_progress
            ) as bar:
                timings["export_s"] = export_models(
                    [(by_id[a], paths[a]) for a in need], settings, jobs, bar.update
                )
            measured_new = _time_e2e(
                store,
                need,
                todo,
                paths,
                meta,
                rounds,
                seed,
                DeviceOptions(
                    str(meta.get("profile")),
                    tuple(serials),
                    adb_transport,
                    adb_host,
                    benchmark_binary,
                    {**E2E_OVERRIDES, **(overrides or {})},
                ),
                st,
                timings,
                show_progress,
                tqdm,
            )
        runs = store.e2e_runs()
    keep = [i for i, a in enumerate(ids) if runs.get(a)]
    if len(keep) < 4:
        raise TableError(f"only {len(keep)} architectures have end-to-end runs; need at least 4")
    genotypes = [genotypes[i] for i in keep]
    ids = [ids[i] for i in keep]
    y = np.array([end_to_end_latency(runs[a], target) for a in ids])
    spread = np.array([round_spread(runs[a]) for a in ids if len(runs[a]) > 1])
    x = table.features(genotypes)
    x_naive = table.features(genotypes, naive=True)
    madds = np.array(
        [
            build_opgraph(
                g,
                backbone=BackboneConfig(alpha=st.alpha),
                predictor=PredictorConfig(depth=st.depth),
                input_size=st.input_size,
                num_classes=st.num_classes,
            ).madds()
            / 1e6
            for g in genotypes
        ]
    )
    preds, folds = cross_validate(x, x_naive, madds, y, seed)
    results = {m: metrics(preds[m], y) for m in METHODS}
    (fs, rel), scores = choose_fit(x, y, seed)
    cal = fit_calibration(x, y, fs, relative=rel)
    cal.stats.update(
        {
            "n_archs": len(y),
            "folds": len(folds),
            "cv_r2": results["calibrated"]["r2"],
            "cv_mape": results["calibrated"]["mape"],
            "cv_within10": results["calibrated"]["within10"],
            "cv_kendall_tau": results["calibrated"]["kendall_tau"],
            "fit_choice_cv_mape": scores,
            "seed": seed,
        }
    )
    with TableStore.open(lut_path) as store:
        store.set_calibration_doc(cal.to_dict())
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_path = report_dir / "predicted_vs_measured.png"
    plot_scatter(preds, y, plot_path, title=f"{lut_path.name}: held-out predictions")
    rows = [
        {
            "arch_id": a,
            "name": g.name,
            "space": g.space,
            "channels": g.channels,
            "repeats": g.repeats,
            "measured_ms": float(y[i]),
            "madds_m": float(madds[i]),
            **{f"{m}_ms": float(preds[m][i]) for m in METHODS},
        }
        for i, (a, g) in enumerate(zip(ids, genotypes, strict=True))
    ]
    noise = {
        "rounds": rounds,
        "target": target,
        "round_spread_median": float(np.median(spread)) if len(spread) else None,
        "round_spread_p90": float(np.quantile(spread, 0.9)) if len(spread) else None,
        "latency_range_ms": [float(y.min()), float(y.max())],
    }
    result = ValidationResult(
        lut_path,
        len(y),
        folds,
        results,
        cal,
        report_dir / "report.md",
        plot_path,
        measured_new,
        timings,
    )
    result.noise = noise
    write_report(result, rows, meta, report_dir)
    return result


def _time_e2e(
    store: TableStore,
    need: list[str],
    todo: dict[str, list[int]],
    paths: dict[str, Path],
    meta: dict[str, Any],
    rounds: int,
    seed: int,
    device: DeviceOptions,
    settings: Any,
    timings: dict[str, float],
    show_progress: bool,
    tqdm: Any,
) -> int:
    devices = device.open_all()
    count = 0
    try:
        dev = devices[0]
        info = dev.info().to_dict()
        store.check_identity(identity_of(info, device.name, settings), out_hint="table (--lut)")
        session = store.start_session("validate", info, note=f"{len(need)} architectures")
        rng = random.Random(seed)
        t0 = time.perf_counter()
        total = sum(len(todo[a]) for a in need)
        with tqdm(total=total, desc="time", unit="run", disable=not show_progress) as bar:
            for r in range(rounds):
                batch = [a for a in need if r in todo[a]]
                rng.shuffle(batch)  # interleaved: every round visits the models anew

                def on_result(i: int, n: int, res: Any, batch: list[str] = batch, r: int = r):
                    nonlocal count
                    if res.ok and res.median_ms is not None:
                        store.add_e2e_run(
                            batch[i],
                            r,
                            median_ms=res.median_ms,
                            min_ms=res.min_ms,
                            std_ms=res.std_ms,
                            runs=res.runs,
                            dispersion=res.dispersion,
                            session=session,
                        )
                        count += 1
                    bar.update(1)

                dev.time_models([paths[a] for a in batch], on_result)
        timings["time_s"] = time.perf_counter() - t0
    finally:
        for d in devices:
            d.close()
    return count


def plot_scatter(
    preds: dict[str, np.ndarray], measured: np.ndarray, out: Path, *, title: str
) -> None:
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
        f"{meta.get('runtime')} {meta.get('runtime_version')}, converter tensorflow "
        f"{meta.get('converter_version')}",
        f"- input size {meta.get('input_size')}, spaces {', '.join(meta.get('spaces', []))}",
        f"- {result.n} architectures measured end to end (median of interleaved rounds); "
        f"{len(result.folds)}-fold cross-validation, train/test sizes "
        f"{', '.join(f'{a}/{b}' for a, b in sizes)}; every figure below is on held-out "
        "architectures",
        f"- measured latency: {result.noise.get('target')} over {result.noise.get('rounds')} "
        f"interleaved rounds; {result._noise_text()} (the noise floor of any predictor)",
        "",
        "| method | R² | MAPE | max error | within ±10% | Kendall τ | mean bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        r = result.metrics[m]
        lines.append(
            f"| {METHOD_LABELS[m]} | {r['r2']:.4f} | {100 * r['mape']:.2f}% | "
            f"{100 * r['max_err']:.1f}% ({r['max_err_ms']:.2f} ms) | {100 * r['within10']:.1f}% "
            f"| {r['kendall_tau']:.3f} | {100 * r['bias']:+.2f}% |"
        )
    cal = result.calibration
    lines += [
        "",
        f"Stored calibration (fitted on all {result.n}, features per {cal.feature_set}, "
        f"{cal.stats.get('weighting')} errors; chosen by inner cross-validation): "
        f"overhead {cal.intercept_ms:.3f} ms; "
        + ", ".join(f"{k} ×{v:.3f}" for k, v in sorted(cal.scales.items())),
        "",
        f"![predicted vs measured]({result.plot_path.name})",
        "",
        "Per-architecture numbers: `architectures.csv`; metrics: `metrics.json`.",
    ]
    result.report_path.write_text("\n".join(lines) + "\n")
