"""Speed of table predictions: in a process (batch, batches of 64, one genotype per call)
and as a user runs them (`mnasfpn-lut predict` of one named architecture and of a .jsonl
file of sampled genotypes, process start included).

    python benchmarks/lut_predict_speed.py [--lut FILE] [--n 20000] [--space mnasfpn]
        [--jsonl 10000] [--baseline GIT-REV]

Without --lut, a table with every key of the space (latencies derived from the keys) is
written to a temporary file, so the figure needs no device. Sampling genotypes is not
timed. Each in-process figure is the best of --repeat runs on a warm table (components
are memoized on first use; the cold first call is reported too), as this process's CPU
time (time.process_time: steadier than wall when other jobs share the cores; wall is shown
too), with the load average before and after. The commands are timed by wall clock and
by their CPU time (user + system), best of three.

--baseline REV also times the predictor of that git revision (its whole package, from
`git archive`): `LatencyTable.predict` in a worker process on the same genotypes, and
`mnasfpn-lut predict` of the same .jsonl file. The baseline's runs and this tree's
alternate, so a loaded machine slows both alike; each figure and its ratio to the
baseline are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
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
from mnasfpn.searchspace.spaces import sample_genotypes

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
            store.add_op_pass(
                k, 0, passes=1, median_ms=v, min_ms=v, std_ms=0.0, runs=1, dispersion=0.0,
                session=sid,
            )  # fmt: skip


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


def run_cli(args: list[str], pythonpath: Path | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one `mnasfpn-lut` command in its own process, output
    discarded; `pythonpath`: the package to run (default: this tree's)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-c", "from mnasfpn.cli import lut_main; lut_main()", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def compare(
    base: Baseline, table: LatencyTable, gs: list, rounds: int, cli_args: list[str]
) -> None:
    """The baseline's predictor and this tree's on the same genotypes, alternating run by
    run after a warm-up of each: one whole batch, batches of 64, one genotype per call,
    and `mnasfpn-lut predict` of the .jsonl file."""
    want = base.predictions
    got = table.predict(gs, calibrated=False)
    worst = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
    batches = {
        "batch": [gs],
        "64": [gs[i : i + 64] for i in range(0, len(gs), 64)],
        "one": [gs[i : i + 1] for i in range(FEW)],
    }
    labels = {
        "batch": (f"one batch of {len(gs)}", len(gs)),
        "64": ("batches of 64", len(gs)),
        "one": ("one genotype per call", FEW),
    }
    print(
        f"alternating the baseline and this tree, {rounds} rounds (best of each; CPU time; "
        "architectures/s, and the median speed-up over the baseline run by run):"
    )
    print(f"  {'workload':<34}{'baseline':>22}{'this tree':>22}")
    for key, bs in batches.items():
        base_cpu, cpu = [], []
        for _ in range(rounds):
            base_cpu.append(base.cpu_seconds(key))
            cpu.append(
                _timed(lambda bs=bs: [table.predict(b, calibrated=False) for b in bs])[1]  # type: ignore[misc]
            )
        label, n = labels[key]
        ratio = np.median([b / t for b, t in zip(base_cpu, cpu, strict=True)])
        print(f"  {label:<34}{n / min(base_cpu):>22,.0f}{n / min(cpu):>13,.0f} ({ratio:.2f}x)")
    walls: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
    for _ in range(rounds):
        walls["baseline"].append(run_cli(cli_args, base.folder / "src"))
        walls["this tree"].append(run_cli(cli_args))
    (bw, bc), (tw, tc) = (_best(walls["baseline"]), _best(walls["this tree"]))
    print(
        f"  {'mnasfpn-lut predict, .jsonl':<34}{f'{bw:.2f} s ({bc:.2f} CPU)':>22}"
        f"{f'{tw:.2f} s ({tc:.2f} CPU)':>22}  wall, best of {rounds}"
    )
    print(f"  largest relative difference from the baseline's predictions: {worst:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", type=Path, default=None)
    ap.add_argument("--space", default="mnasfpn")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--jsonl", type=int, default=10000, help="genotypes in the .jsonl file")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    lut = args.lut
    if lut is None:
        lut = Path(tmp.name) / "synthetic.sqlite"
        synthetic_table(lut, args.space, 320)
    jsonl = Path(tmp.name) / "sampled.jsonl"
    sampled = sample_genotypes(args.space, args.jsonl, args.seed + 100)
    jsonl.write_text("".join(g.to_json(indent=None) + "\n" for g in sampled))
    cli_args = ["predict", "--lut", str(lut), "--arch", str(jsonl)]
    t0 = time.perf_counter()
    table = LatencyTable.open(lut)
    open_s = time.perf_counter() - t0
    gs = sample_genotypes(args.space, args.n, args.seed)
    load_before = os.getloadavg()
    rows = []
    rows.append(
        ("predict, first call (makes the components)", args.n, _timed(lambda: table.predict(gs)))
    )
    fresh = [sample_genotypes(args.space, args.n, args.seed + 1 + i) for i in range(args.repeat)]
    runs = [_timed(lambda batch=batch: table.predict(batch)) for batch in fresh]
    rows.append(("predict, fresh objects each run", args.n, _best(runs)))
    del fresh
    few = gs[:2000]
    for label, fn in (
        ("predict (connectivity, calibrated if fitted)", lambda: table.predict(gs)),
        ("predict naive (all blocks)", lambda: table.predict(gs, naive=True)),
        ("breakdown (backbone/head/predictor)", lambda: table.breakdown(gs)),
        (
            "predict, batches of 64",
            lambda: [table.predict(gs[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        ("predict, one genotype per call (first 2000)", lambda: [table.predict([g]) for g in few]),
    ):
        n = len(few) if "first 2000" in label else args.n
        runs = [_timed(fn) for _ in range(args.repeat)]
        rows.append((label, n, _best(runs)))
    named = [run_cli(["predict", "--lut", str(lut), "--arch", "paper-mnasfpn"]) for _ in range(3)]
    from_file = [run_cli(cli_args) for _ in range(3)]
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
    for label, n, runs in (
        ("mnasfpn-lut predict --arch paper-mnasfpn", 1, named),
        ("mnasfpn-lut predict --arch FILE.jsonl", args.jsonl, from_file),
    ):
        wall, cpu = _best(runs)
        print(
            f"{label:<48} {n:>7} {cpu:>8.3f} {'':>12} {'':>12} {f'{wall:.3f} s wall':>13}"
            "  (best of 3, process start included)"
        )
    if args.baseline:
        print()
        base = Baseline(args.baseline, lut, args.space, args.n, args.seed, FEW)
        try:
            compare(base, table, gs, max(args.repeat, 3), cli_args)
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
