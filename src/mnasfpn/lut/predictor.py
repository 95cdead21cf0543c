"""Table look-ups for genotypes without building any OpGraph.

A detector's live ops split into components (see `components`): backbone and predictor,
each live block's resampled inputs and body (once for the first cell, repeats - 1 times
for the later ones), and the SDO pre-pools. `CostModel` walks each genotype once into
(component, count) entries; every figure it gives (latency, per-part breakdown, features
per op type and part, structure) is then a sum over those entries, in numpy.

Liveness (paper §3.4, connectivity): every cell's output blocks are live: the last cell's
feed the predictor, and each later cell's output blocks add their cell input as a residual
(all C channels), which keeps the earlier cell's outputs alive; the first cell adds C6 at
level 6, which keeps the whole backbone alive. So a block is live iff an output block of
the same cell reaches it, the same in every cell (`Genotype.live`).

SDO pre-pools: the builder merges identical weightless ops, so one pool of a tensor by one
stride serves every block that asks for it, in its own cell and (for a cell output) in the
next cell; pooling C5 by 2 in the first cell is the backbone's C6 pool. Each is counted
once per (tensor, target level). Tests check that all of this equals
`build_opgraph(g).live_ops()` (and, naive, all ops) on random genotypes of every space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import PARTS
from mnasfpn.lut.calibration import Calibration
from mnasfpn.lut.components import Components
from mnasfpn.searchspace.genotype import LEVELS, NUM_CELL_INPUTS, Genotype, GenotypeError

__all__ = ["CostModel", "MissingOpError"]

# The first cell's input node that the backbone pools to make C6, and C6's level.
_C6_SOURCE, _C6_LEVEL = LEVELS.index(5), 6


class MissingOpError(MnasfpnError, KeyError):
    """A genotype needs an op the table has no entry for."""

    def __init__(self, key: str, genotype_index: int, genotype: Genotype) -> None:
        super().__init__(key)
        self.key = key
        self.genotype_index = genotype_index
        self.genotype = genotype

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument; this is shown to users.
        name = self.genotype.name or f"genotype {self.genotype_index}"
        return f"the table has no entry for op {self.key} (needed by {name})"


class CostModel:
    """Maps genotypes to summed table latencies: in total, per part, per (op type, part)."""

    def __init__(self, latencies: dict[str, float], config: DetectorConfig) -> None:
        self.latencies = dict(latencies)
        self.config = config
        self.comps = Components(self.latencies, config)

    # -- a genotype's components ------------------------------------------------------

    def _walk(
        self, g: Genotype, index: int, naive: bool, ids: list[int], counts: list[int]
    ) -> None:
        """Append the (component id, count) entries of `g`'s live ops (every block's with
        `naive`, connected to an output or not: the baseline)."""
        comps = self.comps
        c, sdo, reps = g.channels, g.sdo, g.repeats
        later = reps - 1
        blocks = g.blocks
        n_mid = len(blocks) - NUM_CELL_INPUTS
        live = [True] * len(blocks) if naive else g.live()
        first = comps.first_cell_channels(c)
        levels = [*LEVELS, *(b.level for b in blocks)]
        resample, body = comps.resample, comps.body
        cid = comps.backbone.get(c)
        ids.append(comps.make_backbone(c) if cid is None else cid)
        cid = comps.predictor.get(c)
        ids.append(comps.make_predictor(c) if cid is None else cid)
        counts += (1, 1)
        pooled: dict[int, set[int]] = {}  # node → the levels live blocks pool it to
        for b, block in enumerate(blocks):
            if not live[b]:
                continue
            r, f = block.level, block.expansion
            for i in block.inputs:
                if not 0 <= i < NUM_CELL_INPUTS + b:
                    raise GenotypeError(
                        f"genotype #{index}, block {b}: input node {i} is not an earlier node"
                    )
                lv = levels[i]
                key = (lv, c, r, f, sdo)
                cid = resample.get(key)
                if cid is None:
                    cid = comps.make_resample(key)
                if i < NUM_CELL_INPUTS:  # a backbone tap in the first cell
                    tap = (lv, first[i], r, f, sdo)
                    tid = resample.get(tap)
                    ids.append(comps.make_resample(tap) if tid is None else tid)
                    counts.append(1)
                    if later:
                        ids.append(cid)
                        counts.append(later)
                else:
                    ids.append(cid)
                    counts.append(reps)
                if sdo and r > lv:
                    pooled.setdefault(i, set()).add(r)
            # An output block adds its cell input when that has C channels: in the
            # first cell a backbone tap may not.
            is_out = b >= n_mid
            k, merge, n_in = block.kernel, block.merge, len(block.inputs)
            key = (r, f, k, merge, n_in, c, is_out and first[r - LEVELS[0]] == c)
            cid = body.get(key)
            ids.append(comps.make_body(key) if cid is None else cid)
            counts.append(1)
            if later:
                key = (r, f, k, merge, n_in, c, is_out)
                cid = body.get(key)
                ids.append(comps.make_body(key) if cid is None else cid)
                counts.append(later)
        if pooled:
            self._pools(pooled, levels, first, g, ids, counts)

    def _pools(
        self,
        pooled: dict[int, set[int]],
        levels: list[int],
        first: list[int],
        g: Genotype,
        ids: list[int],
        counts: list[int],
    ) -> None:
        """The SDO pre-pools, one per pooled tensor and target level. A first-cell input
        is a backbone tap (its pool to C6's level is C6 itself). An intermediate block's
        node is pooled in every cell. An output node of level l is the next cell's input
        node l, and the builder merges a pool of either into one op: with A = its own
        cell's pools and B = those of input node l, (repeats - 1)·|A ∪ B| + |A| pools."""
        comps, c, later = self.comps, g.channels, g.repeats - 1
        n_mid = len(g.blocks) - NUM_CELL_INPUTS
        entries: list[tuple[tuple[int, int, int], int]] = []
        for i, targets in pooled.items():
            lv = levels[i]
            if i < NUM_CELL_INPUTS:
                entries += [
                    ((lv, first[i], t), 1)
                    for t in targets
                    if not (i == _C6_SOURCE and t == _C6_LEVEL)
                ]
            else:
                n = 1 if i - NUM_CELL_INPUTS >= n_mid else g.repeats
                entries += [((lv, c, t), n) for t in targets]
        if later:
            for b in range(n_mid, len(g.blocks)):
                lv = g.blocks[b].level
                both = pooled.get(NUM_CELL_INPUTS + b, set()) | pooled.get(LEVELS.index(lv), set())
                entries += [((lv, c, t), later) for t in both]
        for key, n in entries:
            cid = comps.pool.get(key)
            ids.append(comps.make_pool(key) if cid is None else cid)
            counts.append(n)

    def _entries(
        self, genotypes: Sequence[Genotype], naive: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (genotype index, component id, count) entries of a batch, in batch order."""
        ids: list[int] = []
        counts: list[int] = []
        sizes = []
        for index, g in enumerate(genotypes):
            start = len(ids)
            self._walk(g, index, naive, ids, counts)
            sizes.append(len(ids) - start)
        rows = np.repeat(np.arange(len(sizes)), sizes)
        return rows, np.array(ids, dtype=np.int64), np.array(counts, dtype=np.float64)

    def _sums(
        self,
        genotypes: Sequence[Genotype],
        naive: bool,
        columns: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """(n × k): per genotype, the sum over its entries of each column of `columns()`
        (components × k, read once the batch's components are made). A genotype that
        needs an op the table lacks raises MissingOpError (the first such genotype)."""
        rows, ids, counts = self._entries(genotypes, naive)
        missing = self.comps.arrays()[3][ids]
        if missing.any():
            e = int(np.argmax(missing))
            key = self.comps.missing_key[int(ids[e])]
            assert key is not None
            raise MissingOpError(key, int(rows[e]), genotypes[int(rows[e])])
        weighted = columns()[ids] * counts[:, None]
        n = len(genotypes)
        out = np.empty((n, weighted.shape[1]))
        for j in range(weighted.shape[1]):
            out[:, j] = np.bincount(rows, weights=weighted[:, j], minlength=n)
        return out

    def _scalars(self, calibration: Calibration | None) -> np.ndarray:
        """Per component: its latency, through the calibration's scales and structure
        term when given one (its intercept is added per genotype)."""
        vecs, _, struct, _ = self.comps.arrays()
        if calibration is None:
            return vecs.sum(axis=1)
        out = vecs @ np.asarray(calibration.column_scales())
        coefs = np.asarray(calibration.structure_coefs())
        return out + struct @ coefs if coefs.any() else out

    # -- public -------------------------------------------------------------------------

    def predict(
        self,
        genotypes: Sequence[Genotype],
        calibration: Calibration | None = None,
        *,
        naive: bool = False,
    ) -> np.ndarray:
        out = self._sums(genotypes, naive, lambda: self._scalars(calibration)[:, None])[:, 0]
        return out + calibration.intercept_ms if calibration is not None else out

    def breakdown(
        self,
        genotypes: Sequence[Genotype],
        calibration: Calibration | None = None,
        *,
        naive: bool = False,
    ) -> dict[str, np.ndarray]:
        """Per part (backbone, head, predictor) plus the fitted overhead, and the total."""

        def per_part() -> np.ndarray:
            parts = self.comps.arrays()[1]
            return self._scalars(calibration)[:, None] * (parts[:, None] == np.arange(len(PARTS)))

        sums = self._sums(genotypes, naive, per_part)
        out = {name: sums[:, p] for p, name in enumerate(PARTS)}
        out["overhead"] = np.full(len(genotypes), calibration.intercept_ms if calibration else 0.0)
        out["total"] = sum(out[p] for p in (*PARTS, "overhead"))
        return out

    def features(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """(n × len(feature_columns())) summed table latencies per (op type, part)."""
        return self._sums(genotypes, naive, lambda: self.comps.arrays()[0])

    def structure(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """(n × len(STRUCTURE_FEATURES)) structural quantities of the live ops."""
        return self._sums(genotypes, naive, lambda: self.comps.arrays()[2])

    def key_counts(self, genotype: Genotype, *, naive: bool = False) -> Counter[str]:
        """The live (or, with `naive`, all) op keys of one genotype, with multiplicity."""
        ids: list[int] = []
        counts: list[int] = []
        self._walk(genotype, 0, naive, ids, counts)
        total: Counter[str] = Counter()
        for cid, n in zip(ids, counts, strict=True):
            for key, m in self.comps.keys[cid].items():
                total[key] += m * n
        return total
