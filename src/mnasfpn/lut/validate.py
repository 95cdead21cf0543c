"""`mnasfpn-lut validate`: the table against end-to-end measurements.

1. Sample many genotypes of the table's spaces, predict their raw sums and pick `samples`
   of them stratified by quantile of predicted latency (plus the named paper cells).
2. Write each whole detector (the direct writer; the TensorFlow converter in `jobs`
   processes with `converter="tf"`), all before any timing,
   and time them on the table's device in `rounds` interleaved rounds; every round of
   every architecture is stored in the table, so a second validate measures nothing new.
3. Fit the calibration (overhead + per-op-type scales bounded to [0.5, 2], optional
   structure terms: lut/calibration.py, scipy's bounded least squares) and report k-fold
   held-out fidelity for it and for the baselines: raw table sum, naive sum over all
   blocks (dead ones included), naive sum calibrated, MAdds-linear (lut/fidelity.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mnasfpn.atomic import write_atomic
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.build import (
    default_cache_dir,
    identity_of,
    record_load,
    record_pace,
    seed_pace,
)
from mnasfpn.lut.fidelity import (
    DEFAULT_TARGET,
    METHODS,
    choose_fit,
    cross_validate,
    end_to_end_latency,
    fit_choice,
    metrics,
    round_spread,
    round_values,
)
from mnasfpn.lut.noise import pace_noise, r2_ceiling, relative_noise
from mnasfpn.lut.store import DEVICE_FIELDS, SETTINGS_FIELDS, TableError, TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.lut.validate_report import ValidationResult, plot_scatter, write_report
from mnasfpn.model.convert import CONVERTERS, DEFAULT_CONVERTER, converter_id, detector_tflite
from mnasfpn.parallel import spawn_map
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture
from mnasfpn.searchspace.spaces import get_space

SAMPLE_REPEATS = (3, 4, 5)
# Interleaved rounds per architecture. Two held the fidelity of three (benchmarks/
# adaptive_runs.py, 43 architectures on a 2-core machine at load 6-8: held-out R² 0.996 and
# 0.999, MAPE 1.0% and 0.55%, all within ±5%, τ 0.978 from the first two of three rounds of
# a fixed-count and an adaptive table) at two thirds of the timing.
DEFAULT_ROUNDS = 2
# ... but a multi-thread table is timed on the wall clock, where a detector's rounds were
# 7-22% apart even alone on the VM: there the third round took the 2-thread XNNPACK table's
# held-out MAPE from 4.6% to 3.6% (R² 0.994 → 0.997; its build's passes mattered less:
# benchmarks/build_passes.py, which scores the first k passes and r rounds of one table).
MULTI_THREAD_ROUNDS = 3
POOL_PER_SAMPLE = 50
# End-to-end models run long: fewer invocations per round, more rounds across the batch.
# Adaptive: the fit takes each model's fastest of `rounds` interleaved rounds and its
# noise floor is their spread (~1-4%), so a round needs its p10 to ±1% at 80% only: 22
# invocations give that interval (36 would be needed at 95%); a 180 ms detector's
# warm-up is its first invocation or two. At most 4 s a round: a model that needs more is
# in a slow phase, which the other round outvotes (8 s let such rounds take a tenth of a
# quiet validate's timing).
E2E_OVERRIDES: dict[str, Any] = {
    "warmup_runs": 3,
    "warmup_s": 0.1,
    "num_runs": 10,
    "min_repeats": 2,
    "max_repeats": 6,
    "confidence": 0.8,
    "min_runs": 22,
    "max_runs": 200,
    "max_time_s": 4.0,
}


def default_rounds(meta: dict[str, Any]) -> int:
    """Validate's rounds for a table with this meta (its profile's thread count)."""
    return MULTI_THREAD_ROUNDS if int(meta.get("threads") or 1) > 1 else DEFAULT_ROUNDS


def fit_inputs(
    table: LatencyTable, genotypes: Sequence[Genotype]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the fit and its baselines see of `genotypes`: table features, naive-table
    features, MAdds (millions), structure and naive structure (`cross_validate` takes
    them in this order, the end-to-end targets and seed after the MAdds)."""
    madds = np.array([build_opgraph(g, table.config).madds() / 1e6 for g in genotypes])
    return (
        table.features(genotypes),
        table.features(genotypes, naive=True),
        madds,
        table.structure(genotypes),
        table.structure(genotypes, naive=True),
    )


