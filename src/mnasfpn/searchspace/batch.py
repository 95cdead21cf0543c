"""Many genotypes at once as numpy integer arrays of decision indices.

A row is what `SearchSpace.encode` gives for one genotype (the indices the search stores
and its controller samples), so the search can hand its proposals to the latency table
as they are. `encode_batch` makes rows from Genotype objects and `decode_batch` reads rows
into per-block value arrays, both with array operations over the whole batch instead of
one decision walk per genotype. In a space whose blocks take a variable number of inputs
(conn-search) rows differ in length: shorter rows end in PAD. Decision indices are never
negative, so PAD cannot be mistaken for a choice.

`BlockReader` is the one place that reads Genotype objects field by field (the slow part
of any batch); it turns every distinct block shape and wiring into a small integer code,
and its users (this module, the latency predictor) tabulate each code once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, repeat
from operator import attrgetter

import numpy as np

from mnasfpn.searchspace.genotype import (
    LEVELS,
    MERGES,
    NUM_CELL_INPUTS,
    Genotype,
    GenotypeError,
)
from mnasfpn.searchspace.spaces import SearchSpace

PAD = -1

_CHANNELS = attrgetter("channels")
_SDO = attrgetter("sdo")
_REPEATS = attrgetter("repeats")
_BLOCKS = attrgetter("blocks")
_SPACE = attrgetter("space")
# A block is read as two keys: its shape and its wiring. Each has a few hundred distinct
# values in a search space, so memo look-ups by these keys stay in cache.
_SHAPE_KEY = attrgetter("level", "expansion", "kernel", "merge")
_INPUTS = attrgetter("inputs")


class BlockFieldError(GenotypeError):
    """A block field that cannot be read at all (an unhashable inputs list, say)."""

    def __init__(self, genotype: int, block: int, what: str) -> None:
        super().__init__(f"genotype #{genotype}, block {block}: {what}")
        self.genotype = genotype
        self.block = block
        self.what = what


@dataclass(frozen=True)
class ReadBatch:
    """Genotype fields as arrays: per genotype (n,), and per block in genotype order
    (sum of block counts,), each block as its shape and wiring codes."""

    channels: np.ndarray
    sdo: np.ndarray
    repeats: np.ndarray
    num_blocks: np.ndarray
    shape: np.ndarray
    wiring: np.ndarray

    def position(self, flat: int) -> tuple[int, int]:
        """(genotype index, block index) of the flat-th block of the batch."""
        ends = np.cumsum(self.num_blocks)
        g = int(np.searchsorted(ends, flat, side="right"))
        return g, flat - int(ends[g] - self.num_blocks[g])

    def padded(self, codes: np.ndarray, width: int, fill: int = 0) -> np.ndarray:
        """Flat per-block codes as (n, width), genotype by genotype; short rows get `fill`."""
        n = len(self.num_blocks)
        nb = self.num_blocks
        if n and int(nb.min()) == int(nb.max()) == width:
            return codes.reshape(n, width)
        out = np.full((n, width), fill, dtype=codes.dtype)
        out[np.arange(width) < nb[:, None]] = codes  # row-major order is block order
        return out


class BlockReader:
    """Reads genotypes into integer arrays, coding each distinct block shape (level,
    expansion, kernel, merge) and wiring (inputs tuple) on first sight. Codes are never
    reused: `shapes[code]` and `wirings[code]` are the keys, for tables kept by callers."""

    def __init__(self) -> None:
        self.shape_code: dict[tuple, int] = {}
        self.shapes: list[tuple] = []
        self.wiring_code: dict[tuple, int] = {}
        self.wirings: list[tuple] = []

    def code_shape(self, key: tuple) -> int:
        return _code(self.shape_code, self.shapes, key)

    def code_wiring(self, key: tuple) -> int:
        return _code(self.wiring_code, self.wirings, key)

    def read(self, genotypes: Sequence[Genotype]) -> ReadBatch:
        n = len(genotypes)
        chan = _ints(map(_CHANNELS, genotypes), n, "channels")
        sdo = _ints(map(_SDO, genotypes), n, "sdo")
        rep = _ints(map(_REPEATS, genotypes), n, "repeats")
        block_lists = list(map(_BLOCKS, genotypes))
        nb = np.fromiter(map(len, block_lists), dtype=np.int64, count=n)
        blocks = list(chain.from_iterable(block_lists))
        total = len(blocks)
        out = []
        for memo, keys, field, what in (
            (self.shape_code, self.shapes, _SHAPE_KEY, "a field of {!r} is not hashable"),
            (self.wiring_code, self.wirings, _INPUTS, "{!r} is not a tuple"),
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
                    codes[i] = _code(memo, keys, key)
                except TypeError:
                    batch = ReadBatch(chan, sdo, rep, nb, codes, codes)
                    raise BlockFieldError(*batch.position(i), what.format(key)) from None
            out.append(codes)
        return ReadBatch(chan, sdo, rep, nb, out[0], out[1])


def _code(memo: dict[tuple, int], keys: list[tuple], key: tuple) -> int:
    code = memo.get(key)
    if code is None:
        code = memo[key] = len(keys)
        keys.append(key)
    return code


def _ints(values: Iterable[object], n: int, what: str) -> np.ndarray:
    try:
        return np.fromiter(values, dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        raise GenotypeError(f"a genotype's {what} is not an integer") from None


# -- the decision layout of a space ---------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where each decision of a space sits in a row, in block terms.

    A block's decisions: its input slots (a slot past `min_inputs` offers "no more
    inputs" as index 0, and after it the block's later input slots are skipped), then
    level (intermediate blocks only), expansion (when the space has expansions), kernel,
    merge."""

    space: SearchSpace
    blocks: int
    fields: np.ndarray  # (blocks,): decisions after a block's inputs
    longest: int  # the longest row

    @property
    def optional_inputs(self) -> bool:
        return self.space.min_inputs < self.space.max_inputs


