"""Throughput of table predictions: Genotype objects vs decision rows, batch and single.

    python benchmarks/lut_predict_speed.py [--lut FILE] [--n 20000] [--space mnasfpn]
        [--baseline GIT-REV]

Without --lut, a table with every key of the space (latencies derived from the keys) is
written to a temporary file, so the figure needs no device. Sampling genotypes is not
timed. Each figure is the best of --repeat runs on a warm table (components are memoized
on first use; the cold first call is reported too), as this process's CPU time
(time.process_time: steadier than wall when other jobs share the cores; wall is shown
too), with the load average before and after.

Two ways in: Genotype objects (`LatencyTable.predict`), and decision rows of the space
(`encode_batch`, then `LatencyTable.predict_encoded`: what the search hands the table,
its proposals being rows already). Encoding is timed on its own and together with the
prediction. "Fresh objects" predicts genotypes the predictor has never seen (new Python
objects each run).

--baseline REV also times the predictor (src/mnasfpn/lut/predictor.py) of that git
revision, loaded over this tree's other modules, on the same genotypes: the baseline,
this tree's Genotype path and its encoded path alternate run by run, so a loaded machine
slows all alike; each figure and its ratio to the baseline are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.build import required_keys
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.batch import encode_batch
from mnasfpn.searchspace.spaces import get_space, sample_genotypes


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


def baseline_model(rev: str, table: LatencyTable, folder: Path) -> object:
    """The CostModel of `rev`'s predictor module, over the same table entries."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:src/mnasfpn/lut/predictor.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "baseline_predictor.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_predictor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CostModel(table.latencies, table.config)


def compare(old: object, table: LatencyTable, space: str, gs: list, rounds: int) -> None:
    """The baseline's Genotype path, this tree's Genotype path and this tree's encoded path
    (with and without encoding) on the same genotypes, alternating run by run after a
    warm-up of each: one whole batch, batches of 64, and one genotype per call."""
    sp = get_space(space)
    codes = encode_batch(sp, gs)
    want = old.predict(gs)  # type: ignore[attr-defined]
    got = [table.predict(gs, calibrated=False), table.predict_encoded(codes, sp, calibrated=False)]
    worst = max(float(np.max(np.abs(v - want) / np.maximum(np.abs(want), 1e-12))) for v in got)
    few = 500
    ways = {
        "baseline": lambda b: old.predict(b[0]),  # type: ignore[attr-defined]
        "Genotype objects": lambda b: table.predict(b[0], calibrated=False),
        "rows": lambda b: table.predict_encoded(b[1], sp, calibrated=False),
        "encode + rows": lambda b: table.predict_encoded(
            encode_batch(sp, b[0]), sp, calibrated=False
        ),
    }
    workloads = (
        (f"one batch of {len(gs)}", len(gs), [(gs, codes)]),
        (
            "batches of 64",
            len(gs),
            [(gs[i : i + 64], codes[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        ("one genotype per call", few, [(gs[i : i + 1], codes[i : i + 1]) for i in range(few)]),
    )
    print(
        f"alternating the baseline and this tree, {rounds} rounds (best of each; CPU time; "
        "architectures/s, and the median speed-up over the baseline run by run):"
    )
    print(f"  {'workload':<22}" + "".join(f"{name:>26}" for name in ways))
    for label, n, batches in workloads:
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, fn in ways.items():
                cpu[name].append(_timed(lambda f=fn, bs=batches: [f(b) for b in bs])[1])  # type: ignore[misc]
        cells = []
        for name in ways:
            ratios = [b / t for b, t in zip(cpu["baseline"], cpu[name], strict=True)]
            cells.append(f"{n / min(cpu[name]):,.0f} ({np.median(ratios):.2f}x)")
        print(f"  {label:<22}" + "".join(f"{c:>26}" for c in cells))
    print(f"  largest relative difference from the baseline's predictions: {worst:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", type=Path, default=None)
    ap.add_argument("--space", default="mnasfpn")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
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
    sp = get_space(args.space)
    load_before = os.getloadavg()
    rows = []
    rows.append(
        ("predict, first call (builds component memo)", args.n, _timed(lambda: table.predict(gs)))
    )
    fresh = [sample_genotypes(args.space, args.n, args.seed + 1 + i) for i in range(args.repeat)]
    runs = [_timed(lambda batch=batch: table.predict(batch)) for batch in fresh]
    rows.append(("predict, fresh objects each run", args.n, _best(runs)))
    del fresh
    codes = encode_batch(sp, gs)
    few, few_codes = gs[:2000], codes[:2000]
    for label, fn in (
        ("predict (connectivity, calibrated if fitted)", lambda: table.predict(gs)),
        ("predict_naive (all blocks)", lambda: table.predict_naive(gs)),
        ("breakdown (backbone/head/predictor)", lambda: table.breakdown(gs)),
        (
            "predict, batches of 64",
            lambda: [table.predict(gs[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        ("predict, one genotype per call (first 2000)", lambda: [table.predict([g]) for g in few]),
        ("encode_batch (Genotype objects -> rows)", lambda: encode_batch(sp, gs)),
        ("predict_encoded (rows -> ms)", lambda: table.predict_encoded(codes, sp)),
        ("encode_batch + predict_encoded", lambda: table.predict_encoded(encode_batch(sp, gs), sp)),
        ("breakdown_encoded", lambda: table.breakdown_encoded(codes, sp)),
        (
            "predict_encoded, batches of 64",
            lambda: [table.predict_encoded(codes[i : i + 64], sp) for i in range(0, len(gs), 64)],
        ),
        (
            "predict_encoded, one row per call (first 2000)",
            lambda: [table.predict_encoded(few_codes[i : i + 1], sp) for i in range(len(few))],
        ),
    ):
        n = len(few) if "first 2000" in label else args.n
        runs = [_timed(fn) for _ in range(args.repeat)]
        rows.append((label, n, _best(runs)))
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
    load_after = os.getloadavg()
    print(
        f"table: {lut} ({len(table.latencies)} ops, opened in {1000 * open_s:.1f} ms); "
        f"space {args.space}, {args.n} sampled genotypes (sampling not timed); "
        f"{os.cpu_count()} cores, 1-minute load {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print(
        f"{'what':<48} {'archs':>7} {'CPU s':>8} {'CPU archs/s':>12} {'CPU us/arch':>12} "
        f"{'wall archs/s':>13}"
    )
    for label, n, (wall, cpu) in rows:
        print(
            f"{label:<48} {n:>7} {cpu:>8.4f} {n / cpu:>12,.0f} {1e6 * cpu / n:>12.2f} "
            f"{n / wall:>13,.0f}"
        )
    print(
        f"{'mnasfpn-lut predict --arch paper-mnasfpn (wall)':<48} {1:>7} {min(walls):>9.3f} "
        f"{'':>11} {'':>8}  (best of 3, process start included)"
    )
    if args.baseline:
        print()
        old = baseline_model(args.baseline, table, Path(tmp.name))
        compare(old, table, args.space, gs, max(args.repeat, 3))
    tmp.cleanup()


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall, this process's CPU) seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


if __name__ == "__main__":
    main()
