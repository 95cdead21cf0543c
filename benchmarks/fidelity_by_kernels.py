"""Held-out fidelity of host tables under each deployment kernel setting, and why
isolated entries stop adding up under XNNPACK.

    python benchmarks/fidelity_by_kernels.py [--out-dir DIR] [--space mnasfpn]
        [--profiles host,host-xnnpack,host-xnnpack-2t] [--samples 40] [--rounds 3]
        [--input-size 320] [--json FILE] [--no-cold-probe] [--refit-only]

For each profile (builtin kernels; XNNPACK at 1 thread; XNNPACK at 2 threads) it builds
the table and validates it exactly as `mnasfpn-lut build` / `validate` do (everything is
kept in --out-dir: a second run resumes and measures nothing already measured), then
prints:

1. one fidelity table: held-out R², MAPE, max error, ±5/±10%, Kendall τ of the
   calibrated table and the baselines (raw sum, naive sum, MAdds-linear), with the
   noise floor (round-to-round spread, R² ceiling) and the load seen while timing;
2. per op type, where isolated entries and whole models disagree: each type's share of
   the raw sum and its fitted scale without and with the cold-weight term;
3. the candidate explanations of the raw sum's miss, over the validated architectures:
   how the residual of a per-type fit correlates with the live ops' weight MiB, their
   count, the XNNPACK delegate partitions LiteRT made of each detector and the ops
   XNNPACK does not take, and the cross-validated MAPE with and without the weight term;
4. (1-thread profiles, unless --no-cold-probe) a few ops timed with warm caches, as the
   table times them, and right after evicting the caches, as inside a model.

Multi-thread figures are wall-clock: run it on a quiet machine (the load is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.devices import load_profile
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import TFLITE_OP, op_type_of
from mnasfpn.lut.build import build_table
from mnasfpn.lut.calibration import Calibration, feature_columns, fit_calibration
from mnasfpn.lut.fidelity import METHOD_LABELS, METHODS
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.lut.validate import measured_architectures, validate
from mnasfpn.model.convert import DEFAULT_CONVERTER, converter_id
from mnasfpn.tflite.writer import micromodel_tflite

PROFILES = ("host", "host-xnnpack", "host-xnnpack-2t")


def _interpreter(model: bytes | Path, xnnpack: bool, threads: int = 1) -> Any:
    from ai_edge_litert import interpreter as lite

    resolver = (
        lite.OpResolverType.AUTO
        if xnnpack
        else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    src = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interp = lite.Interpreter(**src, num_threads=threads, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def _delegate_nodes(interp: Any) -> int:
    # After the delegate is applied LiteRT lists one DELEGATE node per partition.
    return sum(1 for op in interp._get_ops_details() if op["op_name"] == "DELEGATE")


def keys_xnnpack_skips(keys: list[str]) -> set[str]:
    """The op keys whose single-op model XNNPACK leaves to builtin kernels (no delegate
    partition): a whole op type (resize_nearest) or only some shapes of one (a max-pool
    whose stride exceeds its window)."""
    return {k for k in keys if not _delegate_nodes(_interpreter(micromodel_tflite(k), True))}


# -- build + validate -------------------------------------------------------------------


def build_and_validate(
    profile: str, args: argparse.Namespace, config: DetectorConfig
) -> dict[str, Any]:
    out = args.out_dir / f"{profile}.sqlite"
    cache = args.out_dir / "cache"
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    interrupted = False
    if not args.refit_only:
        report = build_table(
            out,
            [args.space],
            DeviceOptions(profile),
            config=config,
            cache_dir=cache / "micromodels",
            echo=lambda s: print(f"  [{profile}] {s}"),
            show_progress=False,
        )
        interrupted = bool(getattr(report, "interrupted", False))
    build_s = None if args.refit_only else time.perf_counter() - t0
    t1 = time.perf_counter()
    result = validate(
        out,
        samples=args.samples,
        seed=args.seed,
        report_dir=args.out_dir / f"{profile}-report",
        rounds=args.rounds,
        cache_dir=cache,
        echo=lambda s: print(f"  [{profile}] {s}"),
        show_progress=False,
    )
    validate_s = time.perf_counter() - t1
    with TableStore.open(out, readonly=True) as store:
        load = store.meta().get("timing_load") or {}
        n_ops = store.count_ops()
    return {
        "profile": profile,
        "table": str(out),
        "ops": n_ops,
        "build_s": build_s,
        "build_interrupted": interrupted,
        "validate_s": validate_s,
        "metrics": result.metrics,
        "noise": result.noise,
        "calibration": result.calibration.to_dict(),
        "loadavg": [load0[0], os.getloadavg()[0]],
        "timing_load": load,
    }


# -- analysis of the miss ---------------------------------------------------------------


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def explain_miss(lut: Path, cache: Path, skipped: set[str], xnnpack: bool) -> dict[str, Any]:
    table = LatencyTable.open(lut)
    genotypes, ids, y = measured_architectures(lut)
    x = table.features(genotypes)
    s = table.structure(genotypes)
    raw = x.sum(axis=1)
    cols = feature_columns()
    types = sorted({t for t, _ in cols})
    plain = fit_calibration(x, y, "type")
    cold = fit_calibration(x, y, "type", structure=s)
    share = {
        t: float(sum(x[:, j].mean() for j, (tt, _) in enumerate(cols) if tt == t) / raw.mean())
        for t in types
    }
    op_rows = []
    for t in types:
        if share[t] == 0:
            continue
        op_rows.append(
            {
                "type": t,
                "share_of_raw_sum": share[t],
                "scale_type_fit": plain.scales.get(t, 1.0),
                "scale_with_weight_term": cold.scales.get(t, 1.0),
            }
        )
    # Candidates for what the per-type fit leaves over.
    graphs = [build_opgraph(g, table.config) for g in genotypes]
    live = [gr.live_ops() for gr in graphs]
    n_ops = np.array([len(ops) for ops in live], dtype=float)
    not_taken = np.array([sum(1 for op in ops if op.key in skipped) for ops in live], dtype=float)
    candidates: dict[str, np.ndarray] = {
        "weight MiB (live ops)": s[:, 0],
        "live op count": n_ops,
        "ops XNNPACK does not take": not_taken,
    }
    if xnnpack:
        folder = cache / "detectors" / converter_id(DEFAULT_CONVERTER)
        parts = []
        for a in ids:
            path = folder / f"{a}-{table.input_size}.tflite"
            parts.append(_delegate_nodes(_interpreter(path, True)) if path.exists() else np.nan)
        candidates["XNNPACK delegate partitions"] = np.array(parts, dtype=float)
    resid = (y - (plain.intercept_ms + x @ np.asarray(plain.column_scales()))) / y
    correlations = {
        name: _pearson(resid[~np.isnan(v)], v[~np.isnan(v)]) for name, v in candidates.items()
    }
    cv = (table.calibration.stats.get("fit_choice_cv_mape") or {}) if table.calibration else {}
    best_plain = min((v for k, v in cv.items() if "+" not in k), default=None)
    best_cold = min((v for k, v in cv.items() if "+" in k), default=None)
    return {
        "n": len(y),
        "raw_sum_bias": float(np.mean((raw - y) / y)),
        "per_type": op_rows,
        "weight_term_ms_per_mib": cold.structure.get("weight_mib", 0.0),
        "residual_correlation": correlations,
        "cv_mape_without_weight_term": best_plain,
        "cv_mape_with_weight_term": best_cold,
        "candidate_ranges": {
            k: [float(np.nanmin(v)), float(np.nanmax(v))] for k, v in candidates.items()
        },
    }


# -- warm vs cold caches ----------------------------------------------------------------


def cold_cache_probe(keys: list[str], xnnpack: bool, reps: int = 15) -> list[dict[str, Any]]:
    """Each op timed (p10 of the calling thread's CPU time) with warm caches, as a table
    entry is, and right after copying 64 MiB (evicting its weights and inputs), as
    inside a whole model where the ops before it used the caches."""
    from mnasfpn.tflite.writer import micromodel_op

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    big = np.ones(16 << 20, dtype=np.float32)
    dst = np.empty_like(big)
    rows = []
    for key in keys:
        interp = _interpreter(micromodel_tflite(key), xnnpack)
        for d in interp.get_input_details():
            interp.set_tensor(
                d["index"], np.random.default_rng(0).random(d["shape"], dtype=np.float32)
            )
        for _ in range(5):
            interp.invoke()
        hot, cold = [], []
        for _ in range(reps):
            c = time.thread_time_ns()
            interp.invoke()
            hot.append(time.thread_time_ns() - c)
            np.copyto(dst, big)
            c = time.thread_time_ns()
            interp.invoke()
            cold.append(time.thread_time_ns() - c)
        op = micromodel_op(key)
        rows.append(
            {
                "key": key,
                "weight_kib": op.deployed_params * 4 / 1024,
                "warm_ms": float(np.percentile(hot, 10) / 1e6),
                "cold_ms": float(np.percentile(cold, 10) / 1e6),
            }
        )
    return rows


def probe_keys(lut: Path, n: int = 6) -> list[str]:
    """Convolutions spread over weight size, and two depthwise ones."""
    from mnasfpn.tflite.writer import micromodel_op

    with TableStore.open(lut, readonly=True) as store:
        keys = sorted(store.op_latencies())
    convs = sorted(
        (k for k in keys if op_type_of(k) == "conv2d"),
        key=lambda k: micromodel_op(k).deployed_params,
    )
    dws = sorted(
        (k for k in keys if op_type_of(k) == "dwconv2d"),
        key=lambda k: micromodel_op(k).deployed_params,
    )
    pick = [convs[int(i)] for i in np.linspace(0, len(convs) - 1, n)] if convs else []
    pick += [dws[int(i)] for i in np.linspace(0, len(dws) - 1, 2)] if dws else []
    return list(dict.fromkeys(pick))


# -- printing ---------------------------------------------------------------------------


def _load_text(run: dict[str, Any]) -> str:
    parts = [f"loadavg {run['loadavg'][0]:.1f}→{run['loadavg'][1]:.1f}"]
    for what, seen in sorted((run.get("timing_load") or {}).items()):
        for dev in seen.get("devices", []):
            c = dev.get("contention") or {}
            if c.get("cpu_pressure") is not None:
                flag = "contended" if c.get("contended") else "uncontended"
                parts.append(f"{what}: CPU pressure {100 * c['cpu_pressure']:.0f}% ({flag})")
    return "; ".join(parts)


def print_fidelity(runs: list[dict[str, Any]]) -> None:
    print("\n1. Held-out fidelity (5-fold CV), same metrics and baselines as validate")
    print(
        f"{'profile':<16} {'method':<38} {'R2':>7} {'MAPE':>7} {'max':>7} "
        f"{'±5%':>6} {'±10%':>6} {'tau':>6}"
    )
    for run in runs:
        for m in METHODS:
            r = run["metrics"][m]
            print(
                f"{run['profile']:<16} {METHOD_LABELS[m]:<38} {r['r2']:7.4f} "
                f"{100 * r['mape']:6.2f}% {100 * r['max_err']:6.1f}% {100 * r['within5']:5.1f}% "
                f"{100 * r['within10']:5.1f}% {r['kendall_tau']:6.3f}"
            )
        n = run["noise"]
        lo, hi = n["latency_range_ms"]
        spread = n.get("round_spread_median")
        ceiling = n.get("r2_ceiling")
        cal = run["calibration"]
        print(
            f"{'':<16} range {lo:.1f}–{hi:.1f} ms; noise floor: "
            f"round spread median {100 * (spread or 0):.1f}%"
            + (f", R² ceiling {ceiling:.4f}" if ceiling is not None else "")
            + f"; calibration {cal['feature_set']}"
            + f"\n{'':<16} stored calibration: {Calibration.from_dict(cal).terms_text()}"
        )
        print(
            f"{'':<16} build {run['ops']} ops "
            + ("(not rerun), " if run["build_s"] is None else f"{run['build_s']:.0f} s, ")
            + f"validate {run['validate_s']:.0f} s; "
            + _load_text(run)
        )


def print_explanations(runs: list[dict[str, Any]]) -> None:
    print("\n2. Per op type: share of the raw sum and fitted scale (type fit; with weight term)")
    types = sorted({r["type"] for run in runs for r in run["explain"]["per_type"]})
    print(f"{'op type':<16}" + "".join(f" {run['profile']:>28}" for run in runs))
    for t in types:
        cells = []
        for run in runs:
            row = next((r for r in run["explain"]["per_type"] if r["type"] == t), None)
            cells.append(
                f"{100 * row['share_of_raw_sum']:5.1f}% ×{row['scale_type_fit']:.2f} "
                f"×{row['scale_with_weight_term']:.2f}"
                if row
                else "-"
            )
        print(f"{t:<16}" + "".join(f" {c:>28}" for c in cells))
    print("\n3. What the raw sum misses, and what explains the rest of a per-type fit")
    for run in runs:
        e = run["explain"]
        print(
            f"{run['profile']}: raw sum bias {100 * e['raw_sum_bias']:+.1f}% over {e['n']} "
            f"architectures; weight term {e['weight_term_ms_per_mib']:.3f} ms/MiB; CV MAPE "
            f"without/with it {100 * (e['cv_mape_without_weight_term'] or 0):.2f}% / "
            f"{100 * (e['cv_mape_with_weight_term'] or 0):.2f}%"
        )
        for name, r in e["residual_correlation"].items():
            lo, hi = e["candidate_ranges"][name]
            print(f"    residual vs {name:<52} r = {r:+.2f}  (range {lo:g}–{hi:g})")


def print_cold(probes: dict[str, list[dict[str, Any]]]) -> None:
    print("\n4. Warm (as a table entry) vs cold caches (as inside a model), p10 CPU time")
    for profile, rows in probes.items():
        for r in rows:
            print(
                f"{profile:<16} {r['key']:<52} {r['weight_kib']:8.0f} KiB  warm "
                f"{r['warm_ms']:.3f}  cold {r['cold_ms']:.3f}  "
                f"+{r['cold_ms'] - r['warm_ms']:.3f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path("fidelity-by-kernels"))
    ap.add_argument("--space", default="mnasfpn")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-cold-probe", action="store_true")
    ap.add_argument(
        "--refit-only",
        action="store_true",
        help="skip the builds; validate measures only what its tables lack (nothing, after "
        "a complete run) and refits: the analysis again with this checkout's calibration",
    )
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    config = DetectorConfig(input_size=args.input_size)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    runs = []
    for name in profiles:
        print(
            f"{name}: build + validate ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f})"
        )
        runs.append(build_and_validate(name, args, config))
    keys = sorted(LatencyTable.open(Path(runs[0]["table"])).latencies)
    skipped = keys_xnnpack_skips(keys)
    skipped_by_type = dict(sorted(Counter(op_type_of(k) for k in skipped).items()))
    total_by_type = Counter(op_type_of(k) for k in keys)
    probes: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        prof = load_profile(run["profile"])
        run["explain"] = explain_miss(
            Path(run["table"]), args.out_dir / "cache", skipped, prof.use_xnnpack
        )
        if not args.no_cold_probe and prof.threads == 1:
            probes[run["profile"]] = cold_cache_probe(
                probe_keys(Path(run["table"])), prof.use_xnnpack
            )
    print_fidelity(runs)
    print_explanations(runs)
    print(
        "\nop keys XNNPACK leaves to builtin kernels here: "
        + (", ".join(f"{t} {n}/{total_by_type[t]}" for t, n in skipped_by_type.items()) or "none")
    )
    if probes:
        print_cold(probes)
    doc = {
        "runs": runs,
        "xnnpack_skips": sorted(skipped),
        "xnnpack_skips_by_type": {TFLITE_OP[t]: n for t, n in skipped_by_type.items()},
        "cold_probe": probes,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
