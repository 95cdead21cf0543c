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
(`mobilenet_v2`, `mnasfpn_block`, `ssd_predictor`), and memoized in dense signature grids;
genotypes are encoded to integer arrays and everything after that is numpy.

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
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import level_size, mnasfpn_block, mobilenet_v2, ssd_predictor
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.graph import GraphBuilder, Tensor
from mnasfpn.ir.ops import MODEL_INPUT, PARTS
from mnasfpn.lut.calibration import Calibration, feature_columns
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
_HEAD = attrgetter("channels", "sdo", "repeats", "blocks")
_INTS = attrgetter("level", "expansion", "kernel")
_SPACE = attrgetter("space")
_AT_LEAST_TWO = {name: sp.min_inputs >= 2 for name, sp in SPACES.items()}


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


def _flatten(
    indices: Sequence[Any], dims: Sequence[int], names: Sequence[str] | None = None
) -> np.ndarray:
    """Mixed-radix code of index arrays. A digit outside its radix would carry into the
    next one and alias another signature, so each is range-checked."""
    flat = np.zeros_like(np.asarray(indices[-1]), dtype=np.int64)
    for n, (idx, d) in enumerate(zip(indices, dims, strict=True)):
        digit = np.asarray(idx, dtype=np.int64)
        if digit.size and (int(digit.min()) < 0 or int(digit.max()) >= d):
            bad = int(digit.min()) if int(digit.min()) < 0 else int(digit.max())
            what = names[n] if names else f"digit {n}"
            raise GridError(f"{what} index {bad} is outside the predictor's grid (0..{d - 1})")
        flat = flat * d + digit
    return flat


def _unflatten(flat: int, dims: Sequence[int]) -> list[int]:
    out = []
    for d in reversed(dims):
        out.append(flat % d)
        flat //= d
    return out[::-1]


