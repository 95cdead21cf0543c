"""Fast table look-ups: a batch's latencies without building any OpGraph.

A detector's live ops split into components (see `components`): backbone and predictor,
each block's resampled inputs and body (once for the first cell, once with multiplicity
repeats - 1 for the later ones), and the SDO pre-pools. A batch comes either as Genotype
objects or as decision rows (`EncodedBatch`, the integer codes `encode_batch` gives and the
search samples). Objects are read once into integer arrays (`BlockReader`: two memo look-
ups per block, most of the cost of such a batch); rows are decoded with array operations.
From there on both are the same numpy over (genotype × block) arrays:
  * liveness as a bit mask swept from the last block back;
  * per component kind, the signature code of every entry (a dense (n, k) array, "none"
    where an entry does not count) and its multiplicity;
  * a prediction gathers each code's latency from a dense per-signature array (NaN until
    the component is made, or where the table lacks a key: the rare slow path makes it, or
    names the missing key) and sums.

Liveness (paper §3.4, connectivity): every cell's output blocks are live: the last cell's
feed the predictor, and each later cell's output blocks add their cell input as a residual
(all C channels), which keeps the earlier cell's outputs alive; the first cell adds C6 at
level 6, which keeps the whole backbone alive. So a block is live iff an output block of
the same cell reaches it, the same in every cell.

SDO pre-pools: the builder merges identical weightless ops, so one pool of a tensor by one
stride serves every block that asks for it, in its own cell and (for a cell output) in the
next cell; pooling C5 by 2 in the first cell is the backbone's C6 pool. Each is counted
once per (tensor, target level). Tests check that all of this equals
`build_opgraph(g).live_ops()` (and, naive, all ops) on random genotypes of every space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import PARTS
from mnasfpn.lut.calibration import Calibration
from mnasfpn.lut.components import (
    BODY_DIMS,
    EMPTY,
    GRID_KERNELS,
    GRID_MERGES,
    KERNEL_INDEX,
    LEVELS,
    MAX_BLOCKS,
    MAX_INPUTS,
    POOL_DIMS,
    RS_DIMS,
    VALUE_INDEX,
    VALUES,
    Components,
    GridError,
    check_space_fits,
    check_spaces_fit,
)
from mnasfpn.searchspace.batch import (
    PAD,
    BlockFieldError,
    BlockReader,
    DecodedRows,
    as_code_array,
    decode_batch,
)
from mnasfpn.searchspace.genotype import NUM_CELL_INPUTS, Genotype, GenotypeError
from mnasfpn.searchspace.spaces import SearchSpace

__all__ = [
    "CostModel",
    "EncodedBatch",
    "GridError",
    "MissingOpError",
    "check_space_fits",
    "check_spaces_fit",
]

# Genotypes per numpy pass: bounds the memory of a batch; about the fastest size here.
_CHUNK = 4096
_V = len(VALUES)
# Weights of digits inside the grids' codes.
_RS_SRC = RS_DIMS[3] * _V * _V  # one step of a resample's source signature
_RS_SDO = RS_DIMS[2] * _RS_SRC
_BODY_OUT = int(np.prod(BODY_DIMS[2:7]))  # the body's "is output" digit, less C
_T = np.arange(len(LEVELS))
# The read-mask bit of each node (cell inputs: none), and of -1 (no input): none.
_READ_BIT = np.concatenate(
    [np.zeros(NUM_CELL_INPUTS, dtype=np.int64), 1 << np.arange(MAX_BLOCKS), [0]]
)
# Pool pattern codes: a node's pools as a bit mask over the target levels.
_PATTERNS = 1 << len(LEVELS)
# (first cell, source) · V of a first-cell input node (a backbone tap).
_TAP_BASE = (POOL_DIMS[1] + _T) * _V
assert len(LEVELS) == 4  # _GATHER_BYTES packs four flags
_GATHER_BYTES = np.uint32(sum(1 << (24 - 7 * t) for t in range(len(LEVELS))))
# Pooling C5 (node 2) to level 6 in the first cell is C6, which the backbone counts.
_TAP_MASK = np.full(NUM_CELL_INPUTS, _PATTERNS - 1)
_TAP_MASK[LEVELS.index(5)] &= ~(1 << LEVELS.index(6))

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


@dataclass(frozen=True)
class EncodedBatch:
    """Genotypes of one space as decision rows (one per genotype, `encode_batch`'s
    layout, PAD past the end of a shorter row) with each genotype's repeat count. The SDO
    setting is the space's. Rows decode to unpruned cells: the filler blocks of a pruned
    genotype's row are dead, so only a naive (all blocks) sum sees them."""

    space: SearchSpace
    codes: np.ndarray
    repeats: np.ndarray

    @classmethod
    def of(
        cls,
        space: SearchSpace,
        codes: np.ndarray | Sequence[Sequence[int]],
        repeats: int | Sequence[int] | np.ndarray | None = None,
    ) -> EncodedBatch:
        arr = as_code_array(codes)
        rep = np.asarray(space.repeats if repeats is None else repeats)
        if rep.dtype == bool or not np.issubdtype(rep.dtype, np.integer):
            raise GenotypeError(f"repeats must be integers, got {rep.dtype}")
        if rep.ndim == 0:
            rep = np.full(len(arr), int(rep), dtype=np.int64)
        if rep.shape != (len(arr),):
            raise GenotypeError(
                f"{len(arr)} decision rows but {rep.size} repeat counts; give one, or one per row"
            )
        if (rep < 1).any():
            i = int(np.argmax(rep < 1))
            raise GenotypeError(f"decision sequence #{i}: repeats must be at least 1, got {rep[i]}")
        return cls(space, arr, rep.astype(np.int64))

    def __len__(self) -> int:
        return len(self.codes)

    def genotype(self, i: int) -> Genotype:
        """Row i as a Genotype (for messages)."""
        row = self.codes[i].tolist()
        while row and row[-1] == PAD:
            row.pop()
        return self.space.decode(row, repeats=int(self.repeats[i]))


