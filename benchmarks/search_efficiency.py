"""Sample efficiency of the search strategies, and the search's own overhead per trial.

The objective is cheap and deterministic: LAT(m) from a real host latency table (the
calibrated prediction, exactly as a search uses it) and a fixed synthetic accuracy
function of the genotype (`mnasfpn.search.evaluators.surrogate_accuracy`: capacity and
multi-scale connectivity with diminishing returns) in place of proxy mAP, combined by the
search's reward mAP·(LAT/T)^w with T the table's latency of paper-mnasfpn. Each strategy
runs the real search loop (store, checkpoints, table look-ups) with children evaluated
in-process, for several seeds; we report the best reward after 100 / 300 / 1000 trials as
mean ± std over seeds, and the loop's time per trial excluding the evaluation itself.

    .venv/bin/python benchmarks/search_efficiency.py [--lut luts/host.sqlite] [--seeds 5]

Without --lut (and no luts/host.sqlite), it builds a host table of the mnasfpn space at
input size 128 first (a few minutes), into luts/host-128.sqlite.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (100, 300, 1000)


def ensure_table(lut: Path | None) -> Path:
    if lut is not None:
        return lut
    default = Path("luts/host.sqlite")
    if default.exists():
        return default
    small = Path("luts/host-128.sqlite")
    if not small.exists():
        print(f"no table given: building {small} (host, mnasfpn space, input 128)", flush=True)
        lut_cli = str(Path(sys.executable).with_name("mnasfpn-lut"))
        build = ["build", "--device", "host", "--space", "mnasfpn", "--input-size", "128"]
        subprocess.run([lut_cli, *build, "--out", str(small), "--quiet"], check=True)
    return small


def best_after(folder: Path, checkpoints: tuple[int, ...]) -> dict[int, float]:
    con = sqlite3.connect(folder / "trials.sqlite")
    rewards = [r for (r,) in con.execute("SELECT reward FROM trials ORDER BY id")]
    con.close()
    out = {}
    best = float("-inf")
    for n, r in enumerate(rewards, start=1):
        if r is not None:
            best = max(best, r)
        if n in checkpoints:
            out[n] = best
    return out


def run_one(
    table, space: str, strategy: str, seed: int, trials: int, target_ms: float, folder: Path
) -> tuple[dict[int, float], float, float]:
    from mnasfpn.search.driver import Search, SearchSettings, table_identity
    from mnasfpn.search.evaluators import SurrogateEvaluator
    from mnasfpn.search.executors import InlineExecutor
    from mnasfpn.search.reward import RewardSpec
    from mnasfpn.searchspace.spaces import get_space

    evaluator = SurrogateEvaluator()
    settings = SearchSettings(
        space=space,
        strategy=strategy,
        seed=seed,
        reward=RewardSpec(w=-0.3, target_ms=target_ms),
        repeats=get_space(space).repeats,
        table_hash=table_identity(table),
        evaluator=evaluator.identity(),
    )
    search = Search(folder, settings, table, InlineExecutor(evaluator), trials=trials)
    start = time.perf_counter()
    search.run()
    wall = time.perf_counter() - start
    search.close()
    con = sqlite3.connect(folder / "trials.sqlite")
    (child_seconds,) = con.execute("SELECT COALESCE(SUM(total_seconds), 0) FROM trials").fetchone()
    con.close()
    return best_after(folder, tuple(c for c in CHECKPOINTS if c <= trials)), wall, child_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", type=Path, default=None)
    ap.add_argument("--space", default="mnasfpn")
    ap.add_argument("--strategies", default="ppo,evolution,random")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=max(CHECKPOINTS))
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()

    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.searchspace.named import get_architecture

    lut = ensure_table(args.lut)
    table = LatencyTable.open(lut)
    target = float(table.predict([get_architecture("paper-mnasfpn")])[0])
    print(
        f"table {lut} (input {table.input_size}, calibrated: {table.calibration is not None}); "
        f"space {args.space}; T = paper-mnasfpn = {target:.2f} ms; w = -0.3; "
        f"{args.seeds} seeds x {args.trials} trials",
        flush=True,
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            per_seed: dict[int, list[float]] = {}
            overhead = []
            for seed in range(args.seeds):
                folder = Path(tmp) / f"{strategy}-{seed}"
                best, wall, child = run_one(
                    table, args.space, strategy, seed, args.trials, target, folder
                )
                for n, v in best.items():
                    per_seed.setdefault(n, []).append(v)
                overhead.append((wall - child) / args.trials * 1000)
                print(f"  {strategy} seed {seed}: {best} ({wall:.1f} s)", flush=True)
            summary = {
                n: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                for n, v in sorted(per_seed.items())
            }
            results[strategy] = {
                "best_reward": {str(n): {"mean": m, "std": s} for n, (m, s) in summary.items()},
                "overhead_ms_per_trial": statistics.mean(overhead),
            }
            cells = "  ".join(f"@{n}: {m:.4f} ± {s:.4f}" for n, (m, s) in summary.items())
            print(
                f"{strategy:<10} {cells}   overhead {statistics.mean(overhead):.1f} ms/trial",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
