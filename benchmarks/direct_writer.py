"""The direct .tflite writer against the TensorFlow converter: write time and latency.

    python benchmarks/direct_writer.py [--genotypes 4] [--input-size 320] [--rounds 5]
                                       [--micro 40] [--no-space-build]

1. Write time per whole detector (seeded `mnasfpn` genotypes and paper-mnasfpn) and per
   micro-model (sampled keys of the `mnasfpn` space), direct vs converter, both in this
   process (TensorFlow's import time is reported on its own line).
2. Latency on the host device of the direct and converter models of the same genotypes,
   timed in interleaved rounds (each round times every model once, in a new order); the
   noise floor is the same model's round-to-round spread, (max - min) / median.
3. Making every micro-model of the `mnasfpn` space from an empty cache, as
   `mnasfpn-lut build` does: the converter in its worker processes (--jobs) vs direct.

Needs the train extra (TensorFlow) for the converter side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.build import required_keys
from mnasfpn.model.convert import detector_tflite
from mnasfpn.profiler.micromodel import micromodel_paths
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import sample_genotypes
from mnasfpn.tflite.reader import read_tflite
from mnasfpn.tflite.writer import micromodel_tflite


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _ms(xs: list[float]) -> str:
    return f"{1000 * statistics.median(xs):9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genotypes", type=int, default=4, help="sampled mnasfpn genotypes")
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--micro", type=int, default=40, help="sampled micro-model keys")
    ap.add_argument("--jobs", type=int, default=2, help="converter processes (space build)")
    ap.add_argument("--no-space-build", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="host profile override for the latency part, e.g. num_runs=10 (repeatable)",
    )
    args = ap.parse_args()

    from mnasfpn.tfenv import load_tensorflow

    _, tf_import_s = _timed(load_tensorflow)
    from mnasfpn.model.export import convert_keras
    from mnasfpn.model.keras_builder import build_micromodel

    config = DetectorConfig(input_size=args.input_size)
    genotypes = [get_architecture("paper-mnasfpn")]
    genotypes += sample_genotypes("mnasfpn", args.genotypes, seed=2026)
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)

    # 1. write time, and the equivalence of what was written
    print(f"write time at {args.input_size}x{args.input_size} (this process; machine shared)")
    print(f"  TensorFlow import: {tf_import_s:.2f} s (converter side only)")
    print(f"  {'model':<26} {'ops':>5} {'direct ms':>10} {'converter ms':>13} {'same ops':>9}")
    files: list[tuple[str, Path, Path]] = []
    direct_all, tf_all = [], []
    for i, g in enumerate(genotypes):
        graph = build_opgraph(g, config)
        name = g.name or f"mnasfpn-sample{i}"
        direct_s = [_timed(detector_tflite, graph, "direct")[1] for _ in range(3)]
        data_direct = detector_tflite(graph, "direct")
        data_tf, tf_s = _timed(detector_tflite, graph, "tf")
        same = read_tflite(data_direct).dataflow() == read_tflite(data_tf).dataflow()
        d, t = root / f"{i}-direct.tflite", root / f"{i}-tf.tflite"
        d.write_bytes(data_direct)
        t.write_bytes(data_tf)
        files.append((name, d, t))
        direct_all.append(statistics.median(direct_s))
        tf_all.append(tf_s)
        ops = len(graph.live_ops())
        print(f"  {name:<26} {ops:>5} {_ms(direct_s):>10} {1000 * tf_s:>13.1f} {same!s:>9}")
    print(
        f"  per detector (median): direct {1000 * statistics.median(direct_all):.0f} ms, "
        f"converter {statistics.median(tf_all):.2f} s "
        f"({statistics.median(tf_all) / statistics.median(direct_all):.0f}x)"
    )

    keys = required_keys(["mnasfpn"], DetectorConfig(input_size=args.input_size))
    sample = random.Random(0).sample(keys, min(args.micro, len(keys)))
    d_s = [_timed(micromodel_tflite, k)[1] for k in sample]
    t_s = [_timed(lambda k: convert_keras(build_micromodel(k)), k)[1] for k in sample]
    print(
        f"  per micro-model ({len(sample)} sampled keys, median): direct "
        f"{1000 * statistics.median(d_s):.2f} ms, converter {1000 * statistics.median(t_s):.0f} ms"
    )

    # 2. latency of the same genotypes, direct vs converter
    from mnasfpn.devices import load_profile, open_device

    paths = [p for _, d, t in files for p in (d, t)]
    runs: dict[Path, list[float]] = {p: [] for p in paths}
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = type(getattr(load_profile("host"), field))(value)
    with open_device("host", overrides=overrides) as dev:
        p = dev.profile
        print(
            f"\nhost latency, {args.rounds} interleaved rounds (profile host: "
            f"{p.threads} thread, xnnpack={p.use_xnnpack}, {p.num_runs} runs x "
            f"{p.min_repeats}..{p.max_repeats} repeats); ms = median over rounds"
        )
        for r in range(args.rounds):
            order = paths[:]
            random.Random(r).shuffle(order)
            for path, res in zip(order, dev.time_models(order), strict=True):
                if not res.ok or res.median_ms is None:
                    raise SystemExit(f"{path}: {res.error}")
                runs[path].append(res.median_ms)

    def spread(v: list[float]) -> float:
        return (max(v) - min(v)) / statistics.median(v)

    print(f"  {'model':<26} {'converter':>10} {'direct':>9} {'diff':>8} {'noise floor':>12}")
    diffs, floors = [], []
    for name, d, t in files:
        md, mt = statistics.median(runs[d]), statistics.median(runs[t])
        floor = max(spread(runs[d]), spread(runs[t]))
        diffs.append((md - mt) / mt)
        floors.append(floor)
        diff, fl = 100 * diffs[-1], 100 * floor
        print(f"  {name:<26} {mt:>10.2f} {md:>9.2f} {diff:>+7.1f}% {fl:>11.1f}%")
    within = sum(abs(x) <= f for x, f in zip(diffs, floors, strict=True))
    print(
        f"  mean |diff| {100 * statistics.mean(abs(x) for x in diffs):.1f}%, mean noise floor "
        f"{100 * statistics.mean(floors):.1f}%; {within}/{len(diffs)} within their floor"
    )

    # 3. every micro-model of the space, from an empty cache
    if not args.no_space_build:
        print(f"\nall {len(keys)} micro-models of the mnasfpn space, empty cache:")
        _, direct_s = _timed(micromodel_paths, keys, root / "direct", converter="direct")
        _, tf_s = _timed(micromodel_paths, keys, root / "tf", jobs=args.jobs, converter="tf")
        print(f"  converter ({args.jobs} processes): {tf_s:8.1f} s")
        print(f"  direct (this process):      {direct_s:8.1f} s  ({tf_s / direct_s:.0f}x)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