class _Blocks(NamedTuple):
    """A chunk of a batch as arrays: per genotype (n,) channel index, sdo, repeats and
    block count; per block (n, blocks) level index, the (R, F) digits of a resample code,
    the (R, F, k, merge) digits of a body code, the number of inputs and the bit mask of
    the block nodes read (bit b: node 4 + b); per input slot (n, blocks) the node read, -1
    past a block's inputs. Blocks past a genotype's count are padding."""

    ci: np.ndarray
    sdo: np.ndarray
    rep: np.ndarray
    nb: np.ndarray
    lv: np.ndarray
    rs: np.ndarray
    body: np.ndarray
    n_in: np.ndarray
    read: np.ndarray
    ins: list[np.ndarray]


# A piece: (kind, grid index, codes (n, k), weight None or (n, 1)), one of
#   _ONE: grid codes (grid.none: nothing), each counted `weight` times (1 with None);
#   _CELLS: grid codes less the first-cell digit (grid.first: nothing), each counted once
#     for the first cell (code + grid.first) and `weight` times for the later cells;
#   _POOLS: ((first cell, source) · V + C) · 16 + a pattern of target levels (bit t: the
#     node is pooled to level index t), each pool counted `weight` times.
_Piece = tuple[int, int, np.ndarray, np.ndarray | None]
# (grid index, grid codes (n, k), count None or (n, 1)): one component per entry.
_Atom = tuple[int, np.ndarray, np.ndarray | None]
_ONE, _CELLS, _POOLS = range(3)
_BB, _PR, _RS, _POOL, _BODY = range(5)


