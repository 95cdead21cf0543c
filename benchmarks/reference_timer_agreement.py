"""Does the table's *level* hold? Its predictions against a separate, simple timer.

Samples architectures of the table's spaces that its validation did not measure (another
seed; every architecture already in the table's end-to-end set is skipped), exports them,
and times each with the simplest honest timer: LiteRT in this process, one thread,
builtin kernels (the host profile's setting), this process pinned to the last core, the
median of 20 invocations after 5 warm-ups, the minimum of that over ``--reps``
repetitions (models interleaved, so a slow phase of the machine hits a different model in
each repetition). It prints each architecture's prediction, the timer's figure and their
ratio, and the level (median ratio), the share within ±5% and ±10%, and Kendall τ.

The simple timer measures wall time: run it on a quiet machine. Under load it measures
the load (that is what the table's statistic is built to ignore).

    .venv/bin/python benchmarks/reference_timer_agreement.py --lut luts/host.sqlite [--archs 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP = 5
INVOKES = 20


def _export(doc: dict[str, Any], settings: dict[str, Any], out: str) -> str:
    from mnasfpn.ir.config import DetectorConfig
    from mnasfpn.model.export import export_tflite
    from mnasfpn.searchspace.genotype import genotype_from_dict

    export_tflite(DetectorConfig(**settings).opgraph(genotype_from_dict(doc)), out)
    return out


def simple_timer(paths: list[Path], reps: int) -> list[float]:
    """min over reps of the median of INVOKES wall-clock invocations, per model."""
    import numpy as np
    from ai_edge_litert import interpreter as lite

    interps = []
    for p in paths:
        it = lite.Interpreter(
            model_path=str(p),
            num_threads=1,
            experimental_op_resolver_type=lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            it.set_tensor(d["index"], rng.random(d["shape"], dtype=np.float32))
        interps.append(it)
    best = [float("inf")] * len(paths)
    for _ in range(reps):
        for i, it in enumerate(interps):
            for _ in range(WARMUP):
                it.invoke()
            times = []
            for _ in range(INVOKES):
                t0 = time.perf_counter()
                it.invoke()
                times.append((time.perf_counter() - t0) * 1e3)
            best[i] = min(best[i], statistics.median(times))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", type=Path, required=True, help="a built, validated table")
    parser.add_argument("--archs", type=int, default=12, help="architectures to time")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the timer")
    parser.add_argument("--seed", type=int, default=8128, help="sampling seed (not validate's)")
    args = parser.parse_args()

    import numpy as np
    from scipy.stats import kendalltau

    from mnasfpn.lut.store import TableStore
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.lut.validate import arch_id, sample_architectures
    from mnasfpn.parallel import spawn_map

    if not args.lut.is_file():
        raise SystemExit(f"{args.lut} does not exist; build and validate a table first")
    table = LatencyTable.open(args.lut)
    if table.calibration is None:
        raise SystemExit(f"{args.lut} has no calibration; run mnasfpn-lut validate first")
    with TableStore.open(args.lut) as store:
        seen = set(store.e2e_archs())
    size = table.input_size
    pool = sample_architectures(table, table.spaces, args.archs * 3, args.seed)
    archs = [g for g in pool if arch_id(g, size) not in seen and not g.name][: args.archs]
    st = table.settings
    settings = {
        "input_size": st.input_size,
        "num_classes": st.num_classes,
        "alpha": st.alpha,
        "depth": st.depth,
    }
    predicted = table.predict(archs)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.tflite" for i in range(len(archs))]
        t0 = time.perf_counter()
        tasks = [(g.to_dict(), settings, str(p)) for g, p in zip(archs, paths, strict=True)]
        list(spawn_map(_export, tasks, 2))
        export_s = time.perf_counter() - t0
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        measured = np.array(simple_timer(paths, args.reps))
        time_s = time.perf_counter() - t0
    ratio = predicted / measured
    meta = table.meta
    print(
        f"# {args.lut}: statistic {meta.get('statistic', 'median (before issue 8)')}, "
        f"{len(archs)} architectures not in its validation (seed {args.seed}); export "
        f"{export_s:.0f} s, timing {time_s:.0f} s; load average at start {load:.2f}"
    )
    print(
        f"{'arch':>4} {'space':<14} {'R':>2} {'C':>3} {'pred ms':>9} {'timer ms':>9} {'ratio':>7}"
    )
    for i, g in enumerate(archs):
        print(
            f"{i:>4} {g.space:<14} {g.repeats:>2} {g.channels:>3} {predicted[i]:9.2f} "
            f"{measured[i]:9.2f} {ratio[i]:7.3f}"
        )
    rel = np.abs(ratio - 1)
    print(
        f"level (median ratio) {np.median(ratio):.3f}, range {ratio.min():.3f}-{ratio.max():.3f}; "
        f"within ±5% {100 * np.mean(rel <= 0.05):.0f}%, ±10% {100 * np.mean(rel <= 0.10):.0f}%; "
        f"Kendall τ {kendalltau(predicted, measured).statistic:.3f}"
    )


if __name__ == "__main__":
    main()