@lru_cache(maxsize=32)
def _layout(space: SearchSpace) -> _Layout:
    nb = space.num_intermediate + NUM_CELL_INPUTS
    has_exp = space.expansions is not None
    fields = np.array(
        [(b < space.num_intermediate) + has_exp + 2 for b in range(nb)], dtype=np.int64
    )
    longest = 1 + int(fields.sum()) + nb * space.max_inputs
    return _Layout(space, nb, fields, longest)


# -- decoding -------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedRows:
    """n decision rows decoded (cells not pruned), as choice indices per block, blocks in
    node order, every row with the space's full block count: `channel` (n,) into the
    space's channels; per block (n, blocks): the number of inputs, `level` into LEVELS
    (output blocks too), `expansion` into the space's expansions (None where F = C),
    `kernel` and `merge` into the space's kernels and merges; per input slot j,
    `inputs[j]` (n, blocks): the node it reads, -1 past a block's inputs."""

    space: SearchSpace
    channel: np.ndarray
    num_inputs: np.ndarray
    inputs: tuple[np.ndarray, ...]
    level: np.ndarray
    expansion: np.ndarray | None
    kernel: np.ndarray
    merge: np.ndarray

    def __len__(self) -> int:
        return len(self.channel)

    def values(self) -> dict[str, np.ndarray]:
        """channels (n,); level, expansion, kernel (n, blocks) as values; merge as an
        index into MERGES."""
        sp = self.space
        channels = np.asarray(sp.channels)[self.channel]
        if self.expansion is None:
            expansion = np.repeat(channels[:, None], self.level.shape[1], axis=1)
        else:
            expansion = np.asarray(sp.expansions)[self.expansion]
        return {
            "channels": channels,
            "level": np.asarray(LEVELS)[self.level],
            "expansion": expansion,
            "kernel": np.asarray(sp.kernels)[self.kernel],
            "merge": np.asarray([MERGES.index(m) for m in sp.merges])[self.merge],
        }