def measured_architectures(
    lut_path: Path, target: str = DEFAULT_TARGET
) -> tuple[list[Genotype], list[str], np.ndarray]:
    """The architectures a table's validation timed end to end: their genotypes, ids and
    end-to-end figures (`target` over their rounds), in the order they were recorded."""
    with TableStore.open(lut_path, readonly=True) as store:
        archs, runs = store.e2e_archs(), store.e2e_runs()
    ids = [a for a in archs if runs.get(a)]
    genotypes = [genotype_from_dict(archs[a]["genotype"]) for a in ids]
    return genotypes, ids, np.array([end_to_end_latency(runs[a], target) for a in ids])


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
    raw = table.predict(pool, calibrated=False)
    order = np.argsort(raw, kind="stable")
    picked: list[Genotype] = []
    edges = np.linspace(0, len(order), samples + 1).astype(int)
    for lo, hi in pairwise(edges.tolist()):
        if hi > lo:
            picked.append(pool[int(order[rng.randrange(lo, hi)])])
    for name in ARCHITECTURES:
        g = get_architecture(name)
        try:
            table.predict([g], calibrated=False)
        except TableError:
            continue
        picked.append(g)
    return picked


def _export_one(
    doc: dict[str, Any], config: dict[str, Any], out: str, converter: str = DEFAULT_CONVERTER
) -> tuple[str, float]:
    t0 = time.perf_counter()
    graph = build_opgraph(genotype_from_dict(doc), DetectorConfig(**config))
    write_atomic(out, detector_tflite(graph, converter))
    return out, time.perf_counter() - t0


def export_models(
    jobs_list: list[tuple[Genotype, Path]],
    config: DetectorConfig,
    jobs: int,
    progress: Callable[[int], None] | None = None,
    converter: str = DEFAULT_CONVERTER,
) -> float:
    """Export the detectors (in `jobs` spawned processes); returns the wall time."""
    t0 = time.perf_counter()
    todo = [(g, p) for g, p in jobs_list if not p.exists()]
    if not todo:
        return 0.0
    tasks = [(g.to_dict(), config.to_dict(), str(p), converter) for g, p in todo]
    # The direct writer takes well under a second a detector: no worker processes.
    for _ in spawn_map(_export_one, tasks, 1 if CONVERTERS.get(converter).in_process else jobs):
        if progress:
            progress(1)
    return time.perf_counter() - t0


# -- the command -----------------------------------------------------------------------


def validate(
    lut_path: Path,
    *,
    samples: int = 40,
    seed: int = 0,
    report_dir: Path,
    jobs: int = 2,
    rounds: int | None = None,
    target: str = DEFAULT_TARGET,
    spaces: list[str] | None = None,
    device: DeviceOptions | None = None,
    cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    converter: str = DEFAULT_CONVERTER,
) -> ValidationResult:
    """Time sampled architectures end to end on `device` (its profile by default the
    table's), fit the calibration and write the report."""
    device = device or DeviceOptions()
    if len(device.serials) > 1:
        # One calibration fitted over several phones would fold their unit-to-unit
        # differences into the noise; end-to-end runs are timed on one phone.
        raise TableError(
            f"validate times end-to-end runs on one phone, not {len(device.serials)}: "
            "give one --serial"
        )
    table = LatencyTable.open(lut_path)
    meta = table.meta
    # End-to-end runs time whole detectors: fewer invocations, the user's --set on top.
    device = device.replace(
        name=device.name or str(meta.get("profile")),
        overrides={**E2E_OVERRIDES, **device.overrides},
    )
    device.profile()  # a bad --set fails now, not after the exports
    rounds = rounds or default_rounds(meta)
    config = table.config
    spaces = spaces or table.spaces
    if not spaces:
        raise TableError(f"{lut_path} lists no spaces; rebuild it with mnasfpn-lut build")
    genotypes = sample_architectures(table, spaces, samples, seed)
    ids = [arch_id(g, config.input_size) for g in genotypes]
    # Before any device work: a missing converter says so. Each converter its own cache.
    cache = (cache_dir or default_cache_dir()) / "detectors" / converter_id(converter)
    paths = {a: cache / f"{a}-{config.input_size}.tflite" for a in ids}
    timings: dict[str, float] = {}
    measured_new = 0
    with TableStore.open(lut_path) as store:
        for g, a in zip(genotypes, ids, strict=True):
            graph = build_opgraph(g, config)
            store.add_e2e_arch(
                a,
                name=g.name,
                genotype=g.to_json(indent=None),
                input_size=config.input_size,
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
                    [(by_id[a], paths[a]) for a in need], config, jobs, bar.update, converter
                )
            measured_new = _time_e2e(
                store,
                need,
                todo,
                paths,
                meta,
                rounds,
                seed,
                device,
                config,
                timings,
                show_progress,
                tqdm,
                echo,
            )
        runs = store.e2e_runs()
    keep = [i for i, a in enumerate(ids) if runs.get(a)]
    if len(keep) < 4:
        raise TableError(f"only {len(keep)} architectures have end-to-end runs; need at least 4")
    genotypes = [genotypes[i] for i in keep]
    ids = [ids[i] for i in keep]
    y = np.array([end_to_end_latency(runs[a], target) for a in ids])
    spread = np.array([round_spread(runs[a]) for a in ids if len(runs[a]) > 1])
    per_round = [round_values(runs[a]) for a in ids]
    x, x_naive, madds, s, s_naive = fit_inputs(table, genotypes)
    preds, folds = cross_validate(x, x_naive, madds, y, seed, s, s_naive)
    results = {m: metrics(preds[m], y) for m in METHODS}
    choice, scores = choose_fit(x, y, seed, s)
    cal = fit_choice(x, y, s, choice)
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
        "statistic": meta.get("statistic"),
        # What noise alone allows: a perfect predictor's R² against these targets.
        "r2_ceiling": r2_ceiling(y, per_round),
        "relative_noise": relative_noise(per_round),
        "round_spread_median": float(np.median(spread)) if len(spread) else None,
        "round_spread_p90": float(np.quantile(spread, 0.9)) if len(spread) else None,
        **pace_noise([runs[a] for a in ids], _pace_meta(lut_path)),
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


