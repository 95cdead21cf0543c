"""Would fewer build passes do? Held-out fidelity of one validated table's entries when
they are rebuilt from only its first k passes, k = 1 .. all.

    python benchmarks/build_passes.py --lut luts/host.sqlite [--seed 0]

An entry is its key's fastest pass (three by default, each in its own key order, so a
slow phase of the machine hits different ops in each). This takes a table that was built
and validated, and for each k copies it, keeps passes 0 .. k-1 (the first k taken: a build
takes pass 0 of every key, then pass 1, ...), rewrites the entries from them, and scores
the copy's held-out predictions (5-fold, as `validate`) against the end-to-end runs the
table already holds, so every k is judged on the same measured detectors. Nothing is
timed. Printed per k: the build time those passes took (from their timestamps), how far
the entries moved from the full table's (|ratio - 1|, median and p90) and the held-out
R², MAPE, max error, within ±5% and Kendall τ.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from mnasfpn.lut.fidelity import cross_validate, end_to_end_latency, metrics
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.genotype import genotype_from_dict


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


def score(lut: Path, seed: int) -> dict[str, float]:
    table = LatencyTable.open(lut)
    with TableStore.open(lut, readonly=True) as store:
        archs, runs = store.e2e_archs(), store.e2e_runs()
    ids = [a for a in archs if runs.get(a)]
    genotypes = [genotype_from_dict(archs[a]["genotype"]) for a in ids]
    y = np.array([end_to_end_latency(runs[a]) for a in ids])
    madds = np.array([table.config.opgraph(g).madds() / 1e6 for g in genotypes])
    preds, _ = cross_validate(
        table.features(genotypes),
        table.features(genotypes, naive=True),
        madds,
        y,
        seed,
        table.structure(genotypes),
        table.structure(genotypes, naive=True),
    )
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
    full = entries(args.lut)
    print(f"{args.lut}: {len(full)} entries, passes {sorted(seconds)}")
    head = (
        f"{'passes':>6} {'build s':>8} {'entries |Δ| p50':>16} {'p90':>7} "
        f"{'R²':>7} {'MAPE':>7} {'max':>7} {'±5%':>6} {'τ':>6}"
    )
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1, len(seconds) + 1):
            copy = first_passes_copy(args.lut, k, Path(tmp))
            got = entries(copy)
            moved = np.array([abs(got[key] / full[key] - 1) for key in full if key in got])
            m = score(copy, args.seed)
            build_s = sum(seconds[p] for p in range(k))
            print(
                f"{k:>6} {build_s:>8.1f} {100 * np.median(moved):>15.2f}% "
                f"{100 * np.quantile(moved, 0.9):>6.2f}% {m['r2']:>7.4f} "
                f"{100 * m['mape']:>6.2f}% {100 * m['max_err']:>6.1f}% "
                f"{100 * m['within5']:>5.1f}% {m['kendall_tau']:>6.3f}"
            )
    print(f"({int(m['n'])} validated detectors; the same end-to-end runs score every row)")


if __name__ == "__main__":
    main()
