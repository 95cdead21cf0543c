"""The pieces a detector's live ops split into, each made once by the IR's own emitters.

A component is the ops of one piece of a detector. Its key is the values those ops
depend on, so a whole search space has a few thousand:
  * the backbone (with C6) and the predictor: C;
  * resampling one block input to (R, F): the input node's level and channels, R, F and
    SDO, less the SDO pre-pool;
  * an SDO pre-pool (the max-pool of a node itself, shared by every block that pools that
    node by the same stride): the node's level and channels and the target level;
  * a block's body (merge + ReLU6, depthwise, project, residual): R, F, k, merge, the
    number of inputs, C and whether it has the cell residual.
Keys are plain values, not positions in a table of the spaces' choices: a genotype with
any kernel, width or merge the emitters build has its components.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from mnasfpn.ir.build import level_size, mnasfpn_block, mobilenet_v2, resample, ssd_predictor
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.graph import GraphBuilder, Tensor
from mnasfpn.ir.ops import MODEL_INPUT, PARTS, Op
from mnasfpn.lut.calibration import STRUCTURE_FEATURES, feature_columns
from mnasfpn.searchspace.genotype import LEVELS, Block

COLUMNS = feature_columns()
_COLUMN_INDEX = {c: i for i, c in enumerate(COLUMNS)}

# (input level, input channels, R, F, sdo); (input level, input channels, target level);
# (R, F, k, merge, inputs, C, residual)
ResampleKey = tuple[int, int, int, int, bool]
PoolKey = tuple[int, int, int]
BodyKey = tuple[int, int, int, str, int, int, bool]


class Components:
    """Every component made so far for one table: its op keys, its latency per feature
    column, its part, its structure and its first key the table lacks. `backbone`,
    `predictor`, `resample`, `pool` and `body` map a key to a component id (look a key
    up there first; `make_*` adds it)."""

    def __init__(self, latencies: Mapping[str, float], config: DetectorConfig) -> None:
        self.latencies = latencies
        self.config = config
        g = self._builder()
        taps = mobilenet_v2(g, g.input, config.alpha)
        self._taps = {lv: t.shape[2] for lv, t in taps.items()}
        self._first: dict[int, list[int]] = {}
        self.keys: list[Counter[str]] = []
        self._part: list[int] = []
        self._vec: list[np.ndarray] = []
        self._struct: list[np.ndarray] = []
        self.missing_key: list[str | None] = []
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.backbone: dict[int, int] = {}
        self.predictor: dict[int, int] = {}
        self.resample: dict[ResampleKey, int] = {}
        self.pool: dict[PoolKey, int] = {}
        self.body: dict[BodyKey, int] = {}

    def first_cell_channels(self, channels: int) -> list[int]:
        """Channels of the first cell's input nodes: the backbone taps, and C6 (C)."""
        have = self._first.get(channels)
        if have is None:
            have = self._first[channels] = [self._taps.get(lv, channels) for lv in LEVELS]
        return have

    def __len__(self) -> int:
        return len(self.keys)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per component: latency per feature column, part index, structure (per
        STRUCTURE_FEATURES) and has-a-missing-key."""
        if self._arrays is None or len(self._arrays[1]) != len(self):
            self._arrays = (
                np.array(self._vec).reshape(-1, len(COLUMNS)),
                np.array(self._part, dtype=np.int64),
                np.array(self._struct).reshape(-1, len(STRUCTURE_FEATURES)),
                np.array([m is not None for m in self.missing_key], dtype=bool),
            )
        return self._arrays

    def _add(self, ops: Sequence[Op]) -> int:
        parts = {op.part for op in ops}
        assert len(parts) == 1, parts
        keys = [op.key for op in ops]
        vec = np.zeros(len(COLUMNS))
        missing = None
        for op, key in zip(ops, keys, strict=True):
            lat = self.latencies.get(key)
            if lat is None:
                missing = missing or key
                continue
            vec[_COLUMN_INDEX[(op.type, op.part)]] += lat
        self.keys.append(Counter(keys))
        self._part.append(PARTS.index(parts.pop()))
        self._vec.append(vec)
        self._struct.append(structure_of(ops))
        self.missing_key.append(missing)
        return len(self.keys) - 1

    # -- making components --------------------------------------------------------------

    def _builder(self) -> GraphBuilder:
        s = self.config.input_size
        return GraphBuilder((s, s, 3))

    def _node(self, level: int, channels: int, node: int = 0) -> Tensor:
        # Each stand-in node gets its own (negative) id, so the builder's merging of
        # identical weightless ops never joins two different nodes.
        n = level_size(self.config.input_size, level)
        return Tensor(MODEL_INPUT - 1 - node, (n, n, channels))

    def make_backbone(self, channels: int) -> int:
        g = self._builder()
        taps = mobilenet_v2(g, g.input, self.config.alpha)
        c6 = g.maxpool(taps[5], stride=2, part="backbone", name="backbone/c6/maxpool")
        g.conv(c6, channels, part="backbone", name="backbone/c6/conv1x1")
        self.backbone[channels] = cid = self._add(g.ops)
        return cid

    def make_predictor(self, channels: int) -> int:
        g = self._builder()
        feats = [self._node(lv, channels, node=i) for i, lv in enumerate(LEVELS)]
        ssd_predictor(g, feats, self.config.predictor, self.config.num_classes)
        self.predictor[channels] = cid = self._add(g.ops)
        return cid

    def _resample_ops(self, key: ResampleKey) -> tuple[list[Op], list[Op]]:
        """Bringing one input node to (R, F), split into the SDO pre-pool (the max-pool
        that reads the node itself) and the rest."""
        level, channels, r, f, sdo = key
        g = self._builder()
        node = self._node(level, channels)
        resample(g, node, level, r, f, sdo=sdo, name="head/block/in0")
        pre = [op for op in g.ops if op.type == "maxpool" and op.inputs[0] == node.op]
        return pre, [op for op in g.ops if op not in pre]

    def make_resample(self, key: ResampleKey) -> int:
        self.resample[key] = cid = self._add(self._resample_ops(key)[1])
        return cid

    def make_pool(self, key: PoolKey) -> int:
        level, channels, target = key
        pre, _ = self._resample_ops((level, channels, target, channels, True))
        assert len(pre) == 1, pre
        self.pool[key] = cid = self._add(pre)
        return cid

    def make_body(self, key: BodyKey) -> int:
        """Merge + ReLU6, depthwise, project and residual of a block, made by
        `mnasfpn_block` itself (its inputs' resampling left out)."""
        r, f, k, merge, n_in, channels, residual = key
        nodes = [self._node(lv, channels, node=i) for i, lv in enumerate(LEVELS)]
        nodes += [self._node(r, channels, node=i) for i in range(len(nodes), n_in)]
        g = self._builder()
        block = Block(tuple(range(n_in)), r, f, k, merge)
        res = self._node(r, channels, node=len(nodes)) if residual else None
        mnasfpn_block(g, block, nodes, channels, sdo=True, residual=res, name="head/block")
        self.body[key] = cid = self._add([op for op in g.ops if not op.is_block_input])
        return cid


def structure_of(ops: Sequence[Op]) -> np.ndarray:
    """STRUCTURE_FEATURES of some ops: fp32 weight MiB (weights and bias after BN folding)
    and their count."""
    return np.array([sum(op.deployed_params for op in ops) * 4 / 2**20, len(ops)])
