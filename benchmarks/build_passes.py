"""Would fewer build passes or validate rounds do? Held-out fidelity of one validated
table when its entries are rebuilt from only its first k passes, and its end-to-end
targets from only the first r rounds of its validation.

    python benchmarks/build_passes.py --lut luts/host.sqlite [--seed 0]

An entry is its key's fastest pass (three by default, each in its own key order, so a
slow phase of the machine hits different ops in each). This takes a table that was built
and validated, and for each k copies it, keeps passes 0 .. k-1 (the first k taken: a build
takes pass 0 of every key, then pass 1, ...), rewrites the entries from them, and scores
the copy's held-out predictions (5-fold, as `validate`) against the end-to-end runs the
table already holds, so every k is judged on the same measured detectors; then the same
with the end-to-end runs cut to their first r rounds (each round visits every detector
once, in its own order). Nothing is timed. Printed per k and r: the build time those
passes took (from their timestamps), how far the entries moved from the full table's
(|ratio - 1|, median and p90) and the held-out R², MAPE, max error, within ±5% and
Kendall τ.

Six tables of the 2-core Intel Xeon VM (2026-11-27/28; 3 passes each, validated with 43
detectors), scored with their first 1 / 2 / 3 passes:

    table (load while built)        R² 1 / 2 / 3 passes      MAPE % 1 / 2 / 3   p90 |Δ| % 1 / 2
    adaptive, 0.5 s cap (load <1)   0.9990 / 0.9989 / 0.9990  0.48 / 0.49 / 0.49  3.49 / 0.46
    adaptive (load 6-8)             0.9967 / 0.9965 / 0.9966  0.99 / 1.00 / 0.99  3.74 / 0.94
    fixed counts (load 6-8)         0.9973 / 0.9979 / 0.9975  1.02 / 0.90 / 1.00  6.44 / 3.09
    adaptive (load 1-3)             0.9993 / 0.9993 / 0.9993  0.51 / 0.50 / 0.50  3.71 / 1.15
    first make demo (quiet)         0.9989 / 0.9987 / 0.9988  0.65 / 0.66 / 0.65  3.59 / 0.52
    make demo beside busy loop+CI   0.9964 / 0.9961 / 0.9962  0.93 / 0.94 / 0.93  5.55 / 3.36

Hence `DEFAULT_PASSES = 2` (lut/build.py): the fidelity of three at two thirds of the
timing, and a second pass to outvote a slow phase that one pass would keep.

Rounds matter more on the wall clock. The 2-thread XNNPACK table (`host-xnnpack-2t`, built
with 3 passes and validated with 3 rounds alone on the VM, CPU pressure 1-3%):

    passes  rounds      R²    MAPE    max    ±5%      τ
         3       3  0.9973   3.57%  16.0%  76.7%  0.949
         3       2  0.9940   4.55%  18.2%  65.1%  0.931
         3       1  0.9736   7.91%  29.5%  39.5%  0.883
         2       3  0.9969   3.69%  16.4%  72.1%  0.949
         2       2  0.9937   4.68%  18.1%  67.4%  0.929

Hence validate's three rounds for multi-thread tables (`MULTI_THREAD_ROUNDS`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from mnasfpn.lut.fidelity import cross_validate, metrics
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.lut.validate import fit_inputs, measured_architectures


def pass_seconds(lut: Path) -> dict[int, float]:
    """Wall time of each pass: its first to its last timing's timestamp."""
    with sqlite3.connect(f"file:{lut}?mode=ro", uri=True) as c:
        rows = c.execute(
            "SELECT pass, MIN(measured_at), MAX(measured_at) FROM op_passes GROUP BY pass"
        ).fetchall()
    at = dt.datetime.fromisoformat
    return {int(p): (at(hi) - at(lo)).total_seconds() for p, lo, hi in rows}


def first_passes_copy(lut: Path, k: int, folder: Path) -> Path:
    """A copy of `lut` whose entries come from passes 0 .. k-1 only."""
    out = folder / f"passes{k}.sqlite"
    shutil.copyfile(lut, out)
    with sqlite3.connect(out) as c:
        c.execute("DELETE FROM op_passes WHERE pass >= ?", (k,))
        c.execute("DELETE FROM ops")
    with TableStore.open(out) as store:
        store.settle_entries(k)
    return out


def first_rounds_copy(lut: Path, r: int, folder: Path) -> Path:
    """A copy of `lut` whose end-to-end runs are its rounds 0 .. r-1 only."""
    out = folder / f"{lut.stem}-rounds{r}.sqlite"
    shutil.copyfile(lut, out)
    with sqlite3.connect(out) as c:
        c.execute("DELETE FROM e2e_runs WHERE round >= ?", (r,))
    return out


def validate_rounds(lut: Path) -> int:
    with sqlite3.connect(f"file:{lut}?mode=ro", uri=True) as c:
        return int(c.execute("SELECT COALESCE(MAX(round), -1) + 1 FROM e2e_runs").fetchone()[0])


def score(lut: Path, seed: int) -> dict[str, float]:
    genotypes, _, y = measured_architectures(lut)
    x, x_naive, madds, s, s_naive = fit_inputs(LatencyTable.open(lut), genotypes)
    preds, _ = cross_validate(x, x_naive, madds, y, seed, s, s_naive)
    return {**metrics(preds["calibrated"], y), "n": float(len(y))}


def entries(lut: Path) -> dict[str, float]:
    with TableStore.open(lut, readonly=True) as store:
        return {r.key: r.median_ms for r in store.op_rows()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", type=Path, required=True, help="a built and validated table")
    ap.add_argument("--seed", type=int, default=0, help="fold seed (validate's default)")
    args = ap.parse_args()
    seconds = pass_seconds(args.lut)
    rounds = validate_rounds(args.lut)
    full = entries(args.lut)
    print(f"{args.lut}: {len(full)} entries, passes {sorted(seconds)}, {rounds} validate rounds")
    head = (
        f"{'passes':>6} {'rounds':>6} {'build s':>8} {'entries |Δ| p50':>16} {'p90':>7} "
        f"{'R²':>7} {'MAPE':>7} {'max':>7} {'±5%':>6} {'τ':>6}"
    )
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(len(seconds), 0, -1):
            copy = first_passes_copy(args.lut, k, Path(tmp))
            got = entries(copy)
            moved = np.array([abs(got[key] / full[key] - 1) for key in full if key in got])
            build_s = sum(seconds[p] for p in range(k))
            for r in range(rounds, 0, -1):
                m = score(first_rounds_copy(copy, r, Path(tmp)), args.seed)
                print(
                    f"{k:>6} {r:>6} {build_s:>8.1f} {100 * np.median(moved):>15.2f}% "
                    f"{100 * np.quantile(moved, 0.9):>6.2f}% {m['r2']:>7.4f} "
                    f"{100 * m['mape']:>6.2f}% {100 * m['max_err']:>6.1f}% "
                    f"{100 * m['within5']:>5.1f}% {m['kendall_tau']:>6.3f}"
                )
    print(f"({int(m['n'])} validated detectors, the same ones in every row)")


if __name__ == "__main__":
    main()
