"""Throughput of table predictions: batch `LatencyTable.predict` and one `mnasfpn-lut predict`.

    python benchmarks/lut_predict_speed.py [--lut FILE] [--n 20000] [--space mnasfpn]

Without --lut, a table with every key of the space (latencies derived from the keys) is
written to a temporary file, so the figure needs no device. Sampling genotypes is not
timed; each batch figure is the best of --repeat runs on a warm table (components are
memoized on first use; the cold first call is reported too).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.build import required_keys
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.spaces import sample_genotypes


def synthetic_table(path: Path, space: str, input_size: int) -> None:
    keys = required_keys((space,), DetectorConfig(input_size=input_size))
    with TableStore.open(path, create=True) as store:
        store.set_meta(
            {
                "device": "host",
                "profile": "host",
                "input_size": input_size,
                "num_classes": 90,
                "alpha": 1.0,
                "depth": 64,
                "spaces": [space],
            }
        )
        sid = store.start_session("build", {"note": "synthetic benchmark table"})
        for k in keys:
            v = 0.001 + int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) / 2**32
            store.add_op(k, median_ms=v, min_ms=v, std_ms=0.0, runs=1, dispersion=0.0, session=sid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", type=Path, default=None)
    ap.add_argument("--space", default="mnasfpn")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    lut = args.lut
    if lut is None:
        lut = Path(tmp.name) / "synthetic.sqlite"
        synthetic_table(lut, args.space, 320)
    t0 = time.perf_counter()
    table = LatencyTable.open(lut)
    open_s = time.perf_counter() - t0
    gs = sample_genotypes(args.space, args.n, args.seed)
    rows = []
    t0 = time.perf_counter()
    table.predict(gs)
    cold = time.perf_counter() - t0
    rows.append(("predict, first call (builds component memo)", args.n, cold))
    for label, fn in (
        ("predict (connectivity, calibrated if fitted)", lambda: table.predict(gs)),
        ("predict_naive (all blocks)", lambda: table.predict_naive(gs)),
        ("breakdown (backbone/head/predictor)", lambda: table.breakdown(gs)),
        (
            "predict, batches of 64",
            lambda: [table.predict(gs[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        (
            "predict, one genotype per call (first 2000)",
            lambda: [table.predict([g]) for g in gs[:2000]],
        ),
    ):
        n = 2000 if "one genotype" in label else args.n
        best = min(_timed(fn) for _ in range(args.repeat))
        rows.append((label, n, best))
    cmd = [
        sys.executable,
        "-c",
        "from mnasfpn.cli import lut_main; lut_main()",
        "predict",
        "--lut",
        str(lut),
        "--arch",
        "paper-mnasfpn",
    ]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    print(
        f"table: {lut} ({len(table.latencies)} ops, opened in {1000 * open_s:.1f} ms); "
        f"space {args.space}, {args.n} sampled genotypes (sampling not timed)"
    )
    print(f"{'what':<48} {'archs':>7} {'seconds':>9} {'archs/s':>11} {'us/arch':>8}")
    for label, n, sec in rows:
        print(f"{label:<48} {n:>7} {sec:>9.4f} {n / sec:>11,.0f} {1e6 * sec / n:>8.2f}")
    print(
        f"{'mnasfpn-lut predict --arch paper-mnasfpn (wall)':<48} {1:>7} {min(walls):>9.3f} "
        f"{'':>11} {'':>8}  (best of 3, process start included)"
    )
    tmp.cleanup()


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
