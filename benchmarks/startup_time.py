"""Start-up time of the commands that must feel instant: `mnasfpn --help`,
`mnasfpn-lut --help` and `mnasfpn-lut predict --help`, each in a fresh process, as wall
clock and as the process's CPU time (user + system: steadier on a shared machine).

    python benchmarks/startup_time.py [--runs 5] [--baseline GIT-REV]

--baseline REV also times that revision's package (its src/mnasfpn from `git archive`,
run by this interpreter); its runs and this tree's alternate, so a loaded machine slows
both alike. Prints the median and the best of --runs per command and tree, with the
load average before and after.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "mnasfpn --help": ("main", ["--help"]),
    "mnasfpn-lut --help": ("lut_main", ["--help"]),
    "mnasfpn-lut predict --help": ("lut_main", ["predict", "--help"]),
}


def extract(rev: str, into: Path) -> Path:
    """`rev`'s src/mnasfpn under `into`; returns the folder to put on PYTHONPATH."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "src/mnasfpn"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_once(entry: str, args: list[str], pythonpath: Path | None) -> tuple[float, float]:
    """(wall, CPU) seconds of one command in a fresh process, output discarded."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-c", f"from mnasfpn.cli import {entry}; {entry}()", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        trees: dict[str, Path | None] = {"this tree": None}
        if args.baseline:
            trees[args.baseline] = extract(args.baseline, Path(tmp))
        load = os.getloadavg()[0]
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, (entry, cli_args) in COMMANDS.items():
            for path in trees.values():
                run_once(entry, cli_args, path)  # warm the file cache
            for _ in range(args.runs):
                for tree, path in trees.items():
                    times.setdefault((name, tree), []).append(run_once(entry, cli_args, path))
        print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; "
              f"{args.runs} runs each, alternating between trees")  # fmt: skip
        print(f"{'command':<28} {'tree':<12} {'wall median':>11} {'best':>6} "
              f"{'CPU median':>10} {'best':>6}")  # fmt: skip
        for (name, tree), runs in times.items():
            wall = [w * 1000 for w, _ in runs]
            cpu = [c * 1000 for _, c in runs]
            med_wall, med_cpu = statistics.median(wall), statistics.median(cpu)
            print(f"{name:<28} {tree[:12]:<12} {med_wall:9.0f}ms {min(wall):4.0f}ms "
                  f"{med_cpu:8.0f}ms {min(cpu):4.0f}ms")  # fmt: skip


if __name__ == "__main__":
    main()