def _distinct(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct non-negative codes (a mark array: faster than np.unique)."""
    if len(codes) == 0:
        return codes
    marks = np.zeros(int(codes.max()) + 1, dtype=bool)
    marks[codes] = True
    return np.flatnonzero(marks)


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
        self._fixed_memo: dict[int, tuple[int, int]] = {}
        self._bb_table = np.full(len(_VALUES), -1, dtype=np.int64)
        self._pr_table = np.full(len(_VALUES), -1, dtype=np.int64)
        self._rs_table = np.full(int(np.prod(_RS_DIMS)), -1, dtype=np.int64)
        self._pool_table = np.full(int(np.prod(_POOL_DIMS)), -1, dtype=np.int64)
        self._body_table = np.full(int(np.prod(_BODY_DIMS)), -1, dtype=np.int64)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- components -------------------------------------------------------------------

    def _add_component(self, sig: tuple, ops: Sequence) -> int:
        idx = self._comp_index.get(sig)
        if idx is not None:
            return idx
        keys: Counter[str] = Counter(op.key for op in ops)
        parts = {op.part for op in ops}
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

    # -- per-genotype encoding --------------------------------------------------------

    def _lookup(self, table: np.ndarray, flat: np.ndarray, make) -> np.ndarray:
        ids = table[flat]
        todo = flat[ids < 0]
        if len(todo):
            for v in np.unique(todo).tolist():
                table[v] = make(v)
            ids = table[flat]
        return ids

    def encode(
        self, genotypes: Sequence[Genotype], *, naive: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (genotype index, component id, count) triples of the live components.

        With `naive`, every block counts, connected to an output or not (the baseline).
        """
        n = len(genotypes)
        heads = list(map(_HEAD, genotypes))
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0)
        chan = np.fromiter(map(itemgetter(0), heads), dtype=np.int64, count=n)
        sdo = np.fromiter(map(itemgetter(1), heads), dtype=np.int64, count=n)
        rep = np.fromiter(map(itemgetter(2), heads), dtype=np.int64, count=n)
        block_lists = list(map(itemgetter(3), heads))
        nb = np.fromiter(map(len, block_lists), dtype=np.int64, count=n)
        mb = int(nb.max())
        if mb > _MAX_BLOCKS:
            raise GridError(f"a genotype has more than {_MAX_BLOCKS} blocks")
        blocks = list(chain.from_iterable(block_lists))
        total = len(blocks)

        ints = np.fromiter(
            chain.from_iterable(map(_INTS, blocks)), dtype=np.int64, count=3 * total
        ).reshape(total, 3)
        gi = np.repeat(np.arange(n), nb)
        slot = np.arange(total) - np.repeat(np.cumsum(nb) - nb, nb)
        nint = nb - NUM_CELL_INPUTS

        uniform = int(nb.min()) == mb  # the usual case: one block count in the batch

        def grid(values: np.ndarray) -> np.ndarray:
            if uniform:
                return values.reshape(n, mb)
            out = np.zeros((n, mb), dtype=np.int64)
            out[gi, slot] = values
            return out

        # Levels and input nodes index arrays directly (and are packed into pool codes),
        # so a value out of range would alias another entry: refuse it here.
        levels = ints[:, 0]
        bad = (levels < LEVELS[0]) | (levels > LEVELS[-1])
        if bad.any():
            i = int(np.argmax(bad))
            raise GridError(
                f"block {int(slot[i])}: level {int(levels[i])} is not one of "
                f"{LEVELS[0]}..{LEVELS[-1]}"
            )
        lv = grid(levels - LEVELS[0])
        fi = grid(_index(_VALUE_INDEX, ints[:, 1], "expansion"))
        ki = grid(_index(_KERNEL_INDEX, ints[:, 2], "kernel"))
        merge_index = _MERGE_INDEX.get
        merges = (merge_index(b.merge, -1) for b in blocks)
        mi = grid(np.fromiter(merges, dtype=np.int64, count=total))
        ci = _index(_VALUE_INDEX, chan, "channels")
        ins = list(map(attrgetter("inputs"), blocks))
        flat_in = np.fromiter(chain.from_iterable(ins), dtype=np.int64)
        # In spaces whose blocks read at least two inputs, 2 per block on average means
        # exactly 2 each; otherwise count them.
        two = len(flat_in) == 2 * total and all(
            _AT_LEAST_TWO.get(sp, False) for sp in set(map(_SPACE, genotypes))
        )
        widths = None if two else np.fromiter(map(len, ins), dtype=np.int64, count=total)
        reader = np.repeat(slot, 2 if widths is None else widths)
        bad = (flat_in < 0) | (flat_in >= NUM_CELL_INPUTS + reader)
        if widths is not None:
            bad_width = (widths < 1) | (widths > _MAX_INPUTS)
            if bad_width.any():
                i = int(np.argmax(bad_width))
                raise GridError(
                    f"block {int(slot[i])}: {int(widths[i])} inputs (the grids hold 1.."
                    f"{_MAX_INPUTS})"
                )
        if bad.any():
            i = int(np.argmax(bad))
            raise GridError(
                f"block {int(reader[i])}: input node {int(flat_in[i])} is not an earlier node"
            )
        if widths is None or int(widths.min()) == int(widths.max()):
            w = 2 if widths is None else int(widths.max())
            arr = flat_in.reshape(total, w)
        else:
            w = int(widths.max())
            arr = np.full((total, w), -1, dtype=np.int64)
            row = np.repeat(np.arange(total), widths)
            col = np.arange(len(flat_in)) - np.repeat(np.cumsum(widths) - widths, widths)
            arr[row, col] = flat_in
        if uniform:
            inp = arr.reshape(n, mb, w)
        else:
            inp = np.full((n, mb, w), -1, dtype=np.int64)
            inp[gi, slot] = arr
        valid = np.arange(mb)[None, :] < nb[:, None]
        is_out = valid & (np.arange(mb)[None, :] >= nint[:, None])
        if naive:
            live = valid
        else:
            live = is_out.copy()
            rr = np.arange(n)
            for b in range(mb - 1, -1, -1):
                for j in range(w):
                    src = inp[:, b, j]
                    m = live[:, b] & (src >= NUM_CELL_INPUTS)
                    live[rr[m], src[m] - NUM_CELL_INPUTS] = True
        # Input node signatures: a cell input 0..3, or 4 + level index of a block node.
        node_lv = np.concatenate([np.tile(np.arange(4), (n, 1)), NUM_CELL_INPUTS + lv], axis=1)
        has = inp >= 0
        src_sig = np.take_along_axis(node_lv, np.where(has, inp, 0).reshape(n, -1), axis=1)
        src_sig = src_sig.reshape(n, mb, w)
        n_in = has.sum(axis=2)
        g_parts: list[np.ndarray] = []
        c_parts: list[np.ndarray] = []
        k_parts: list[np.ndarray] = []
        src_level = np.where(src_sig < NUM_CELL_INPUTS, src_sig, src_sig - NUM_CELL_INPUTS)
        # SDO pre-pools: on the node itself, merged across blocks of a cell by the builder.
        pre = has & (sdo[:, None, None] == 1) & (lv[:, :, None] > src_level)
        # In the first cell, pooling C5 by 2 is the backbone's own C6 max-pool.
        c6_pool = (inp == 2) & (lv[:, :, None] == 3)
        self._pools(
            g_parts, c_parts, k_parts, pre & live[:, :, None], c6_pool, inp, lv, ci, nint, rep
        )

        bb_ids = self._lookup(self._bb_table, ci, lambda c: self._fixed(_VALUES[c])[0])
        pr_ids = self._lookup(self._pr_table, ci, lambda c: self._fixed(_VALUES[c])[1])
        later = (rep - 1).astype(np.float64)
        g_parts += [np.arange(n), np.arange(n)]
        c_parts += [bb_ids, pr_ids]
        k_parts += [np.ones(n), np.ones(n)]
        # Resampled inputs and block bodies, once for the first cell and once (with
        # multiplicity repeats - 1) for the later ones: `first` is the leading digit.
        later_f = later
        gsel, bsel, jsel = np.nonzero(has & live[:, :, None])
        gb = (gsel, bsel)
        rest = _flatten(
            (sdo[gsel], src_sig[gsel, bsel, jsel], lv[gb], fi[gb], ci[gsel]),
            _RS_DIMS[1:],
            ("sdo", "input node", "level", "expansion", "channels"),
        )
        self._both_cells(
            g_parts,
            c_parts,
            k_parts,
            gsel,
            rest,
            later_f,
            self._rs_table,
            _RS_DIMS,
            self._resample_component,
        )
        gsel, bsel = np.nonzero(live)
        gb = (gsel, bsel)
        rest = _flatten(
            (is_out[gb], lv[gb], fi[gb], ki[gb], mi[gb], n_in[gb] - 1, ci[gsel]),
            _BODY_DIMS[1:],
            ("output", "level", "expansion", "kernel", "merge", "inputs", "channels"),
        )
        self._both_cells(
            g_parts,
            c_parts,
            k_parts,
            gsel,
            rest,
            later_f,
            self._body_table,
            _BODY_DIMS,
            self._body_component,
        )
        return (
            np.concatenate(g_parts).astype(np.int64, copy=False),
            np.concatenate(c_parts).astype(np.int64, copy=False),
            np.concatenate(k_parts).astype(np.float64, copy=False),
        )

    def _both_cells(
        self,
        g_parts: list[np.ndarray],
        c_parts: list[np.ndarray],
        k_parts: list[np.ndarray],
        gsel: np.ndarray,
        rest: np.ndarray,
        later: np.ndarray,
        table: np.ndarray,
        dims: Sequence[int],
        make: Callable[[int], int],
    ) -> None:
        stride = int(np.prod(dims[1:]))
        g_parts.append(gsel)
        c_parts.append(self._lookup(table, rest + stride, make))
        k_parts.append(np.ones(len(gsel)))
        mult = later[gsel]
        keep = mult > 0
        if not keep.all():
            gsel, rest, mult = gsel[keep], rest[keep], mult[keep]
        g_parts.append(gsel)
        c_parts.append(self._lookup(table, rest, make))
        k_parts.append(mult)

    def _pools(
        self,
        g_parts: list[np.ndarray],
        c_parts: list[np.ndarray],
        k_parts: list[np.ndarray],
        pooled: np.ndarray,
        c6_pool: np.ndarray,
        inp: np.ndarray,
        lv: np.ndarray,
        ci: np.ndarray,
        nint: np.ndarray,
        rep: np.ndarray,
    ) -> None:
        """Count SDO pre-pools once per pooled tensor and target level.

        The builder merges identical max-pools of one tensor, also across cells: a cell's
        output node is the next cell's input node, so a pool of it by the blocks of either
        cell is one op. `pooled` marks (genotype, block, input slot) entries that pool.
        """
        nlev = len(LEVELS)
        g, b, j = np.nonzero(pooled)
        node = inp[g, b, j]
        target = lv[g, b]
        later = rep - 1
        is_cell_input = node < NUM_CELL_INPUTS
        block_of = node - NUM_CELL_INPUTS
        is_output_node = ~is_cell_input & (block_of >= nint[g])

        def add(gs: np.ndarray, flat: np.ndarray, counts: np.ndarray) -> None:
            keep = counts > 0
            g_parts.append(gs[keep])
            c_parts.append(self._lookup(self._pool_table, flat[keep], self._pool_component))
            k_parts.append(counts[keep].astype(np.float64))

        # Intermediate nodes: one pool per (node, target) in every cell.
        m = ~is_cell_input & ~is_output_node
        code = _distinct((g[m] * _MAX_BLOCKS + block_of[m]) * nlev + target[m])
        gg, rest = np.divmod(code, _MAX_BLOCKS * nlev)
        bb, tt = np.divmod(rest, nlev)
        sig = NUM_CELL_INPUTS + lv[gg, bb]
        add(gg, _flatten((0, sig, tt, ci[gg]), _POOL_DIMS), rep[gg])
        # The first cell's inputs (backbone taps and C6), except C5 by 2 (that is C6's).
        m = is_cell_input & ~c6_pool[g, b, j]
        code = _distinct((g[m] * NUM_CELL_INPUTS + node[m]) * nlev + target[m])
        gg, rest = np.divmod(code, NUM_CELL_INPUTS * nlev)
        nn, tt = np.divmod(rest, nlev)
        add(gg, _flatten((1, nn, tt, ci[gg]), _POOL_DIMS), np.ones(len(gg)))
        # Output tensor of level l: pooled inside its cell (set A) and, for all but the
        # last cell, as input l of the next cell (set B): ·|A ∪ B| + |A| pools.
        m = is_output_node
        a = _distinct((g[m] * nlev + (block_of[m] - nint[g[m]])) * nlev + target[m])
        m = is_cell_input & (later[g] > 0)
        bset = _distinct((g[m] * nlev + node[m]) * nlev + target[m])
        union = _distinct(np.concatenate([a, bset]))
        for codes, counts_of in ((union, later), (a, np.ones_like(later))):
            gl, tt = np.divmod(codes, nlev)
            gg, ll = np.divmod(gl, nlev)
            add(gg, _flatten((0, NUM_CELL_INPUTS + ll, tt, ci[gg]), _POOL_DIMS), counts_of[gg])

    def _check_missing(
        self, genotypes: Sequence[Genotype], gidx: np.ndarray, comps: np.ndarray
    ) -> None:
        _, _, missing = self._matrices()
        bad = np.flatnonzero(missing[comps])
        if len(bad):
            first = int(bad[0])
            n = int(gidx[first])
            key = self._comp_missing[int(comps[first])]
            assert key is not None
            raise MissingOpError(key, n, genotypes[n])

    def features(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """(n × len(feature_columns())) summed table latencies per (op type, part)."""
        gidx, comps, counts = self.encode(genotypes, naive=naive)
        self._check_missing(genotypes, gidx, comps)
        vecs, _, _ = self._matrices()
        n = len(genotypes)
        out = np.empty((n, vecs.shape[1]))
        weights = vecs[comps] * counts[:, None]
        for j in range(vecs.shape[1]):
            out[:, j] = np.bincount(gidx, weights=weights[:, j], minlength=n)
        return out

    def component_scalars(self, calibration: Calibration | None) -> np.ndarray:
        vecs, _, _ = self._matrices()
        if calibration is None:
            return vecs.sum(axis=1)
        return vecs @ np.asarray(calibration.column_scales())

    def predict(
        self,
        genotypes: Sequence[Genotype],
        calibration: Calibration | None = None,
        *,
        naive: bool = False,
    ) -> np.ndarray:
        gidx, comps, counts = self.encode(genotypes, naive=naive)
        self._check_missing(genotypes, gidx, comps)
        scal = self.component_scalars(calibration)
        out = np.bincount(gidx, weights=scal[comps] * counts, minlength=len(genotypes))
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
        gidx, comps, counts = self.encode(genotypes, naive=naive)
        self._check_missing(genotypes, gidx, comps)
        scal = self.component_scalars(calibration)
        _, part, _ = self._matrices()
        n = len(genotypes)
        w = scal[comps] * counts
        cpart = part[comps]
        out = {
            name: np.bincount(gidx, weights=np.where(cpart == i, w, 0.0), minlength=n)
            for i, name in enumerate(PARTS)
        }
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


# Every space registered so far must fit (the cost model checks again when it is made).
check_spaces_fit()
