"""The pieces a detector's live ops split into, each made once by the IR's own emitters.

A component is the multiset of op keys of one piece of a detector; its keys depend on few
things, so a whole search space has a few thousand:
  * the backbone (with C6) and the predictor: on C only;
  * one input of one block brought to (R, F) ("resample"): on the input node's (level,
    channels), R, F, C and SDO; the body of a block (merge, ReLU6, depthwise, project,
    residual): on R, F, k, merge, the number of inputs, C and whether it is an output
    block. The first cell reads backbone taps, later cells read C-channel nodes, so each
    has a first-cell and a later-cell signature;
  * an SDO pre-pool (max-pool of a node itself, shared by every block that pools that node
    by the same stride): on the node's (level, channels), the target level and C.
Each is made by `build_opgraph`'s emitters (`mobilenet_v2`, `mnasfpn_block`,
`ssd_predictor`) on first use and found again through a dense signature grid: a mixed-
radix code of its digits indexes an array of component ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import level_size, mnasfpn_block, mobilenet_v2, ssd_predictor
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.graph import GraphBuilder, Tensor
from mnasfpn.ir.ops import MODEL_INPUT, PARTS
from mnasfpn.lut.calibration import STRUCTURE_FEATURES, feature_columns
from mnasfpn.searchspace.genotype import LEVELS, MERGES, NUM_CELL_INPUTS, Block
from mnasfpn.searchspace.spaces import CHANNELS, EXPANSIONS, KERNELS, SPACES, SearchSpace


class GridError(MnasfpnError, ValueError):
    """A genotype, or a whole search space, that the dense signature grids cannot encode:
    encoding it anyway would alias another entry and give a silently wrong latency."""


COLUMNS = feature_columns()
_COLUMN_INDEX = {c: i for i, c in enumerate(COLUMNS)}
MAX_BLOCKS = 16
# Channel and expansion values of every space (F = C in some), and the other choices.
VALUES: tuple[int, ...] = tuple(sorted(set(CHANNELS) | set(EXPANSIONS)))
GRID_KERNELS: tuple[int, ...] = KERNELS
GRID_MERGES: tuple[str, ...] = MERGES
# The widest block of any space (inputs per block), and at least the paper's two.
MAX_INPUTS = max(2, *(sp.max_inputs for sp in SPACES.values()))
VALUE_INDEX = np.full(max(VALUES) + 1, -1, dtype=np.int64)
VALUE_INDEX[list(VALUES)] = np.arange(len(VALUES))
KERNEL_INDEX = np.full(max(GRID_KERNELS) + 1, -1, dtype=np.int64)
KERNEL_INDEX[list(GRID_KERNELS)] = np.arange(len(GRID_KERNELS))
# The grids' digits, most significant first:
#   resample: first cell, sdo, source node signature (cell input 0..3, or 4 + the level
#     index of a block node), R, F, C;
#   pool: first cell, source node signature, target level, C;
#   body: first cell, is output, R, F, k, merge, inputs - 1, C.
RS_DIMS = (2, 2, NUM_CELL_INPUTS + len(LEVELS), len(LEVELS), len(VALUES), len(VALUES))
POOL_DIMS = (2, NUM_CELL_INPUTS + len(LEVELS), len(LEVELS), len(VALUES))
BODY_DIMS = (
    2, 2, len(LEVELS), len(VALUES), len(GRID_KERNELS), len(GRID_MERGES), MAX_INPUTS, len(VALUES)
)  # fmt: skip
# Component 0 has no ops: "nothing" entries of every grid point at it.
EMPTY = 0


def check_space_fits(space: SearchSpace) -> None:
    """Raise GridError unless every genotype of `space` fits the dense grids (run for
    every registered space at import, and again when a cost model is made, so a space
    added later is checked too)."""
    problems = []
    fixed = space.fixed.blocks if space.fixed is not None else ()
    widths = set(space.channels) | set(space.expansions or ()) | {b.expansion for b in fixed}
    if space.fixed is not None:
        widths.add(space.fixed.channels)
    if not widths <= set(VALUES):
        problems.append(f"widths {sorted(widths - set(VALUES))}")
    kernels = set(space.kernels) | {b.kernel for b in fixed}
    if not kernels <= set(GRID_KERNELS):
        problems.append(f"kernels {sorted(kernels - set(GRID_KERNELS))}")
    merges = set(space.merges) | {b.merge for b in fixed}
    if not merges <= set(GRID_MERGES):
        problems.append(f"merges {sorted(merges - set(GRID_MERGES))}")
    inputs = max([space.max_inputs, *(len(b.inputs) for b in fixed)])
    if inputs > MAX_INPUTS:
        problems.append(f"{inputs} inputs per block (grid: {MAX_INPUTS})")
    blocks = len(fixed) if fixed else space.num_intermediate + len(LEVELS)
    if blocks > MAX_BLOCKS:
        problems.append(f"{blocks} blocks (grid: {MAX_BLOCKS})")
    if problems:
        raise GridError(
            f"search space {space.name!r} does not fit the latency predictor's grids: "
            f"{'; '.join(problems)}; extend the grids in mnasfpn/lut/components.py"
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


class Grid:
    """One signature grid: the component id of each code, -1 until first use (then
    `make` builds it). Code `none` (one past the grid) is "nothing": the empty component,
    for masked entries of dense arrays."""

    def __init__(self, dims: Sequence[int], make: Callable[[int], int]) -> None:
        self.dims = tuple(dims)
        self.none = int(np.prod(self.dims))
        # The weight of the leading ("first cell") digit.
        self.first = int(np.prod(self.dims[1:]))
        self.ids = np.full(self.none + 1, -1, dtype=np.int64)
        self.ids[self.none] = EMPTY
        self.make = make

    def ensure(self, codes: np.ndarray) -> bool:
        """Make the components of `codes` not made yet; whether any was."""
        todo = self.ids[codes] < 0
        if not todo.any():
            return False
        for v in np.unique(codes[todo]).tolist():
            self.ids[v] = self.make(v)
        return True


class Components:
    """Every component made so far for one table: its op keys, its latency per feature
    column, its part and its first key the table lacks; and the grids that find them."""

    def __init__(self, latencies: Mapping[str, float], settings: DetectorConfig) -> None:
        self.latencies = latencies
        self.settings = settings
        s = settings.input_size
        g = GraphBuilder((s, s, 3))
        taps = mobilenet_v2(g, g.input, settings.alpha)
        self._tap_channels = {lv: t.shape[2] for lv, t in taps.items()}
        self._index: dict[tuple, int] = {}
        self.keys: list[Counter[str]] = []
        self._part: list[int] = []
        self._vec: list[np.ndarray] = []
        self.missing_key: list[str | None] = []
        self._struct: list[np.ndarray] = []  # STRUCTURE_FEATURES of its ops
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._struct_matrix: np.ndarray | None = None
        self._fixed_memo: dict[int, tuple[int, int]] = {}
        self.add(("empty",), [])
        v = len(VALUES)
        self.backbone = Grid((v,), lambda c: self._fixed(VALUES[c])[0])
        self.predictor = Grid((v,), lambda c: self._fixed(VALUES[c])[1])
        self.resample = Grid(RS_DIMS, self._resample)
        self.pool = Grid(POOL_DIMS, self._pool)
        self.body = Grid(BODY_DIMS, self._body)
        self.grids = (self.backbone, self.predictor, self.resample, self.pool, self.body)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, sig: tuple, ops: Sequence) -> int:
        idx = self._index.get(sig)
        if idx is not None:
            return idx
        parts = {op.part for op in ops} or {PARTS[0]}
        assert len(parts) == 1, parts
        vec = np.zeros(len(COLUMNS))
        missing = None
        for op in ops:
            lat = self.latencies.get(op.key)
            if lat is None:
                missing = missing or op.key
                continue
            vec[_COLUMN_INDEX[(op.type, op.part)]] += lat
        idx = len(self.keys)
        self._index[sig] = idx
        self.keys.append(Counter(op.key for op in ops))
        self._part.append(PARTS.index(parts.pop()))
        self._vec.append(vec)
        self.missing_key.append(missing)
        self._struct.append(structure_of(ops))
        self._arrays = None
        self._struct_matrix = None
        return idx

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per component: latency per feature column, part index, has-a-missing-key."""
        if self._arrays is None:
            self._arrays = (
                np.array(self._vec).reshape(-1, len(COLUMNS)),
                np.array(self._part, dtype=np.int64),
                np.array([m is not None for m in self.missing_key], dtype=bool),
            )
        return self._arrays

    def structure(self) -> np.ndarray:
        """Per component: its STRUCTURE_FEATURES (components × features)."""
        if self._struct_matrix is None:
            self._struct_matrix = np.array(self._struct).reshape(-1, len(STRUCTURE_FEATURES))
        return self._struct_matrix

    # -- making components --------------------------------------------------------------

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
        backbone = self.add(("backbone", channels), g.ops)
        g = GraphBuilder((s, s, 3))
        feats = [self._tensor(lv, channels, node=i) for i, lv in enumerate(LEVELS)]
        ssd_predictor(g, feats, st.predictor, st.num_classes)
        predictor = self.add(("predictor", channels), g.ops)
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
            bool(first), VALUES[c], bool(sdo), False, LEVELS[r], VALUES[f], 3, "add", [src]
        )
        ops = [op for op in ops if op.is_block_input]
        pre = [op for op in ops if op.type == "maxpool" and op.inputs[0] < MODEL_INPUT]
        rest = [op for op in ops if op not in pre]
        return pre, rest

    def _resample(self, flat: int) -> int:
        _, rest = self._resample_ops(*_unflatten(flat, RS_DIMS))
        return self.add(("resample", flat), rest)

    def _pool(self, flat: int) -> int:
        first, src, r, c = _unflatten(flat, POOL_DIMS)
        pre, _ = self._resample_ops(first, 1, src, r, 0, c)
        assert len(pre) == 1, pre
        return self.add(("pool", flat), pre)

    def _body(self, flat: int) -> int:
        """Merge + ReLU6, depthwise, project and residual of a block (all but its inputs)."""
        first, is_out, r, f, k, merge, n_in, c = _unflatten(flat, BODY_DIMS)
        ops = self._emit_block(
            bool(first),
            VALUES[c],
            True,
            bool(is_out),
            LEVELS[r],
            VALUES[f],
            GRID_KERNELS[k],
            GRID_MERGES[merge],
            list(range(n_in + 1)),
        )
        ops = [op for op in ops if not op.is_block_input]
        return self.add(("body", flat), ops)


def structure_of(ops: Sequence) -> np.ndarray:
    """STRUCTURE_FEATURES of some ops: fp32 weight MiB (weights and bias after BN folding)
    and their count."""
    return np.array([sum(op.deployed_params for op in ops) * 4 / 2**20, len(ops)])


# Every space registered so far must fit (the cost model checks again when it is made).
check_spaces_fit()