class CostModel:
    """Maps batches of genotypes to per-(op type, part) summed table latencies, fast."""

    def __init__(self, latencies: dict[str, float], settings: DetectorConfig) -> None:
        check_spaces_fit()
        self.latencies = dict(latencies)
        self.settings = settings
        self.comps = Components(self.latencies, settings)
        self._reader = BlockReader()
        # Per shape code: level index, (R, F) digits, (R, F, k, merge) digits; or why the
        # grids cannot take it. Per wiring code: inputs, read mask, largest node, inputs.
        self._shape_tab = np.zeros((0, 3), dtype=np.int64)
        self._shape_err: list[str | None] = []
        self._wiring_tab = np.zeros((0, 3 + MAX_INPUTS), dtype=np.int64)
        self._wiring_err: list[str | None] = []
        self._values: dict[tuple, _Tables] = {}
        self._digits: dict[SearchSpace, dict[str, np.ndarray]] = {}

    # -- reading batches ----------------------------------------------------------------

    def _tabulate(self) -> None:
        for keys, tab, errs, row in (
            (self._reader.shapes, "_shape_tab", self._shape_err, _shape_row),
            (self._reader.wirings, "_wiring_tab", self._wiring_err, _wiring_row),
        ):
            done = len(errs)
            if done == len(keys):
                continue
            rows = []
            for key in keys[done:]:
                try:
                    rows.append(row(key))
                    errs.append(None)
                except GridError as exc:
                    rows.append([0] * getattr(self, tab).shape[1])
                    errs.append(str(exc))
            setattr(self, tab, np.vstack([getattr(self, tab), np.array(rows, dtype=np.int64)]))

    def _genotype_blocks(self, genotypes: Sequence[Genotype], offset: int) -> _Blocks:
        try:
            rb = self._reader.read(genotypes)
        except BlockFieldError as exc:
            raise GridError(
                f"genotype #{offset + exc.genotype}, block {exc.block}: {exc.what}"
            ) from None
        except GenotypeError as exc:
            raise GridError(str(exc)) from None
        _check_genotype_fields(rb.sdo, rb.repeats, rb.num_blocks, offset)
        ci = _index(VALUE_INDEX, rb.channels, "channels")
        self._tabulate()
        for codes, errs in ((rb.shape, self._shape_err), (rb.wiring, self._wiring_err)):
            bad = np.fromiter((errs[c] is not None for c in np.unique(codes).tolist()), bool)
            if bad.any():
                first = int(np.argmax(np.isin(codes, np.unique(codes)[bad])))
                g, b = rb.position(first)
                raise GridError(f"genotype #{offset + g}, block {b}: {errs[codes[first]]}")
        mb = int(rb.num_blocks.max())
        shape = self._shape_tab[rb.padded(rb.shape, mb)]
        wiring = self._wiring_tab[rb.padded(rb.wiring, mb)]
        slot = np.arange(mb)
        maxin = np.where(slot < rb.num_blocks[:, None], wiring[:, :, 2], -1)
        if not (maxin < NUM_CELL_INPUTS + slot).all():
            g, b = np.argwhere(maxin >= NUM_CELL_INPUTS + slot)[0].tolist()
            node = int(maxin[g, b])
            raise GridError(
                f"genotype #{offset + g}, block {b}: input node {node} is not an earlier node"
            )
        n_in = wiring[:, :, 0]
        return _Blocks(
            ci,
            rb.sdo,
            rb.repeats,
            rb.num_blocks,
            shape[:, :, 0],
            shape[:, :, 1],
            shape[:, :, 2],
            n_in,
            wiring[:, :, 1],
            [wiring[:, :, 3 + j] for j in range(int(n_in.max()))],
        )

    def _encoded_blocks(self, batch: EncodedBatch, start: int, stop: int) -> _Blocks:
        grid_of = self._space_digits(batch.space)
        rows: DecodedRows = decode_batch(batch.space, batch.codes[start:stop], first=start)
        n, nb = rows.level.shape
        ci = grid_of["channels"][rows.channel]
        if rows.expansion is None:  # F = C
            fi: np.ndarray = ci[:, None]
        else:
            fi = grid_of["expansions"][rows.expansion]
        rs = rows.level * _V + fi
        body = rs * len(GRID_KERNELS) + grid_of["kernels"][rows.kernel]
        read = np.zeros((n, nb), dtype=np.int64)
        for inp in rows.inputs:  # a block's inputs are distinct nodes: + is |
            read += _READ_BIT[inp]
        return _Blocks(
            ci,
            np.full(n, int(batch.space.sdo), dtype=np.int64),
            batch.repeats[start:stop],
            np.full(n, nb, dtype=np.int64),
            rows.level,
            rs,
            body * len(GRID_MERGES) + grid_of["merges"][rows.merge],
            rows.num_inputs,
            read,
            list(rows.inputs),
        )

    def _space_digits(self, space: SearchSpace) -> dict[str, np.ndarray]:
        """Per choice index of `space`'s channels, expansions, kernels and merges: its
        digit in the grids (the space is checked to fit them once)."""
        digits = self._digits.get(space)
        if digits is None:
            check_space_fits(space)
            digits = {
                "channels": VALUE_INDEX[list(space.channels)],
                "expansions": VALUE_INDEX[list(space.expansions or space.channels)],
                "kernels": KERNEL_INDEX[list(space.kernels)],
                "merges": np.array([GRID_MERGES.index(m) for m in space.merges]),
            }
            self._digits[space] = digits
        return digits

    # -- the live components of a chunk -------------------------------------------------

    def _pieces(self, bl: _Blocks, naive: bool) -> list[_Piece]:
        """The live components of each genotype of a chunk, with multiplicity, as dense
        (n, k) code arrays (see _Piece). With `naive`, every block counts, connected to
        an output or not (the baseline)."""
        n, mb = bl.lv.shape
        nb = bl.nb
        slot = np.arange(mb)
        uniform = int(nb.min()) == mb
        valid = slot < nb[:, None]
        nint = nb - NUM_CELL_INPUTS
        is_out = slot >= nint[:, None]
        if naive:
            live = valid
        else:
            # Bit b of `alive`: block b is live. Blocks only read earlier nodes, so one
            # sweep from the last block back marks everything an output block reaches.
            alive = ((1 << nb) - 1) ^ ((1 << nint) - 1)
            for b in range(mb - 1, -1, -1):
                alive |= bl.read[:, b] * ((alive >> b) & 1)
            live = ((alive[:, None] >> slot) & 1).astype(bool)
        later = (bl.rep - 1)[:, None]
        ci = bl.ci[:, None]
        pieces: list[_Piece] = [(_ONE, _BB, ci, None), (_ONE, _PR, ci, None)]
        # The signature of every node a block can read: cell input i is i, block b is
        # 4 + its level index (so a node's level index is its signature mod 4).
        node_sig = np.empty((n, NUM_CELL_INPUTS + mb), dtype=np.int64)
        node_sig[:, :NUM_CELL_INPUTS] = _T
        node_sig[:, NUM_CELL_INPUTS:] = bl.lv + NUM_CELL_INPUTS
        node_sig = node_sig.reshape(-1)
        row = np.arange(n)[:, None] * (NUM_CELL_INPUTS + mb)
        rs_low = bl.rs * _V + ci + bl.sdo[:, None] * _RS_SDO
        sdo_on = bl.sdo[:, None] == 1
        rs_none = self.comps.resample.first
        pools = []
        for inp in bl.ins:
            live_in = (inp >= 0) & live
            src_sig = node_sig[row + np.maximum(inp, 0)]
            rest = src_sig * _RS_SRC + rs_low
            pieces.append((_CELLS, _RS, np.where(live_in, rest, rs_none), later))
            pools.append((inp, live_in & sdo_on & (bl.lv > (src_sig & 3))))
        rest = (is_out * _BODY_OUT + bl.body * BODY_DIMS[6] + np.maximum(bl.n_in - 1, 0)) * _V
        pieces.append((_CELLS, _BODY, np.where(live, rest + ci, self.comps.body.first), later))
        if bl.sdo.any():
            self._pools(pieces, pools, bl, is_out & valid, later, uniform)
        return pieces

    def _pools(
        self,
        pieces: list[_Piece],
        pools: list[tuple[np.ndarray, np.ndarray]],
        bl: _Blocks,
        outs: np.ndarray,
        later: np.ndarray,
        uniform: bool,
    ) -> None:
        """Count SDO pre-pools once per pooled tensor and target level.

        Each node's pools are a 4-bit pattern of target levels, read off a (genotype,
        node, target) table that every live pooling block marks. A first-cell input is a
        backbone tap (pooled once; its pool to C6's level is C6 itself). An intermediate
        block's node is pooled in every cell (repeats times). An output node of level l
        is the next cell's input node l, and the builder merges a pool of either into one
        op: with A = its own cell's pools and B = those of input node l,
        (repeats - 1)·|A ∪ B| + |A| pools.
        """
        n, mb = bl.lv.shape
        nodes = NUM_CELL_INPUTS + mb
        t_n = len(LEVELS)
        pooled = np.zeros(n * nodes * t_n, dtype=bool)
        row = np.arange(n)[:, None] * (nodes * t_n)
        for inp, sel in pools:
            pooled[(row + inp * t_n + bl.lv)[sel]] = True
        # A node's four flags (one byte each) as one little-endian 32-bit word; the
        # multiply moves byte t to bit 24 + t (every other product lands below bit 24 or
        # past bit 31), so the top byte is the pattern.
        pat = (pooled.view("<u4") * _GATHER_BYTES) >> 24
        pat = pat.reshape(n, nodes).astype(np.int64)
        ci = bl.ci[:, None]
        taps = pat[:, :NUM_CELL_INPUTS] & _TAP_MASK
        pieces.append((_POOLS, _POOL, (_TAP_BASE + ci) * _PATTERNS + taps, None))
        base = ((bl.lv + NUM_CELL_INPUTS) * _V + ci) * _PATTERNS
        own = pat[:, NUM_CELL_INPUTS:]
        pieces.append((_POOLS, _POOL, base + own, None))
        if later.any():
            merged = own.copy()
            if uniform:  # the output blocks are the last four, in level order
                merged[:, -NUM_CELL_INPUTS:] |= pat[:, :NUM_CELL_INPUTS]
            else:
                merged |= np.where(outs, pat.reshape(-1)[row // t_n + bl.lv], 0)
            pieces.append((_POOLS, _POOL, base + merged, later))

    # -- sums ---------------------------------------------------------------------------

    def _tables(self, calibration: Calibration | None, part: int | None) -> _Tables:
        """The value tables for `calibration` (raw with None) and `part` (all with None),
        remade when components were added."""
        scales = None if calibration is None else tuple(calibration.column_scales())
        coefs = None if calibration is None else tuple(calibration.structure_coefs())
        key = (scales, coefs, part)
        have = self._values.get(key)
        if have is not None and have.made == len(self.comps):
            return have
        vecs, parts, missing = self.comps.arrays()
        scal = vecs.sum(axis=1) if scales is None else vecs @ np.asarray(scales)
        if coefs is not None and any(coefs):  # the calibration's structure term
            scal = scal + self.comps.structure() @ np.asarray(coefs)
        if part is not None:
            scal = np.where(parts == part, scal, 0.0)
        tables = _Tables(len(self.comps), self.comps.grids, np.where(missing, np.nan, scal))
        self._values[key] = tables
        return tables

    def _total(self, pieces: list[_Piece], tables: _Tables, n: int) -> np.ndarray:
        out = np.zeros(n)
        for kind, grid, codes, weight in pieces:
            if kind == _CELLS:
                later = int(weight[0, 0]) if len(weight) else 0
                if (weight == later).all():
                    out += tables.cells(grid, later)[codes].sum(axis=1)
                    continue
                first, rest = tables.cells(grid, 0), tables.later(grid)
                w = weight[:, 0]
                out += first[codes].sum(axis=1)
                out += np.where(w > 0, rest[codes].sum(axis=1) * w, 0.0)  # 0 · unmade
                continue
            v = (tables.patterns if kind == _POOLS else tables.grids[grid])[codes]
            if weight is None:
                out += v.sum(axis=1)
            else:
                out += v.sum(axis=1) * weight[:, 0]
        return out

    def _atoms(self, pieces: list[_Piece]) -> list[_Atom]:
        """The pieces as (grid, grid codes, counts) of single components: a first-cell and
        a later-cell code per _CELLS entry, one code per target level of a pattern."""
        atoms: list[_Atom] = []
        grids = self.comps.grids
        for kind, grid, codes, weight in pieces:
            g = grids[grid]
            if kind == _ONE:
                atoms.append((grid, codes, weight))
            elif kind == _CELLS:
                counted = codes < g.first
                atoms.append((grid, np.where(counted, codes + g.first, g.none), None))
                atoms.append((grid, np.where(counted & (weight > 0), codes, g.none), weight))
            else:
                pattern = codes % _PATTERNS
                src = codes // _PATTERNS  # (first, source) · V + C
                for t in range(len(LEVELS)):
                    code = ((src // _V) * len(LEVELS) + t) * _V + src % _V
                    atoms.append((grid, np.where(pattern >> t & 1, code, g.none), weight))
        for grid, codes, _ in atoms:
            grids[grid].ensure(codes)
        return atoms

    def _check_missing(self, atoms: list[_Atom], chunk: _Chunk) -> None:
        """Raise MissingOpError for the first genotype (by index) that needs a component
        with a key the table lacks."""
        _, _, missing = self.comps.arrays()
        if not missing.any():
            return
        worst: tuple[int, int] | None = None
        grids = self.comps.grids
        for grid, codes, _ in atoms:
            ids = grids[grid].ids[codes]
            bad = missing[ids]
            if not bad.any():
                continue
            g = int(np.argmax(bad.any(axis=1)))
            comp = int(ids[g][np.argmax(bad[g])])
            if worst is None or g < worst[0]:
                worst = (g, comp)
        if worst is None:
            return
        key = self.comps.missing_key[worst[1]]
        assert key is not None
        index = chunk.start + worst[0]
        raise MissingOpError(key, index, chunk.genotype(index))

    def _sums(
        self,
        chunk: _Chunk,
        calibration: Calibration | None,
        parts: Sequence[int | None],
    ) -> list[np.ndarray]:
        """Per entry of `parts`: each genotype's summed latency of that part (None: all)."""
        out = [self._total(chunk.pieces, self._tables(calibration, p), chunk.n) for p in parts]
        if any(np.isnan(o).any() for o in out):
            # Components not made yet, or a key the table lacks: make them, or say which.
            self._check_missing(self._atoms(chunk.pieces), chunk)
            out = [self._total(chunk.pieces, self._tables(calibration, p), chunk.n) for p in parts]
        return out

    def _chunks(self, batch: Batch, naive: bool) -> Iterator[_Chunk]:
        """Runs of at most _CHUNK genotypes: bounded memory, arrays that stay in cache."""
        if isinstance(batch, EncodedBatch):
            for start in range(0, len(batch), _CHUNK):
                stop = min(start + _CHUNK, len(batch))
                bl = self._encoded_blocks(batch, start, stop)
                yield _Chunk(start, stop - start, self._pieces(bl, naive), batch.genotype)
            return
        gs = batch if isinstance(batch, list | tuple) else list(batch)
        for start in range(0, len(gs), _CHUNK):
            part = gs[start : start + _CHUNK]
            bl = self._genotype_blocks(part, start)
            yield _Chunk(start, len(part), self._pieces(bl, naive), gs.__getitem__)

    # -- public -------------------------------------------------------------------------

    def predict(
        self, batch: Batch, calibration: Calibration | None = None, *, naive: bool = False
    ) -> np.ndarray:
        out = np.zeros(len(batch))
        for chunk in self._chunks(batch, naive):
            (total,) = self._sums(chunk, calibration, [None])
            out[chunk.start : chunk.start + chunk.n] = total
        if calibration is not None:
            out += calibration.intercept_ms
        return out

    def breakdown(
        self, batch: Batch, calibration: Calibration | None = None, *, naive: bool = False
    ) -> dict[str, np.ndarray]:
        """Per part (backbone, head, predictor) plus the fitted overhead, and the total."""
        n = len(batch)
        out = {name: np.zeros(n) for name in PARTS}
        for chunk in self._chunks(batch, naive):
            sums = self._sums(chunk, calibration, range(len(PARTS)))
            for name, s in zip(PARTS, sums, strict=True):
                out[name][chunk.start : chunk.start + chunk.n] = s
        out["overhead"] = np.full(n, calibration.intercept_ms if calibration else 0.0)
        out["total"] = sum(out[p] for p in (*PARTS, "overhead"))
        return out

    def encode(
        self, batch: Batch, *, naive: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (genotype index, component id, count) triples of the live components.

        With `naive`, every block counts, connected to an output or not (the baseline).
        Not checked for missing table entries (key_counts needs none).
        """
        gs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        cs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        ks: list[np.ndarray] = [np.zeros(0)]
        for chunk in self._chunks(batch, naive):
            for g, c, k in self._triples(self._atoms(chunk.pieces), chunk.n):
                gs.append(g + chunk.start)
                cs.append(c)
                ks.append(k)
        return np.concatenate(gs), np.concatenate(cs), np.concatenate(ks)

    def _triples(
        self, atoms: list[_Atom], n: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per atom: (row, component id, count) of its entries that count."""
        for grid, codes, weight in atoms:
            ids = self.comps.grids[grid].ids[codes]
            k = np.broadcast_to(1.0 if weight is None else weight.astype(np.float64), ids.shape)
            keep = (ids != EMPTY) & (k > 0)
            rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)
            yield rows[keep], ids[keep], k[keep]

    def features(self, batch: Batch, *, naive: bool = False) -> np.ndarray:
        """(n × len(feature_columns())) summed table latencies per (op type, part)."""
        return self._per_component_sums(batch, naive, lambda: self.comps.arrays()[0])

    def structure(self, batch: Batch, *, naive: bool = False) -> np.ndarray:
        """(n × len(STRUCTURE_FEATURES)) structural quantities of the live ops."""
        return self._per_component_sums(batch, naive, self.comps.structure)

    def _per_component_sums(
        self, batch: Batch, naive: bool, matrix: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Per genotype, the sum over its live components of each column of `matrix()`
        (components × columns, read after the chunk's components are made)."""
        out: np.ndarray | None = None
        for chunk in self._chunks(batch, naive):
            atoms = self._atoms(chunk.pieces)
            self._check_missing(atoms, chunk)
            triples = list(self._triples(atoms, chunk.n))
            mat = matrix()
            if out is None:
                out = np.zeros((len(batch), mat.shape[1]))
            for j in range(mat.shape[1]):
                col = out[chunk.start : chunk.start + chunk.n, j]
                for rows, ids, k in triples:
                    col += np.bincount(rows, weights=mat[ids, j] * k, minlength=chunk.n)
        return out if out is not None else np.zeros((0, matrix().shape[1]))

    def key_counts(self, genotype: Genotype, *, naive: bool = False) -> Counter[str]:
        """The live (or, with `naive`, all) op keys of one genotype, with multiplicity."""
        _, comps, counts = self.encode([genotype], naive=naive)
        total: Counter[str] = Counter()
        for c, k in zip(comps.tolist(), counts.tolist(), strict=True):
            for key, m in self.comps.keys[c].items():
                total[key] += int(m * k)
        return total


class _Tables:
    """Latency per code, for one calibration and part: per grid (NaN for a component not
    made yet or with a key the table lacks, 0 for "none"); per later-cell multiplicity L,
    first cell + L × later cells of each _CELLS code; per pool pattern code, the sum over
    its target levels."""

    def __init__(self, made: int, grids: Sequence, scalars: np.ndarray) -> None:
        self.made = made
        self.grids = [np.where(g.ids >= 0, scalars[g.ids], np.nan) for g in grids]
        self._firsts = {i: g.first for i, g in enumerate(grids)}
        self._cells: dict[tuple[int, int], np.ndarray] = {}
        pool = self.grids[_POOL][:-1].reshape(POOL_DIMS)  # first, source, target, C
        by_target = np.moveaxis(pool, 2, -1)[..., None, :]  # first, source, C, 1, target
        bits = (np.arange(_PATTERNS)[:, None] >> _T & 1).astype(bool)  # pattern, target
        self.patterns = np.append(np.where(bits, by_target, 0.0).sum(axis=-1).reshape(-1), 0.0)

    def cells(self, grid: int, later: int) -> np.ndarray:
        """Per _CELLS code: first cell + `later` × later cells."""
        table = self._cells.get((grid, later))
        if table is None:
            first = self._firsts[grid]
            table = self.grids[grid][first : 2 * first]
            if later:  # (not 0 · a later-cell component never made: NaN)
                table = table + later * self.grids[grid][:first]
            table = self._cells[(grid, later)] = np.append(table, 0.0)
        return table

    def later(self, grid: int) -> np.ndarray:
        """Per _CELLS code: one later cell."""
        return np.append(self.grids[grid][: self._firsts[grid]], 0.0)


Batch = Sequence[Genotype] | EncodedBatch


@dataclass
class _Chunk:
    start: int
    n: int
    pieces: list[_Piece]
    genotype: Callable[[int], Genotype]  # batch index → Genotype (for messages)


def _shape_row(key: tuple) -> list[int]:
    """Level index, (R, F) digits and (R, F, k, merge) digits of a block shape, or
    GridError when a value is outside the grids."""
    level, expansion, kernel, merge = key
    for name, value in (("level", level), ("expansion", expansion), ("kernel", kernel)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise GridError(f"{name} {value!r} is not an integer")
    if level not in LEVELS:
        raise GridError(f"level {level!r} is not one of {LEVELS[0]}..{LEVELS[-1]}")
    if expansion not in VALUES:
        raise GridError(f"expansion {expansion!r} is not a value of any search space")
    if kernel not in GRID_KERNELS:
        raise GridError(f"kernel {kernel!r} is not a value of any search space")
    if not isinstance(merge, str) or merge not in GRID_MERGES:
        raise GridError(f"merge {merge!r} is not one of {', '.join(GRID_MERGES)}")
    lv = LEVELS.index(level)
    rs = lv * _V + int(VALUE_INDEX[expansion])
    body = (rs * len(GRID_KERNELS) + int(KERNEL_INDEX[kernel])) * len(GRID_MERGES)
    return [lv, rs, body + GRID_MERGES.index(merge)]


def _wiring_row(inputs: tuple) -> list[int]:
    """Number of inputs, bit mask of the block nodes read, largest node and the inputs
    (-1 padded) of an inputs tuple; whether each node is earlier than the block is checked
    per block, by its position."""
    nodes = NUM_CELL_INPUTS + MAX_BLOCKS
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise GridError(f"{len(inputs)} inputs (the grids hold 1..{MAX_INPUTS})")
    for i in inputs:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < nodes:
            raise GridError(f"input node {i!r} is not an earlier node")
    read = 0
    for i in inputs:
        if i >= NUM_CELL_INPUTS:
            read |= 1 << (int(i) - NUM_CELL_INPUTS)
    padded = [int(i) for i in inputs] + [-1] * (MAX_INPUTS - len(inputs))
    return [len(inputs), read, max(int(i) for i in inputs), *padded]


def _index(table: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    bad = (values < 0) | (values >= len(table))
    idx = table[np.where(bad, 0, values)]
    bad |= idx < 0
    if bad.any():
        raise GridError(f"{what} {int(values[np.argmax(bad)])} is not a value of any search space")
    return idx


def _check_genotype_fields(
    sdo: np.ndarray, rep: np.ndarray, nb: np.ndarray, offset: int = 0
) -> None:
    for what, values, lo, hi in (
        ("sdo", sdo, 0, 1),
        ("repeats", rep, 1, None),
        ("the block count", nb, NUM_CELL_INPUTS, MAX_BLOCKS),
    ):
        bad = (values < lo) | (values > hi) if hi is not None else values < lo
        if bad.any():
            g = int(np.argmax(bad))
            want = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            got = int(values[g])
            raise GridError(f"genotype #{offset + g}: {what} must be {want}, got {got}")
