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
the load (that is what the table's statistic is built to ignore); ``--clock cpu`` times
the same way on this thread's CPU time instead.

    .venv/bin/python benchmarks/reference_timer_agreement.py --lut luts/host.sqlite [--archs 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

WARMUP = 5
INVOKES = 20


def simple_timer(paths: list[Path], reps: int, clock: str = "wall") -> list[float]:
    """min over reps of the median of INVOKES invocations, per model; ``clock`` "cpu"
    times this thread's CPU time instead of wall time (for a machine that is not quiet)."""
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
            now = time.perf_counter if clock == "wall" else time.thread_time
            times = []
            for _ in range(INVOKES):
                t0 = now()
                it.invoke()
                times.append((now() - t0) * 1e3)
            best[i] = min(best[i], statistics.median(times))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", type=Path, required=True, help="a built, validated table")
    parser.add_argument("--archs", type=int, default=12, help="architectures to time")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the timer")
    parser.add_argument("--seed", type=int, default=8128, help="sampling seed (not validate's)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="the simple timer's clock"
    )
    args = parser.parse_args()

    import numpy as np
    from scipy.stats import kendalltau

    from mnasfpn.lut.build import default_cache_dir
    from mnasfpn.lut.store import TableStore
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.lut.validate import arch_id, export_models, sample_architectures
    from mnasfpn.model.convert import converter_id

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
    predicted = table.predict(archs)
    # validate's detector cache: a rerun exports nothing.
    cache = default_cache_dir() / "detectors" / converter_id()
    paths = [cache / f"{arch_id(g, size)}-{size}.tflite" for g in archs]
    export_s = export_models(list(zip(archs, paths, strict=True)), table.config, 2)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    measured = np.array(simple_timer(paths, args.reps, args.clock))
    time_s = time.perf_counter() - t0
    ratio = predicted / measured
    meta = table.meta
    print(
        f"# {args.lut}: statistic {meta.get('statistic', 'median (before issue 8)')}, "
        f"{len(archs)} architectures not in its validation (seed {args.seed}); simple timer "
        f"on {args.clock} time; export "
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
