"""Throughput of table predictions: batch `LatencyTable.predict` and one `mnasfpn-lut predict`.

    python benchmarks/lut_predict_speed.py [--lut FILE] [--n 20000] [--space mnasfpn]
        [--baseline GIT-REV]

Without --lut, a table with every key of the space (latencies derived from the keys) is
written to a temporary file, so the figure needs no device. Sampling genotypes is not
timed; each batch figure is the best of --repeat runs on a warm table (components are
memoized on first use; the cold first call is reported too), as wall and as this
process's CPU time (steadier than wall when other jobs share the cores). "Fresh objects"
predicts genotypes the predictor has never seen (new Python objects each run), which is
what a search does.

--baseline REV also times the predictor (src/mnasfpn/lut/predictor.py) of that git
revision on the same genotypes, alternating old and new run by run, so a loaded machine
slows both alike; both figures and their ratio are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
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


def compare(old: object, new: object, gs: list, rounds: int) -> None:
    """Old and new predict on the same genotypes, alternating run by run, after a warm-up
    of each: the whole batch, batches of 64, and one genotype per call."""
    want = old.predict(gs)  # type: ignore[attr-defined]
    got = new.predict(gs)  # type: ignore[attr-defined]
    worst = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
    few = gs[:500]
    workloads = (
        (f"one batch of {len(gs)}", len(gs), lambda m: m.predict(gs)),
        (
            "batches of 64",
            len(gs),
            lambda m: [m.predict(gs[i : i + 64]) for i in range(0, len(gs), 64)],
        ),
        ("one genotype per call", len(few), lambda m: [m.predict([g]) for g in few]),
    )
    print(f"alternating baseline / this tree, {rounds} rounds (best of each; CPU time):")
    for label, n, fn in workloads:
        times: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
        for _ in range(rounds):
            for name, model in (("baseline", old), ("this tree", new)):
                times[name].append(_timed(lambda m=model, f=fn: f(m)))  # type: ignore[misc]
        cpu = {name: min(t[1] for t in ts) for name, ts in times.items()}
        ratios = [o[1] / t[1] for o, t in zip(times["baseline"], times["this tree"], strict=True)]
        print(
            f"  {label:<24} baseline {n / cpu['baseline']:>10,.0f}/s  this tree "
            f"{n / cpu['this tree']:>10,.0f}/s  speed-up median {np.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
    print(f"  largest relative difference between the two predictions: {worst:.1e}")


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
    rows = []
    rows.append(
        ("predict, first call (builds component memo)", args.n, _timed(lambda: table.predict(gs)))
    )
    fresh = [sample_genotypes(args.space, args.n, args.seed + 1 + i) for i in range(args.repeat)]
    runs = [_timed(lambda batch=batch: table.predict(batch)) for batch in fresh]
    rows.append(("predict, fresh objects each run", args.n, _best(runs)))
    del fresh
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
    print(
        f"table: {lut} ({len(table.latencies)} ops, opened in {1000 * open_s:.1f} ms); "
        f"space {args.space}, {args.n} sampled genotypes (sampling not timed)"
    )
    print(
        f"{'what':<48} {'archs':>7} {'seconds':>9} {'archs/s':>11} {'us/arch':>8} "
        f"{'CPU archs/s':>12}"
    )
    for label, n, (wall, cpu) in rows:
        print(
            f"{label:<48} {n:>7} {wall:>9.4f} {n / wall:>11,.0f} {1e6 * wall / n:>8.2f} "
            f"{n / cpu:>12,.0f}"
        )
    print(
        f"{'mnasfpn-lut predict --arch paper-mnasfpn (wall)':<48} {1:>7} {min(walls):>9.3f} "
        f"{'':>11} {'':>8}  (best of 3, process start included)"
    )
    if args.baseline:
        print()
        old = baseline_model(args.baseline, table, Path(tmp.name))
        compare(old, table.model, gs, max(args.repeat, 3))
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
