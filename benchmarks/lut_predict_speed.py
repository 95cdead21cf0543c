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

--baseline REV also times `LatencyTable.predict` of that git revision (its whole package,
from `git archive`, in a worker process) on the same genotypes: the baseline, this tree's
Genotype path and its encoded path alternate run by run, so a loaded machine slows all
alike; each figure and its ratio to the baseline are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
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

# Genotypes timed one per call against the baseline.
FEW = 500


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


# The baseline: another revision's whole package in a process of its own, which times its
# `LatencyTable.predict` when told to (one line per run: the workload's name), so that
# its runs and this tree's alternate.
_BASELINE_WORKER = """
import sys, time
import numpy as np
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.spaces import sample_genotypes
lut, space, n, seed, few, out = sys.argv[1:7]
table = LatencyTable.open(lut)
gs = sample_genotypes(space, int(n), int(seed))
np.save(out, table.predict(gs, calibrated=False))
runs = {
    "batch": lambda: table.predict(gs, calibrated=False),
    "64": lambda: [table.predict(gs[i : i + 64], calibrated=False) for i in range(0, len(gs), 64)],
    "one": lambda: [table.predict([g], calibrated=False) for g in gs[: int(few)]],
}
print("ready", flush=True)
for line in sys.stdin:
    c = time.process_time()
    runs[line.strip()]()
    print(time.process_time() - c, flush=True)
"""


class Baseline:
    """`rev`'s predictor, timed in a worker process on the same sampled genotypes."""

    def __init__(self, rev: str, lut: Path, space: str, n: int, seed: int, few: int) -> None:
        root = Path(__file__).resolve().parents[1]
        self.folder = Path(tempfile.mkdtemp(prefix="baseline-"))
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev, "src/mnasfpn"],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(self.folder, filter="data")
        env = {**os.environ, "PYTHONPATH": str(self.folder / "src")}
        out = self.folder / "predictions.npy"
        args = [lut, space, n, seed, few, out]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BASELINE_WORKER, *map(str, args)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the baseline worker of {rev} did not start")
        self.predictions = np.load(out)

    def cpu_seconds(self, workload: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(workload + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def compare(base: Baseline, table: LatencyTable, space: str, gs: list, rounds: int) -> None:
    """The baseline's Genotype path, this tree's Genotype path and this tree's encoded path
    (with and without encoding) on the same genotypes, alternating run by run after a
    warm-up of each: one whole batch, batches of 64, and one genotype per call."""
    sp = get_space(space)
    codes = encode_batch(sp, gs)
    want = base.predictions
    got = [table.predict(gs, calibrated=False), table.predict_encoded(codes, sp, calibrated=False)]
    worst = max(float(np.max(np.abs(v - want) / np.maximum(np.abs(want), 1e-12))) for v in got)
    ways = {
        "Genotype objects": lambda b: table.predict(b[0], calibrated=False),
        "rows": lambda b: table.predict_encoded(b[1], sp, calibrated=False),
        "encode + rows": lambda b: table.predict_encoded(
            encode_batch(sp, b[0]), sp, calibrated=False
        ),
    }
    workloads = (
        ("batch", f"one batch of {len(gs)}", len(gs), [(gs, codes)]),
        (
            "64",
            "batches of 64",
            len(gs),
            [(gs[i : i + 64], codes[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        (
            "one",
            "one genotype per call",
            FEW,
            [(gs[i : i + 1], codes[i : i + 1]) for i in range(FEW)],
        ),
    )
    print(
        f"alternating the baseline and this tree, {rounds} rounds (best of each; CPU time; "
        "architectures/s, and the median speed-up over the baseline run by run):"
    )
    print(f"  {'workload':<22}{'baseline':>26}" + "".join(f"{name:>26}" for name in ways))
    for key, label, n, batches in workloads:
        cpu: dict[str, list[float]] = {name: [] for name in ("baseline", *ways)}
        for _ in range(rounds):
            cpu["baseline"].append(base.cpu_seconds(key))
            for name, fn in ways.items():
                cpu[name].append(_timed(lambda f=fn, bs=batches: [f(b) for b in bs])[1])  # type: ignore[misc]
        cells = []
        for name in cpu:
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
        base = Baseline(args.baseline, lut, args.space, args.n, args.seed, FEW)
        try:
            compare(base, table, args.space, gs, max(args.repeat, 3))
        finally:
            base.close()
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