def _pace_meta(lut_path: Path) -> dict[str, Any] | None:
    """The table's pace record as it stands after this validation's timings."""
    with TableStore.open(lut_path, readonly=True) as store:
        return store.meta().get("pace")


def _time_e2e(
    store: TableStore,
    need: list[str],
    todo: dict[str, list[int]],
    paths: dict[str, Path],
    meta: dict[str, Any],
    rounds: int,
    seed: int,
    device: DeviceOptions,
    config: DetectorConfig,
    timings: dict[str, float],
    show_progress: bool,
    tqdm: Any,
    echo: Callable[[str], None] = print,
) -> int:
    devices = device.open_all()
    count = 0
    remeasured = slow_kept = 0
    try:
        dev = devices[0]
        info = dev.info().to_dict()
        # Both sides of the fit must hold the same statistic: the table's entries and
        # these end-to-end runs.
        store.check_identity(
            identity_of(info, dev.profile, config, statistic=dev.timing_statistic),
            fields=(*DEVICE_FIELDS, *SETTINGS_FIELDS, "statistic"),
            advice="validate it on the device and with the profile settings it was built with "
            "(check --device overrides given with --set); a table built before its statistic "
            "was recorded must be rebuilt",
        )
        seed_pace(store, devices)
        session = store.start_session("validate", info, note=f"{len(need)} architectures")
        rng = random.Random(seed)
        t0 = time.perf_counter()
        total = sum(len(todo[a]) for a in need)
        with tqdm(total=total, desc="time", unit="run", disable=not show_progress) as bar:
            for r in range(rounds):
                batch = [a for a in need if r in todo[a]]
                rng.shuffle(batch)  # interleaved: every round visits the models anew

                def on_result(i: int, n: int, res: Any, batch: list[str] = batch, r: int = r):
                    nonlocal count, remeasured, slow_kept
                    if res.ok and res.latency_ms is not None:
                        remeasured += res.remeasured
                        slow_kept += res.slow_phase
                        store.add_e2e_run(
                            batch[i],
                            r,
                            median_ms=res.latency_ms,
                            min_ms=res.min_ms,
                            std_ms=res.std_ms,
                            runs=res.runs,
                            dispersion=res.dispersion,
                            session=session,
                            pace=res.pace,
                        )
                        count += 1
                    bar.update(1)

                dev.time_models([paths[a] for a in batch], on_result)
        timings["time_s"] = time.perf_counter() - t0
        note = record_load(store, "validate", devices, remeasured, slow_kept)
        if note:
            echo(note)
        line = record_pace(store, devices)
        if line:
            echo(line)
    finally:
        for d in devices:
            d.close()
    return count