def as_code_array(codes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Decision rows as a 2-D int64 array; a list of sequences of unequal length (rows of
    conn-search, say) is padded with PAD."""
    if isinstance(codes, np.ndarray):
        if codes.ndim != 2:
            raise GenotypeError(
                f"decision codes must be a 2-D array, one row per genotype; got shape {codes.shape}"
            )
        if codes.dtype == bool or not np.issubdtype(codes.dtype, np.integer):
            raise GenotypeError(f"decision codes must be integers, got dtype {codes.dtype}")
        return codes.astype(np.int64, copy=False)
    rows = list(codes)
    width = max(map(len, rows), default=0)
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise GenotypeError(
                    f"decision sequence #{r}: entry {c} is {v!r}, not a decision index"
                )
            out[r, c] = v
    return out


def decode_batch(
    space: SearchSpace, codes: np.ndarray | Sequence[Sequence[int]], *, first: int = 0
) -> DecodedRows:
    """Decision rows → the genotypes' choices (`SearchSpace.decode` of every row, as
    arrays). A row that does not decode raises the GenotypeError `decode` gives for it,
    prefixed with its index (+ `first`, the index of row 0 in the caller's batch)."""
    arr = as_code_array(codes)
    n, width = arr.shape
    if space.fixed is not None:
        if (arr != PAD).any():
            r = int(np.argmax((arr != PAD).any(axis=1)))
            raise GenotypeError(
                f"decision sequence #{first + r}: space {space.name!r} is a fixed cell "
                "with no decisions; its rows are empty"
            )
        return _fixed_rows(space, n)
    lay = _layout(space)
    nb, mi, mn = lay.blocks, space.max_inputs, space.min_inputs
    reader = _RowReader(arr, lay)
    n_in, starts = reader.input_counts()
    ok = np.ones((n, nb), dtype=bool)  # every decision of the block is in range
    # Inputs, slot by slot over all blocks: index i of slot j is the i-th node (counted
    # from 0) that is not yet an input of the block, past a leading "no more" choice.
    limit = NUM_CELL_INPUTS + np.arange(nb)
    inputs: list[np.ndarray] = []
    taken: list[np.ndarray] = []  # the block's inputs so far, elementwise ascending
    for j in range(mi):
        rank = reader.take(starts + j)
        if j >= mn:
            rank = rank - 1
        in_range = (rank >= 0) & (rank < limit - j)
        node = rank
        for earlier in taken:
            node = node + (earlier <= node)
        if n_in is None:
            ok &= in_range
        else:
            present = j < n_in
            ok &= in_range | ~present
            node = np.where(present, node, -1)
        inputs.append(node)
        if j + 1 < mi:
            taken = _insert_sorted(taken, node)
    if n_in is None:
        at = starts + mi  # each block's first decision after its inputs
        n_in = np.full((n, nb), mi, dtype=np.int64)
    else:
        at = starts + n_in + (n_in < mi)
    fields: dict[str, np.ndarray] = {}
    inter = np.arange(nb) < space.num_intermediate
    for name, count in (
        ("level", len(LEVELS)),
        ("expansion", None if space.expansions is None else len(space.expansions)),
        ("kernel", len(space.kernels)),
        ("merge", len(space.merges)),
    ):
        if count is None:
            continue
        idx = reader.take(at)
        in_range = (idx >= 0) & (idx < count)
        if name == "level":  # intermediate blocks only: output levels are fixed
            ok &= in_range | ~inter
            at = at + inter
            idx[:, space.num_intermediate :] = np.arange(len(LEVELS))  # levels 3..6
        else:
            ok &= in_range
            at = at + 1
        fields[name] = idx
    chan = arr[:, 0] if width else np.full(n, PAD, dtype=np.int64)
    bad = ~ok.all(axis=1) | (chan < 0) | (chan >= len(space.channels)) | reader.too_long(at)
    if bad.any():
        r = int(np.argmax(bad))
        _explain_row(space, arr[r], first + r)
    return DecodedRows(
        space,
        chan,
        n_in,
        tuple(inputs),
        fields["level"],
        fields.get("expansion"),
        fields["kernel"],
        fields["merge"],
    )


def _insert_sorted(columns: list[np.ndarray], value: np.ndarray) -> list[np.ndarray]:
    """Elementwise ascending arrays with `value` inserted (a min/max insertion network)."""
    out = []
    for c in columns:
        out.append(np.minimum(c, value))
        value = np.maximum(c, value)
    out.append(value)
    return out


class _RowReader:
    """Reads decisions at per-block positions of every row. Rows of a space whose blocks
    all take max inputs have one layout, read as columns; otherwise each row has its own
    positions, found block by block (a block's start depends on the inputs of the blocks
    before it), and rows are padded with PAD so that reading past a short row's end gives
    PAD (refused like any index out of range)."""

    def __init__(self, arr: np.ndarray, lay: _Layout) -> None:
        self.lay = lay
        n, width = arr.shape
        self.n, self.width = n, width
        if lay.optional_inputs:
            stride = max(width, lay.longest) + 1
            grid = np.full((n, stride), PAD, dtype=np.int64)
            grid[:, :width] = arr
            self.arr = grid
            self.flat = grid.reshape(-1)
            self.base = (np.arange(n) * stride)[:, None]
        else:
            self.arr = arr
            if width < lay.longest:  # every row is short: read PAD past the end
                self.arr = np.full((n, lay.longest), PAD, dtype=np.int64)
                self.arr[:, :width] = arr

    def take(self, at: np.ndarray) -> np.ndarray:
        """The decision at position `at` (blocks,) or (n, blocks) of every row."""
        if at.ndim == 1:
            return self.arr[:, at]
        return self.flat[self.base + at]

    def input_counts(self) -> tuple[np.ndarray | None, np.ndarray]:
        """Per block: number of inputs (None: max inputs everywhere) and first position."""
        lay = self.lay
        mi, mn = lay.space.max_inputs, lay.space.min_inputs
        if not lay.optional_inputs:
            seg = mi + lay.fields
            return None, 1 + np.concatenate([[0], np.cumsum(seg)[:-1]])
        n_in = np.empty((self.n, lay.blocks), dtype=np.int64)
        starts = np.empty((self.n, lay.blocks), dtype=np.int64)
        start = np.ones(self.n, dtype=np.int64)
        rows = self.base[:, 0]
        for b in range(lay.blocks):
            starts[:, b] = start
            count = np.full(self.n, mn, dtype=np.int64)
            going = np.ones(self.n, dtype=bool)
            for j in range(mn, mi):
                going &= self.flat[rows + start + j] != 0  # index 0 of an optional slot: no more
                count += going
            n_in[:, b] = count
            start = start + count + (count < mi) + lay.fields[b]
        return n_in, starts

    def too_long(self, ends: np.ndarray) -> np.ndarray:
        """Rows with decisions past their last block (`ends`: one past each block)."""
        end = ends[..., -1]
        if end.ndim == 0:
            if self.width <= int(end):
                return np.zeros(self.n, dtype=bool)
            return (self.arr[:, int(end) :] != PAD).any(axis=1)
        cols = np.arange(self.arr.shape[1])
        return ((cols >= end[:, None]) & (self.arr != PAD)).any(axis=1)


def _fixed_rows(space: SearchSpace, n: int) -> DecodedRows:
    """The fixed cell of `space`, n times."""
    cell = space.fixed
    assert cell is not None
    width = max(len(b.inputs) for b in cell.blocks)

    def rows(values: Sequence[int]) -> np.ndarray:
        return np.tile(np.asarray(values, dtype=np.int64), (n, 1))

    def index(choices: Sequence[object], value: object, what: str) -> int:
        if value not in choices:
            raise GenotypeError(f"the fixed cell of space {space.name!r} has {what} {value!r}")
        return list(choices).index(value)

    inputs = tuple(
        rows([b.inputs[j] if j < len(b.inputs) else -1 for b in cell.blocks]) for j in range(width)
    )
    expansion = None
    if space.expansions is None:  # F = C: rows carry no expansion
        for b in cell.blocks:
            if b.expansion != cell.channels:
                raise GenotypeError(
                    f"the fixed cell of space {space.name!r} has expansion {b.expansion}, "
                    f"but the space ties it to channels ({cell.channels})"
                )
    else:
        expansion = rows([index(space.expansions, b.expansion, "expansion") for b in cell.blocks])
    return DecodedRows(
        space,
        np.full(n, index(space.channels, cell.channels, "channels"), dtype=np.int64),
        rows([len(b.inputs) for b in cell.blocks]),
        inputs,
        rows([index(LEVELS, b.level, "level") for b in cell.blocks]),
        expansion,
        rows([index(space.kernels, b.kernel, "kernel") for b in cell.blocks]),
        rows([index(space.merges, b.merge, "merge") for b in cell.blocks]),
    )


def _explain_row(space: SearchSpace, row: np.ndarray, index: int) -> None:
    """Raise the one-genotype decoder's error for a row the batch decoder refused."""
    values = row.tolist()
    while values and values[-1] == PAD:
        values.pop()
    try:
        space.decode(values)
    except GenotypeError as exc:
        raise GenotypeError(f"decision sequence #{index}: {exc}") from None
    raise GenotypeError(f"decision sequence #{index} does not decode in space {space.name!r}")


def _starts(n_in: np.ndarray, lay: _Layout) -> np.ndarray:
    """(n, blocks): the position of each block's first decision, given its input count
    (a block that stops short of max inputs also spends one "no more" decision)."""
    seg = n_in + (n_in < lay.space.max_inputs) + lay.fields
    starts = np.empty_like(seg)
    starts[:, 0] = 1
    np.cumsum(seg[:, :-1], axis=1, out=starts[:, 1:])
    starts[:, 1:] += 1
    return starts


# -- encoding -------------------------------------------------------------------------


class _Encoder:
    """Per space: a BlockReader and, per shape and wiring code, its decision indices
    (-1: not a choice of the space), tabulated once per distinct value."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.reader = BlockReader()
        tied = space.expansions is None
        self._choices = (
            {v: i for i, v in enumerate(LEVELS)},
            {v: i for i, v in enumerate(space.channels if tied else space.expansions)},
            {v: i for i, v in enumerate(space.kernels)},
            {v: i for i, v in enumerate(space.merges)},
        )
        self._channels = {v: i for i, v in enumerate(space.channels)}
        mi = space.max_inputs
        # per shape code: level, expansion, kernel, merge choice indices
        self.shape = np.zeros((0, 4), dtype=np.int64)
        # per wiring code: input count, max node, well-formed; ranks and nodes per slot
        self.wiring = np.zeros((0, 3), dtype=np.int64)
        self.ranks = np.zeros((0, mi), dtype=np.int64)
        self.nodes = np.zeros((0, mi), dtype=np.int64)
        exp0 = space.channels[0] if tied else space.expansions[0]  # type: ignore[index]
        filler = (LEVELS[0], exp0, space.kernels[0], space.merges[0])
        # The blocks `SearchSpace.padded` inserts: choice 0 everywhere (tied spaces read
        # the expansion from the genotype's channels, not from this code).
        self.filler_shape = self.reader.code_shape(filler)
        self.filler_wiring = self.reader.code_wiring(tuple(range(space.min_inputs)))

    def channel_codes(self, channels: np.ndarray) -> np.ndarray:
        return np.fromiter(
            map(self._channels.get, channels.tolist(), repeat(-1)),
            dtype=np.int64,
            count=len(channels),
        )

    def tabulate(self) -> None:
        """Rows for the codes the reader made since the last call."""
        new_shapes = self.reader.shapes[len(self.shape) :]
        if new_shapes:
            rows = [
                [_choice(c, v) for c, v in zip(self._choices, key, strict=True)]
                for key in new_shapes
            ]
            self.shape = np.vstack([self.shape, np.array(rows, dtype=np.int64)])
        new_wirings = self.reader.wirings[len(self.wiring) :]
        if new_wirings:
            parts = [self._wiring_row(key) for key in new_wirings]
            self.wiring = np.vstack([self.wiring, np.array([p[0] for p in parts])])
            self.ranks = np.vstack([self.ranks, np.array([p[1] for p in parts])])
            self.nodes = np.vstack([self.nodes, np.array([p[2] for p in parts])])

    def _wiring_row(self, inputs: tuple) -> tuple[list[int], list[int], list[int]]:
        sp = self.space
        mi = sp.max_inputs
        ranks, nodes = [-1] * mi, [-1] * mi
        ints = all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in inputs)
        ok = (
            ints
            and sp.min_inputs <= len(inputs) <= mi
            and len(set(inputs)) == len(inputs)
            and all(i >= 0 for i in inputs)
        )
        if not ok:
            return [0, 0, 0], ranks, nodes
        for j, node in enumerate(inputs):
            nodes[j] = int(node)
            ranks[j] = int(node) - sum(1 for k in inputs[:j] if k < node)
        return [len(inputs), max(nodes), 1], ranks, nodes


def _choice(choices: dict, value: object) -> int:
    try:
        return choices.get(value, -1)
    except TypeError:  # unhashable
        return -1


@lru_cache(maxsize=32)
def _encoder(space: SearchSpace) -> _Encoder:
    return _Encoder(space)


def encode_batch(space: SearchSpace, genotypes: Sequence[Genotype]) -> np.ndarray:
    """Genotypes → decision rows, `SearchSpace.encode` of each as one int64 array (n ×
    the longest row; shorter rows end in PAD). Pruned genotypes get the filler blocks
    `SearchSpace.padded` gives them. A genotype that does not fit raises the
    GenotypeError `encode` gives for it, prefixed with its index."""
    gs = genotypes if isinstance(genotypes, list | tuple) else list(genotypes)
    n = len(gs)
    wrong = np.fromiter((s != space.name for s in map(_SPACE, gs)), dtype=bool, count=n)
    if wrong.any():
        _explain_genotype(space, gs, int(np.argmax(wrong)))
    if space.fixed is not None:
        return np.zeros((n, 0), dtype=np.int64)
    lay = _layout(space)
    nbk, ni, mi, mn = lay.blocks, space.num_intermediate, space.max_inputs, space.min_inputs
    enc = _encoder(space)
    rb = enc.reader.read(gs)
    enc.tabulate()
    nint = rb.num_blocks - NUM_CELL_INPUTS
    chan = enc.channel_codes(rb.channels)
    bad = (nint < 0) | (nint > ni) | (chan < 0)
    if bad.any():
        _explain_genotype(space, gs, int(np.argmax(bad)))
    # Blocks to their places in the padded cell: intermediate blocks first, fillers,
    # then the outputs, whose inputs past the intermediate blocks shift with them.
    shift = (ni - nint)[:, None]
    filler = np.zeros((n, nbk), dtype=bool)
    if n == 0 or int(shift.max()) == 0:
        sc = rb.shape.reshape(n, nbk)
        wc = rb.wiring.reshape(n, nbk)
    else:
        ends = np.cumsum(rb.num_blocks)
        row = np.repeat(np.arange(n), rb.num_blocks)
        b = np.arange(len(rb.shape)) - np.repeat(ends - rb.num_blocks, rb.num_blocks)
        pos = row * nbk + b + np.where(b >= nint[row], shift[row, 0], 0)
        sc = np.full(n * nbk, enc.filler_shape, dtype=np.int64)
        wc = np.full(n * nbk, enc.filler_wiring, dtype=np.int64)
        sc[pos], wc[pos] = rb.shape, rb.wiring
        sc, wc = sc.reshape(n, nbk), wc.reshape(n, nbk)
        filler.reshape(-1)[:] = True
        filler.reshape(-1)[pos] = False
    lvl, exp, ker, mrg = enc.shape[sc].transpose(2, 0, 1)
    n_in, maxnode, well_formed = enc.wiring[wc].transpose(2, 0, 1)
    nodes = enc.nodes[wc]
    first_shifted = (NUM_CELL_INPUTS + nint)[:, None]
    maxnode = maxnode + np.where(maxnode >= first_shifted, shift, 0)
    p = np.arange(nbk)
    inter = p < ni
    ok = np.where(inter, lvl >= 0, lvl == p - ni)
    # F tied to C: a filler's expansion is C by construction, whatever its code says
    ok &= (exp == chan[:, None]) | filler if space.expansions is None else exp >= 0
    ok &= (ker >= 0) & (mrg >= 0) & (well_formed == 1) & (maxnode < NUM_CELL_INPUTS + p)
    bad = ~ok.all(axis=1)
    if bad.any():
        _explain_genotype(space, gs, int(np.argmax(bad)))
    ranks = enc.ranks[wc] + np.where(nodes >= first_shifted[:, :, None], shift[:, :, None], 0)
    starts = _starts(n_in, lay)
    ends = starts[:, -1] + n_in[:, -1] + (n_in[:, -1] < mi) + lay.fields[-1]
    width = int(ends.max()) if n else 0
    out = np.full((n, width), PAD, dtype=np.int64)
    flat = out.reshape(-1)
    base = (np.arange(n) * width)[:, None]
    if n:
        out[:, 0] = chan
    for j in range(mi):
        present = j < n_in
        flat[(base + starts + j)[present]] = (ranks[:, :, j] + (j >= mn))[present]
    stops = n_in < mi
    flat[(base + starts + n_in)[stops]] = 0  # "no more inputs"
    at = base + starts + n_in + stops
    flat[at[:, :ni]] = lvl[:, :ni]
    at = at + inter
    fields = [ker, mrg] if space.expansions is None else [exp, ker, mrg]
    for values in fields:
        flat[at] = values
        at = at + 1
    return out


def _explain_genotype(space: SearchSpace, genotypes: Sequence[Genotype], index: int) -> None:
    """Raise the one-genotype checks' error for a genotype the batch encoder refused."""
    g = genotypes[index]
    if g.space != space.name:
        raise GenotypeError(f"genotype #{index} is of space {g.space!r}, not {space.name!r}")
    space.validate(g, source=f"genotype #{index}")
    try:
        space.encode(g)
    except GenotypeError as exc:
        raise GenotypeError(f"genotype #{index}: {exc}") from None
    raise GenotypeError(f"genotype #{index} does not fit the decisions of space {space.name!r}")
