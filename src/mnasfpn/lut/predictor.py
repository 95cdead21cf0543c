"""Fast table look-ups: a genotype's latency without building its OpGraph.

A detector's live ops split into components whose keys depend on few things:
  * the backbone (with C6) and the predictor: on C only;
  * one input of one block brought to (R, F): on the input node's (level, channels), R,
    F, C and SDO; the body of a block (merge, ReLU6, depthwise, project, residual): on R,
    F, k, merge, the number of inputs, C and whether it is an output block. The first cell
    reads backbone taps, later cells read C-channel nodes, so each has a first-cell and a
    later-cell component;
  * an SDO pre-pool (max-pool of a node itself): the builder merges identical weightless
    ops, so one pool of a tensor by one stride serves every block that asks for it, in its
    own cell and (for a cell output) in the next cell; pooling C5 by 2 in the first cell is
    the backbone's C6 pool. These are counted once per (tensor, stride).
Each component's key multiset is made once, by the IR emitters `build_opgraph` uses
(`mobilenet_v2`, `mnasfpn_block`, `ssd_predictor`), and memoized in dense signature grids.

A batch is read from the Python objects once: each block becomes two small integer codes,
its shape (level, expansion, kernel, merge) and its wiring (inputs), through two memo dicts
of a few hundred entries (each distinct value is checked against the grids once). That read
is most of the cost of a batch (about 0.2 µs per block here); everything after it is numpy
over (genotype × block) arrays: liveness as a bit mask swept from the last block back, the
signature codes of each block's body and resampled inputs, and each genotype's distinct
pre-pools as bits of two 64-bit sets.

Liveness (paper §3.4, connectivity): every cell's output blocks are live: the last
cell's feed the predictor, and each later cell's output blocks add their cell input as a
residual (all C channels), which keeps the earlier cell's outputs alive; the first cell
adds C6 at level 6, which keeps the whole backbone alive. So a block is live iff an output
block of the same cell reaches it, the same in every cell. Tests check that this fast
path equals `build_opgraph(g).live_ops()` (and, naive, all ops) on random genotypes of
every space.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain, repeat
from operator import attrgetter

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import level_size, mnasfpn_block, mobilenet_v2, ssd_predictor
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.graph import GraphBuilder, Tensor
from mnasfpn.ir.ops import MODEL_INPUT, PARTS
from mnasfpn.lut.calibration import STRUCTURE_FEATURES, Calibration, feature_columns
from mnasfpn.searchspace.genotype import LEVELS, MERGES, NUM_CELL_INPUTS, Block, Genotype
from mnasfpn.searchspace.spaces import CHANNELS, EXPANSIONS, KERNELS, SPACES, SearchSpace


class GridError(MnasfpnError, ValueError):
    """A genotype, or a whole search space, that the dense signature grids cannot encode:
    encoding it anyway would alias another entry and give a silently wrong latency."""


_COLUMNS = feature_columns()
_COLUMN_INDEX = {c: i for i, c in enumerate(_COLUMNS)}
_MAX_BLOCKS = 16
# Channel and expansion values of every space (F = C in some), and the other choices.
_VALUES: tuple[int, ...] = tuple(sorted(set(CHANNELS) | set(EXPANSIONS)))
_KERNELS: tuple[int, ...] = KERNELS
_MERGES: tuple[str, ...] = MERGES
_MERGE_INDEX = {m: i for i, m in enumerate(_MERGES)}
# The widest block of any space (inputs per block), and at least the paper's two.
_MAX_INPUTS = max(2, *(sp.max_inputs for sp in SPACES.values()))
_VALUE_INDEX = np.full(max(_VALUES) + 1, -1, dtype=np.int64)
_VALUE_INDEX[list(_VALUES)] = np.arange(len(_VALUES))
_KERNEL_INDEX = np.full(max(_KERNELS) + 1, -1, dtype=np.int64)
_KERNEL_INDEX[list(_KERNELS)] = np.arange(len(_KERNELS))
# Dense signature grids (mixed radix): resample (first, sdo, src node, R, F, C) and block
# body (first, is_output, R, F, k, merge, inputs - 1, C).
_RS_DIMS = (2, 2, NUM_CELL_INPUTS + len(LEVELS), len(LEVELS), len(_VALUES), len(_VALUES))
_POOL_DIMS = (2, NUM_CELL_INPUTS + len(LEVELS), len(LEVELS), len(_VALUES))
_BODY_DIMS = (
    2, 2, len(LEVELS), len(_VALUES), len(_KERNELS), len(_MERGES), _MAX_INPUTS, len(_VALUES)
)  # fmt: skip
# The leading ("first cell") digit's weight in each grid, and the output digit's in the body.
_STRIDES = {dims: int(np.prod(dims[1:])) for dims in (_RS_DIMS, _BODY_DIMS)}
_BODY_OUT_STEP = int(np.prod(_BODY_DIMS[2:6]))
_CHANNELS = attrgetter("channels")
_SDO = attrgetter("sdo")
_REPEATS = attrgetter("repeats")
_BLOCKS = attrgetter("blocks")
# A block is memoized as two small codes: its shape (level, expansion, kernel, merge) and
# its wiring (the inputs tuple). Each has a few hundred values at most, so both memo dicts
# and their tables stay in cache, unlike one memo of whole blocks (tens of thousands).
_SHAPE_KEY = attrgetter("level", "expansion", "kernel", "merge")
_INPUTS = attrgetter("inputs")
# Columns of the shape table: level, expansion and kernel (grid indices), merge index.
_S_LEVEL, _S_EXPANSION, _S_KERNEL, _S_MERGE = range(4)
# Columns of the wiring table: number of inputs, bit mask of the block nodes read (bit b:
# node 4 + b), largest input node.
_W_INPUTS, _W_READ, _W_MAXIN = range(3)
# Genotypes per numpy pass: bounds the memory of a batch; about the fastest size here.
_CHUNK = 4096
# Component 0 has no ops: padding and dead entries of the dense layouts point at it.
_EMPTY = 0
# A count of one for every entry of a piece (the sum skips the multiplication).
_ONE = np.ones(1)
# Bit k set, for building the pool sets.
_BITS = np.arange(64, dtype=np.uint64)
_POW2 = np.left_shift(np.uint64(1), _BITS)
# Pool signature codes (first, source node, target, C) of each bit of the pool sets, less
# C and (intermediate blocks) 4 + the block's level: see CostModel._pools.
_K = np.arange(64)
_OWN_POOL_CODE = np.where(
    _K < 16,
    ((_POOL_DIMS[1] + _K // 4) * len(LEVELS) + _K % 4) * len(_VALUES),
    (NUM_CELL_INPUTS * len(LEVELS) + _K % 4) * len(_VALUES),
)
_OUTS_POOL_CODE = ((NUM_CELL_INPUTS + (_K % 16) // 4) * len(LEVELS) + _K % 4) * len(_VALUES)
# (genotype rows or None for dense, component ids, counts): see CostModel._pieces.
_Piece = tuple[np.ndarray | None, np.ndarray, np.ndarray]


def check_space_fits(space: SearchSpace) -> None:
    """Raise GridError unless every genotype of `space` fits the dense grids (run for
    every registered space at import, and again when a cost model is made, so a space
    added later is checked too)."""
    problems = []
    fixed = space.fixed.blocks if space.fixed is not None else ()
    widths = set(space.channels) | set(space.expansions or ()) | {b.expansion for b in fixed}
    if space.fixed is not None:
        widths.add(space.fixed.channels)
    if not widths <= set(_VALUES):
        problems.append(f"widths {sorted(widths - set(_VALUES))}")
    kernels = set(space.kernels) | {b.kernel for b in fixed}
    if not kernels <= set(_KERNELS):
        problems.append(f"kernels {sorted(kernels - set(_KERNELS))}")
    merges = set(space.merges) | {b.merge for b in fixed}
    if not merges <= set(_MERGES):
        problems.append(f"merges {sorted(merges - set(_MERGES))}")
    inputs = max([space.max_inputs, *(len(b.inputs) for b in fixed)])
    if inputs > _MAX_INPUTS:
        problems.append(f"{inputs} inputs per block (grid: {_MAX_INPUTS})")
    blocks = len(fixed) if fixed else space.num_intermediate + len(LEVELS)
    if blocks > _MAX_BLOCKS:
        problems.append(f"{blocks} blocks (grid: {_MAX_BLOCKS})")
    if problems:
        raise GridError(
            f"search space {space.name!r} does not fit the latency predictor's grids: "
            f"{'; '.join(problems)}; extend the grids in mnasfpn/lut/predictor.py"
        )


def check_spaces_fit(spaces: Mapping[str, SearchSpace] = SPACES) -> None:
    for space in spaces.values():
        check_space_fits(space)


def _unflatten(flat: int, dims: Sequence[int]) -> list[int]:
    out = []
    for d in reversed(dims):
        out.append(flat % d)
        flat //= d
    return out[::-1]


def _index(table: np.ndarray, values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.int64)
    bad = (v < 0) | (v >= len(table))
    idx = table[np.where(bad, 0, v)]
    bad |= idx < 0
    if bad.any():
        raise GridError(f"{what} {int(v[np.argmax(bad)])} is not a value of any search space")
    return idx


# What a table was measured for: the ops of one detector configuration. The name is kept
# for the table code; the stored meta has the same four fields.
Settings = DetectorConfig


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
    """Maps genotypes to per-(op type, part) summed table latencies, fast."""

    def __init__(self, latencies: Mapping[str, float], settings: DetectorConfig) -> None:
        check_spaces_fit()
        self.latencies = dict(latencies)
        self.settings = settings
        s = settings.input_size
        g = GraphBuilder((s, s, 3))
        taps = mobilenet_v2(g, g.input, settings.alpha)
        self._tap_channels = {lv: t.shape[2] for lv, t in taps.items()}
        self._comp_index: dict[tuple, int] = {}
        self._comp_keys: list[Counter[str]] = []
        self._comp_part: list[int] = []
        self._comp_vec: list[np.ndarray] = []
        self._comp_missing: list[str | None] = []
        self._comp_struct: list[np.ndarray] = []  # STRUCTURE_FEATURES of its ops
        self._struct: np.ndarray | None = None
        self._fixed_memo: dict[int, tuple[int, int]] = {}
        self._bb_table = np.full(len(_VALUES), -1, dtype=np.int64)
        self._pr_table = np.full(len(_VALUES), -1, dtype=np.int64)
        self._rs_table = np.full(int(np.prod(_RS_DIMS)), -1, dtype=np.int64)
        self._pool_table = np.full(int(np.prod(_POOL_DIMS)), -1, dtype=np.int64)
        self._body_table = np.full(int(np.prod(_BODY_DIMS)), -1, dtype=np.int64)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._scalars: tuple[tuple, np.ndarray] | None = None
        self._add_component(("empty",), [])
        # Shape and wiring tables: row 0 is "no block" (padding of shorter genotypes).
        self._shape_code: dict[tuple, int] = {}
        self._shapes = np.zeros((1, 4), dtype=np.int64)
        self._wiring_code: dict[tuple, int] = {}
        self._wirings = np.array([[0, 0, -1]], dtype=np.int64)
        self._wiring_inputs = np.full((1, _MAX_INPUTS), -1, dtype=np.int64)
        self._shape_cols: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._wiring_cols: tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]] | None
        self._wiring_cols = None

    # -- components -------------------------------------------------------------------

    def _add_component(self, sig: tuple, ops: Sequence) -> int:
        idx = self._comp_index.get(sig)
        if idx is not None:
            return idx
        keys: Counter[str] = Counter(op.key for op in ops)
        parts = {op.part for op in ops} or {PARTS[0]}
        assert len(parts) == 1, parts
        vec = np.zeros(len(_COLUMNS))
        missing = None
        for op in ops:
            lat = self.latencies.get(op.key)
            if lat is None:
                missing = missing or op.key
                continue
            vec[_COLUMN_INDEX[(op.type, op.part)]] += lat
        idx = len(self._comp_keys)
        self._comp_index[sig] = idx
        self._comp_keys.append(keys)
        self._comp_part.append(PARTS.index(parts.pop()))
        self._comp_vec.append(vec)
        self._comp_missing.append(missing)
        self._comp_struct.append(structure_of(ops))
        self._arrays = None
        return idx

    def _fixed(self, channels: int) -> tuple[int, int]:
        """Component ids of the backbone (with C6) and the predictor for width C."""
        pair = self._fixed_memo.get(channels)
        if pair is not None:
            return pair
        st = self.settings
        s = st.input_size
        g = GraphBuilder((s, s, 3))
        taps = mobilenet_v2(g, g.input, st.alpha)
        c6 = g.maxpool(taps[5], stride=2, part="backbone", name="backbone/c6/maxpool")
        g.conv(c6, channels, part="backbone", name="backbone/c6/conv1x1")
        backbone = self._add_component(("backbone", channels), g.ops)
        g = GraphBuilder((s, s, 3))
        feats = [self._tensor(lv, channels, node=i) for i, lv in enumerate(LEVELS)]
        ssd_predictor(g, feats, st.predictor, st.num_classes)
        predictor = self._add_component(("predictor", channels), g.ops)
        pair = (backbone, predictor)
        self._fixed_memo[channels] = pair
        return pair

    def _tensor(self, level: int, channels: int, node: int = 0) -> Tensor:
        # Each stand-in node gets its own (negative) id, so the builder's merging of
        # identical weightless ops never joins two different nodes.
        n = level_size(self.settings.input_size, level)
        return Tensor(MODEL_INPUT - 1 - node, (n, n, channels))

    def _cell_inputs(self, first: bool, channels: int) -> list[Tensor]:
        return [
            self._tensor(
                lv,
                self._tap_channels[lv] if first and lv in self._tap_channels else channels,
                node=i,
            )
            for i, lv in enumerate(LEVELS)
        ]

    def _emit_block(
        self,
        first: bool,
        channels: int,
        sdo: bool,
        is_output: bool,
        level: int,
        expansion: int,
        kernel: int,
        merge: str,
        in_sigs: Sequence[int],
    ) -> list:
        """The ops of one block, made by `mnasfpn_block` itself."""
        cell_in = self._cell_inputs(first, channels)
        nodes = list(cell_in)
        inputs = []
        for s in in_sigs:
            if s < NUM_CELL_INPUTS:
                inputs.append(s)
            else:
                nodes.append(self._tensor(LEVELS[s - NUM_CELL_INPUTS], channels, len(nodes)))
                inputs.append(len(nodes) - 1)
        residual = None
        if is_output:
            r = cell_in[level - LEVELS[0]]
            if r.shape[2] == channels:
                residual = r
        g = GraphBuilder((self.settings.input_size,) * 2 + (3,))
        block = Block(tuple(inputs), level, expansion, kernel, merge)
        mnasfpn_block(g, block, nodes, channels, sdo=sdo, residual=residual, name="head/block")
        return g.ops

    def _resample_ops(
        self, first: int, sdo: int, src: int, r: int, f: int, c: int
    ) -> tuple[list, list]:
        """Bringing one input node (signature `src`) to (R, F): the block's `in0` ops, split
        into the SDO pre-pool that reads the node itself (shared by every block of the cell
        that pools the same node by the same stride) and the rest."""
        ops = self._emit_block(
            bool(first), _VALUES[c], bool(sdo), False, LEVELS[r], _VALUES[f], 3, "add", [src]
        )
        ops = [op for op in ops if op.is_block_input]
        pre = [op for op in ops if op.type == "maxpool" and op.inputs[0] < MODEL_INPUT]
        rest = [op for op in ops if op not in pre]
        return pre, rest

    def _resample_component(self, flat: int) -> int:
        _, rest = self._resample_ops(*_unflatten(flat, _RS_DIMS))
        return self._add_component(("resample", flat), rest)

    def _pool_component(self, flat: int) -> int:
        first, src, r, c = _unflatten(flat, _POOL_DIMS)
        pre, _ = self._resample_ops(first, 1, src, r, 0, c)
        assert len(pre) == 1, pre
        return self._add_component(("pool", flat), pre)

    def _body_component(self, flat: int) -> int:
        """Merge + ReLU6, depthwise, project and residual of a block (all but its inputs)."""
        first, is_out, r, f, k, merge, n_in, c = _unflatten(flat, _BODY_DIMS)
        ops = self._emit_block(
            bool(first),
            _VALUES[c],
            True,
            bool(is_out),
            LEVELS[r],
            _VALUES[f],
            _KERNELS[k],
            _MERGES[merge],
            list(range(n_in + 1)),
        )
        ops = [op for op in ops if not op.is_block_input]
        return self._add_component(("body", flat), ops)

    def _matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per component: latency per feature column, part index, has-a-missing-key."""
        if self._arrays is None:
            self._arrays = (
                np.array(self._comp_vec).reshape(-1, len(_COLUMNS)),
                np.array(self._comp_part, dtype=np.int64),
                np.array([m is not None for m in self._comp_missing], dtype=bool),
            )
        return self._arrays

    # -- blocks -----------------------------------------------------------------------

    def _new_shape(self, key: tuple) -> int:
        """Check one distinct (level, expansion, kernel, merge) and give it a row of the
        shape table; a value outside the grids raises GridError (the caller says where)."""
        level, expansion, kernel, merge = key
        for name, value in (("level", level), ("expansion", expansion), ("kernel", kernel)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise GridError(f"{name} {value!r} is not an integer")
        if level not in LEVELS:
            raise GridError(f"level {level!r} is not one of {LEVELS[0]}..{LEVELS[-1]}")
        if expansion not in _VALUES:
            raise GridError(f"expansion {expansion!r} is not a value of any search space")
        if kernel not in _KERNELS:
            raise GridError(f"kernel {kernel!r} is not a value of any search space")
        if merge not in _MERGE_INDEX:
            raise GridError(f"merge {merge!r} is not one of {', '.join(_MERGES)}")
        row = (LEVELS.index(level), _VALUE_INDEX[expansion], _KERNEL_INDEX[kernel])
        self._shapes = np.vstack([self._shapes, [*row, _MERGE_INDEX[merge]]])
        code = self._shape_code[key] = len(self._shapes) - 1
        return code

    def _new_wiring(self, inputs: tuple) -> int:
        """Check one distinct inputs tuple and give it a row of the wiring table (whether
        each node is earlier than the block is checked per block, by its position)."""
        nodes = NUM_CELL_INPUTS + _MAX_BLOCKS
        if not 1 <= len(inputs) <= _MAX_INPUTS:
            raise GridError(f"{len(inputs)} inputs (the grids hold 1..{_MAX_INPUTS})")
        for i in inputs:
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < nodes:
                raise GridError(f"input node {i!r} is not an earlier node")
        read = 0
        for i in inputs:
            if i >= NUM_CELL_INPUTS:
                read |= 1 << (int(i) - NUM_CELL_INPUTS)
        self._wirings = np.vstack([self._wirings, [len(inputs), read, max(inputs)]])
        padded = np.full((1, _MAX_INPUTS), -1, dtype=np.int64)
        padded[0, : len(inputs)] = inputs
        self._wiring_inputs = np.vstack([self._wiring_inputs, padded])
        code = self._wiring_code[inputs] = len(self._wirings) - 1
        return code

    def _block_codes(
        self, block_lists: list, nb: np.ndarray, offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shape and wiring codes of every block, in genotype order: two dict look-ups per
        block; each distinct shape and wiring is checked and tabulated once."""
        blocks = list(chain.from_iterable(block_lists))
        total = len(blocks)
        out = []
        for memo, field, new in (
            (self._shape_code, _SHAPE_KEY, self._new_shape),
            (self._wiring_code, _INPUTS, self._new_wiring),
        ):
            try:
                codes = np.fromiter(
                    map(memo.get, map(field, blocks), repeat(-1)), dtype=np.int64, count=total
                )
            except TypeError:  # an unhashable field (a list of inputs, say)
                codes = np.full(total, -1, dtype=np.int64)
            for i in np.flatnonzero(codes < 0).tolist():
                key = field(blocks[i])
                try:
                    code = memo.get(key)
                    if code is None:
                        code = new(key)
                except (GridError, TypeError) as exc:
                    g, slot = _position(nb, i)
                    what = exc if isinstance(exc, GridError) else f"{key!r} is not a tuple"
                    raise GridError(f"genotype #{offset + g}, block {slot}: {what}") from None
                codes[i] = code
            out.append(codes)
        return out[0], out[1]

    # -- per-genotype encoding --------------------------------------------------------

    def _lookup(
        self,
        table: np.ndarray,
        flat: np.ndarray,
        make: Callable[[int], int],
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Component ids of signature codes (made on first use); entries outside `mask`
        get the empty component, and no component is made for them."""
        ids = table[flat]
        if mask is not None:
            ids = np.where(mask, ids, _EMPTY)
        todo = ids < 0
        if todo.any():
            for v in np.unique(flat[todo]).tolist():
                table[v] = make(v)
            ids = table[flat]
            if mask is not None:
                ids = np.where(mask, ids, _EMPTY)
        return ids

    def _pieces(
        self, genotypes: Sequence[Genotype], *, naive: bool = False, offset: int = 0
    ) -> list[_Piece]:
        """The live components of each genotype, with multiplicity, as pieces.

        A piece is (rows, component ids, counts). With rows None, ids is an array whose
        first axis is the genotype (n, ...) and counts broadcasts against it; otherwise the
        three are flat and rows names each entry's genotype. With `naive`, every block
        counts, connected to an output or not (the baseline). `offset` is the index of
        genotypes[0] in the caller's batch (for messages).
        """
        n = len(genotypes)
        if n == 0:
            return []
        chan = np.fromiter(map(_CHANNELS, genotypes), dtype=np.int64, count=n)
        sdo = np.fromiter(map(_SDO, genotypes), dtype=np.int64, count=n)
        rep = np.fromiter(map(_REPEATS, genotypes), dtype=np.int64, count=n)
        block_lists = list(map(_BLOCKS, genotypes))
        nb = np.fromiter(map(len, block_lists), dtype=np.int64, count=n)
        _check_genotype_fields(sdo, rep, nb, offset)
        ci = _index(_VALUE_INDEX, chan, "channels")
        shape_codes, wiring_codes = self._block_codes(block_lists, nb, offset)
        mb = int(nb.max())
        slot = np.arange(mb)
        valid = slot < nb[:, None]
        if int(nb.min()) == mb:  # the usual case: one block count in the batch
            sc = shape_codes.reshape(n, mb)
            wc = wiring_codes.reshape(n, mb)
        else:
            sc = np.zeros((n, mb), dtype=np.int64)  # row 0: no block
            wc = np.zeros((n, mb), dtype=np.int64)
            sc[valid] = shape_codes  # row-major order is the order of the blocks
            wc[valid] = wiring_codes
        lv_of, rs_of, body_of = self._shape_columns()
        nin_of, read_of, maxin_of, inputs_of = self._wiring_columns()
        maxin = maxin_of[wc]
        if not (maxin < NUM_CELL_INPUTS + slot).all():
            g, b = np.argwhere(maxin >= NUM_CELL_INPUTS + slot)[0].tolist()
            node = int(maxin[g, b])
            raise GridError(
                f"genotype #{offset + g}, block {b}: input node {node} is not an earlier node"
            )
        lv = lv_of[sc]
        n_in = nin_of[wc]
        # One (n, mb) array per input slot: the node it reads, -1 past a block's inputs.
        ins = [col[wc] for col in inputs_of[: int(n_in.max())]]
        nint = nb - NUM_CELL_INPUTS
        is_out = valid & (slot >= nint[:, None])
        if naive:
            live = valid
        else:
            # Bit b of `alive`: block b is live. Blocks only read earlier nodes, so one
            # sweep from the last block back marks everything an output block reaches.
            read = read_of[wc]
            alive = ((1 << nb) - 1) ^ ((1 << nint) - 1)
            for b in range(mb - 1, -1, -1):
                alive |= read[:, b] * ((alive >> b) & 1)
            live = ((alive[:, None] >> slot) & 1).astype(bool)
        later = rep - 1
        pieces: list[_Piece] = []
        bb_ids = self._lookup(self._bb_table, ci, lambda c: self._fixed(_VALUES[c])[0])
        pr_ids = self._lookup(self._pr_table, ci, lambda c: self._fixed(_VALUES[c])[1])
        pieces.append((None, np.stack([bb_ids, pr_ids], axis=1), _ONE))
        # Resampled inputs and block bodies, once for the first cell and once (with
        # multiplicity repeats - 1) for the later ones: `first` is the leading digit.
        v = len(_VALUES)
        rs_low = rs_of[sc] * v + ci[:, None]  # the (R, F, C) digits
        rs_step = _RS_DIMS[3] * v * v
        sdo_on = sdo[:, None] == 1
        pooled = []
        for inp in ins:
            live_in = (inp >= 0) & live
            from_block = inp >= NUM_CELL_INPUTS
            node_level = np.take_along_axis(lv, np.maximum(inp - NUM_CELL_INPUTS, 0), axis=1)
            src_level = np.where(from_block, node_level, inp)
            src_sig = src_level + NUM_CELL_INPUTS * from_block
            rest = (sdo[:, None] * _RS_DIMS[2] + src_sig) * rs_step + rs_low
            self._both_cells(
                pieces, rest, live_in, later, self._rs_table, _RS_DIMS, self._resample_component
            )
            # SDO pre-pools: on the node itself, merged across blocks by the builder.
            pooled.append(live_in & sdo_on & (lv > src_level))
        rest = (is_out * _BODY_OUT_STEP + body_of[sc]) * _BODY_DIMS[6]
        rest = (rest + np.maximum(n_in - 1, 0)) * v + ci[:, None]
        self._both_cells(
            pieces, rest, live, later, self._body_table, _BODY_DIMS, self._body_component
        )
        if sdo.any():
            self._pools(pieces, pooled, ins, lv, ci, nint, rep)
        return pieces

    def _shape_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per shape code: level index, the (R, F) digits of a resample signature and the
        (R, F, k, merge) digits of a body signature."""
        if self._shape_cols is None or len(self._shape_cols[0]) != len(self._shapes):
            t = self._shapes
            lv, fi = t[:, _S_LEVEL], t[:, _S_EXPANSION]
            rs = lv * len(_VALUES) + fi
            body = (rs * _BODY_DIMS[4] + t[:, _S_KERNEL]) * _BODY_DIMS[5] + t[:, _S_MERGE]
            self._shape_cols = (lv.copy(), rs, body)
        return self._shape_cols

    def _wiring_columns(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per wiring code: number of inputs, read mask, largest input, and each input."""
        if self._wiring_cols is None or len(self._wiring_cols[0]) != len(self._wirings):
            t = self._wirings
            inputs = [self._wiring_inputs[:, j].copy() for j in range(_MAX_INPUTS)]
            self._wiring_cols = (
                t[:, _W_INPUTS].copy(),
                t[:, _W_READ].copy(),
                t[:, _W_MAXIN].copy(),
                inputs,
            )
        return self._wiring_cols

    def _both_cells(
        self,
        pieces: list[_Piece],
        rest: np.ndarray,
        live: np.ndarray,
        later: np.ndarray,
        table: np.ndarray,
        dims: Sequence[int],
        make: Callable[[int], int],
    ) -> None:
        stride = _STRIDES[dims]
        pieces.append((None, self._lookup(table, rest + stride, make, live), _ONE))
        if (later > 0).any():
            more = later[:, None]
            ids = self._lookup(table, rest, make, live & (more > 0))
            pieces.append((None, ids, more.astype(np.float64)))

    def _pools(
        self,
        pieces: list[_Piece],
        pooled: list[np.ndarray],
        ins: list[np.ndarray],
        lv: np.ndarray,
        ci: np.ndarray,
        nint: np.ndarray,
        rep: np.ndarray,
    ) -> None:
        """Count SDO pre-pools once per pooled tensor and target level.

        The builder merges identical max-pools of one tensor, also across cells: a cell's
        output node is the next cell's input node, so a pool of it by the blocks of either
        cell is one op. `pooled[j]` marks the blocks whose input j pools (n × blocks).
        Each genotype's distinct pools are bits of two 64-bit sets:
          own: bit 4·node + t for the first cell's inputs (backbone taps and C6; pooling
            C5 by 2 is C6 itself), bit 16 + 4·b + t for intermediate block b (every cell);
          outs: bit 4·l + t for the output node of level l pooled in its cell (A), bit
            16 + 4·l + t for it or cell input l pooled in a later cell (A ∪ B):
            (R-1)·|A ∪ B| + |A| pools.
        """
        n = len(lv)
        later = rep - 1
        own = np.zeros(n, dtype=np.uint64)
        outs = np.zeros(n, dtype=np.uint64)
        t = lv
        for p, inp in zip(pooled, ins, strict=True):
            if not p.any():
                continue
            is_input = inp < NUM_CELL_INPUTS
            blk = inp - NUM_CELL_INPUTS
            is_out = blk >= nint[:, None]
            key = np.where(is_input, 4 * inp + t, 16 + 4 * blk + t)
            sel = p & ~is_out & ~(is_input & (inp == 2) & (t == 3))
            own |= np.bitwise_or.reduce(np.where(sel, _POW2[key & 63], 0), axis=1)
            key = 4 * np.where(is_input, inp, blk - nint[:, None]) + t
            a = np.where(p & is_out, _POW2[key & 15], 0)
            u = np.where(p & (is_out | is_input) & (later[:, None] > 0), _POW2[16 + (key & 15)], 0)
            outs |= np.bitwise_or.reduce(a | u, axis=1)
        v = len(_VALUES)
        width = 16 + 4 * int(nint.max())
        for bits, is_own in ((own, True), (outs, False)):
            if not bits.any():
                continue
            shifts = _BITS[:width] if is_own else _BITS[:32]
            g, k = np.nonzero((bits[:, None] >> shifts) & np.uint64(1))
            if is_own:
                code = _OWN_POOL_CODE[k] + ci[g]
                inner = k >= 16
                code[inner] += lv[g[inner], (k[inner] - 16) // 4] * (len(LEVELS) * v)
                counts = np.where(inner, rep[g], 1)
            else:
                code = _OUTS_POOL_CODE[k] + ci[g]
                counts = np.where(k < 16, 1, later[g])
            ids = self._lookup(self._pool_table, code, self._pool_component)
            pieces.append((g, ids, counts.astype(np.float64)))

    def _check_missing(
        self, genotypes: Sequence[Genotype], pieces: list[_Piece], offset: int = 0
    ) -> None:
        """Raise MissingOpError for the first genotype (by index) that needs a component
        with a key the table lacks."""
        _, _, missing = self._matrices()
        if not missing.any():
            return
        n = len(genotypes)
        worst: tuple[int, int] | None = None
        for rows, ids, _counts in pieces:
            bad = missing[ids]
            if not bad.any():
                continue
            if rows is None:
                hit = bad.reshape(n, -1).any(axis=1)
                g = int(np.argmax(hit))
                comp = int(ids[g].reshape(-1)[np.argmax(bad[g].reshape(-1))])
            else:
                first = int(np.argmin(np.where(bad, rows, n)))
                g, comp = int(rows[first]), int(ids[first])
            if worst is None or g < worst[0]:
                worst = (g, comp)
        assert worst is not None
        key = self._comp_missing[worst[1]]
        assert key is not None
        raise MissingOpError(key, offset + worst[0], genotypes[worst[0]])

    def _chunks(
        self, genotypes: Sequence[Genotype], naive: bool
    ) -> Iterator[tuple[int, int, list[_Piece]]]:
        """(start, size, pieces) of each run of at most _CHUNK genotypes, checked for
        missing table entries: bounded memory, and arrays that stay in cache."""
        if not isinstance(genotypes, list | tuple):
            genotypes = list(genotypes)
        for start in range(0, len(genotypes), _CHUNK):
            part = genotypes[start : start + _CHUNK]
            pieces = self._pieces(part, naive=naive, offset=start)
            self._check_missing(part, pieces, start)
            yield start, len(part), pieces

    def _sum(self, pieces: list[_Piece], scalars: np.ndarray, n: int) -> np.ndarray:
        """Per genotype: the sum over its components of `scalars[component]` × count."""
        out = np.zeros(n)
        for rows, ids, counts in pieces:
            s = scalars[ids]
            if counts is not _ONE:
                s = s * counts
            if rows is None:
                out += s.reshape(n, -1).sum(axis=1)
            else:
                out += np.bincount(rows, weights=s, minlength=n)
        return out

    def encode(
        self, genotypes: Sequence[Genotype], *, naive: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (genotype index, component id, count) triples of the live components.

        With `naive`, every block counts, connected to an output or not (the baseline).
        Not checked for missing table entries (key_counts needs none).
        """
        gs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        cs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        ks: list[np.ndarray] = [np.zeros(0)]
        if not isinstance(genotypes, list | tuple):
            genotypes = list(genotypes)
        for start in range(0, len(genotypes), _CHUNK):
            part = genotypes[start : start + _CHUNK]
            n = len(part)
            for rows, ids, counts in self._pieces(part, naive=naive, offset=start):
                if rows is None:
                    full = np.broadcast_to(np.asarray(counts, dtype=np.float64), ids.shape)
                    rows = np.broadcast_to(
                        np.arange(n).reshape((n,) + (1,) * (ids.ndim - 1)), ids.shape
                    )
                    keep = ids != _EMPTY
                    rows, ids, counts = rows[keep], ids[keep], full[keep]
                gs.append(rows + start)
                cs.append(ids)
                ks.append(np.asarray(counts, dtype=np.float64))
        return np.concatenate(gs), np.concatenate(cs), np.concatenate(ks)

    def features(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """(n × len(feature_columns())) summed table latencies per (op type, part)."""
        out = np.zeros((len(genotypes), len(_COLUMNS)))
        for start, n, pieces in self._chunks(genotypes, naive):
            vecs, _, _ = self._matrices()
            for j in range(vecs.shape[1]):
                out[start : start + n, j] = self._sum(pieces, vecs[:, j], n)
        return out

    def _structure_matrix(self) -> np.ndarray:
        if self._struct is None or len(self._struct) != len(self._comp_struct):
            self._struct = np.array(self._comp_struct).reshape(-1, len(STRUCTURE_FEATURES))
        return self._struct

    def structure(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """(n × len(STRUCTURE_FEATURES)) structural quantities of the live ops."""
        out = np.zeros((len(genotypes), len(STRUCTURE_FEATURES)))
        for start, n, pieces in self._chunks(genotypes, naive):
            mat = self._structure_matrix()
            for j in range(mat.shape[1]):
                out[start : start + n, j] = self._sum(pieces, mat[:, j], n)
        return out

    def component_scalars(self, calibration: Calibration | None) -> np.ndarray:
        """Per component: its latency through `calibration`'s column scales (raw sum with
        None). Cached by the scales and the component count (components only grow)."""
        vecs, _, _ = self._matrices()
        scales = None if calibration is None else tuple(calibration.column_scales())
        coefs = None if calibration is None else tuple(calibration.structure_coefs())
        key = (scales, coefs, len(vecs))
        if self._scalars is None or self._scalars[0] != key:
            out = vecs.sum(axis=1) if scales is None else vecs @ np.asarray(scales)
            if coefs is not None and any(coefs):
                out = out + self._structure_matrix() @ np.asarray(coefs)
            self._scalars = (key, out)
        return self._scalars[1]

    def predict(
        self,
        genotypes: Sequence[Genotype],
        calibration: Calibration | None = None,
        *,
        naive: bool = False,
    ) -> np.ndarray:
        out = np.zeros(len(genotypes))
        for start, n, pieces in self._chunks(genotypes, naive):
            out[start : start + n] = self._sum(pieces, self.component_scalars(calibration), n)
        if calibration is not None:
            out += calibration.intercept_ms
        return out

    def breakdown(
        self,
        genotypes: Sequence[Genotype],
        calibration: Calibration | None = None,
        *,
        naive: bool = False,
    ) -> dict[str, np.ndarray]:
        """Per part (backbone, head, predictor) plus the fitted overhead, and the total."""
        n = len(genotypes)
        out = {name: np.zeros(n) for name in PARTS}
        for start, size, pieces in self._chunks(genotypes, naive):
            scal = self.component_scalars(calibration)
            _, part, _ = self._matrices()
            for i, name in enumerate(PARTS):
                where = np.where(part == i, scal, 0.0)
                out[name][start : start + size] = self._sum(pieces, where, size)
        out["overhead"] = np.full(n, calibration.intercept_ms if calibration else 0.0)
        out["total"] = sum(out[p] for p in (*PARTS, "overhead"))
        return out

    def key_counts(self, genotype: Genotype, *, naive: bool = False) -> Counter[str]:
        """The live (or, with `naive`, all) op keys of one genotype, with multiplicity."""
        _, comps, counts = self.encode([genotype], naive=naive)
        total: Counter[str] = Counter()
        for c, k in zip(comps.tolist(), counts.tolist(), strict=True):
            for key, m in self._comp_keys[c].items():
                total[key] += int(m * k)
        return total


def structure_of(ops: Sequence) -> np.ndarray:
    """STRUCTURE_FEATURES of some ops: fp32 weight MiB (weights and bias after BN folding)."""
    return np.array([sum(op.deployed_params for op in ops) * 4 / 2**20])


def _position(nb: np.ndarray, flat: int) -> tuple[int, int]:
    """(genotype index, block slot) of the flat-th block of a batch."""
    ends = np.cumsum(nb)
    g = int(np.searchsorted(ends, flat, side="right"))
    return g, flat - int(ends[g] - nb[g])


def _check_genotype_fields(
    sdo: np.ndarray, rep: np.ndarray, nb: np.ndarray, offset: int = 0
) -> None:
    for what, values, lo, hi in (
        ("sdo", sdo, 0, 1),
        ("repeats", rep, 1, None),
        ("the block count", nb, NUM_CELL_INPUTS, _MAX_BLOCKS),
    ):
        bad = (values < lo) | (values > hi) if hi is not None else values < lo
        if bad.any():
            g = int(np.argmax(bad))
            want = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            got = int(values[g])
            raise GridError(f"genotype #{offset + g}: {what} must be {want}, got {got}")


# Every space registered so far must fit (the cost model checks again when it is made).
check_spaces_fit()
