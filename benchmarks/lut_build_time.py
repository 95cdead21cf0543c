"""Wall time of a full host table build, with its breakdown.

    python benchmarks/lut_build_time.py [--space mnasfpn] [--input-size 320] [--jobs 2]
                                        [--passes 2] [--cache-dir DIR] [--out FILE]
                                        [--converter direct|tf] [--set FIELD=VALUE ...]

By default both the micro-model cache and the table are fresh temporary folders, so the
figure includes writing every micro-model (--converter tf: the TensorFlow converter, as
before the direct writer). Prints keys, conversion and timing phases. `--set` overrides a
host profile field, e.g. `--set runs=fixed` for the run counts before adaptive ones
(`benchmarks/adaptive_runs.py` compares both policies).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from mnasfpn.devices.options import DeviceOptions
from mnasfpn.devices.profiles import parse_overrides
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import op_type_of
from mnasfpn.lut.build import DEFAULT_PASSES, build_table, required_keys
from mnasfpn.lut.store import TableStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", action="append", default=None)
    ap.add_argument("--input-size", type=int, default=320)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--passes", type=int, default=DEFAULT_PASSES)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--converter", choices=("direct", "tf"), default="direct", help="micro-model writer"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    overrides = parse_overrides(args.overrides)
    spaces = args.space or ["mnasfpn"]
    tmp = tempfile.TemporaryDirectory()
    cache = args.cache_dir or Path(tmp.name) / "cache"
    out = args.out or Path(tmp.name) / "host.sqlite"
    config = DetectorConfig(input_size=args.input_size)
    t0 = time.perf_counter()
    n_keys = len(required_keys(spaces, config))
    enum_s = time.perf_counter() - t0
    report = build_table(
        out,
        spaces,
        DeviceOptions("host", overrides=overrides),
        config=config,
        jobs=args.jobs,
        passes=args.passes,
        cache_dir=cache / "micromodels",
        echo=lambda s: None,
        show_progress=False,
        converter=args.converter,
    )
    with TableStore.open(out) as store:
        rows = store.op_rows()
    count = Counter(op_type_of(r.key) for r in rows)
    total_ms = Counter()
    for r in rows:
        total_ms[op_type_of(r.key)] += r.median_ms
    print(
        f"host build of {', '.join(spaces)} at {args.input_size}x{args.input_size}, "
        f"--converter {args.converter}, --jobs {args.jobs}, --passes {args.passes}, "
        f"cache {'reused' if args.cache_dir else 'fresh'}, overrides {overrides or 'none'}"
    )
    print(f"{'phase':<34} {'seconds':>9}")
    print(f"{f'enumerate {n_keys} keys':<34} {enum_s:>9.2f}")
    print(f"{'convert micro-models (parallel)':<34} {report.convert_s:>9.2f}")
    print(f"{f'time micro-models ({report.timings} timings)':<34} {report.time_s:>9.2f}")
    print(f"{'total build':<34} {report.total_s:>9.2f}")
    print(
        f"keys: {report.keys} ({report.measured} measured now, {report.already} already, "
        f"{len(report.failed)} failed)"
    )
    print(f"{'op type':<16} {'keys':>6} {'sum of medians (ms)':>20}")
    for t, n in sorted(count.items()):
        print(f"{t:<16} {n:>6} {total_ms[t]:>20.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
