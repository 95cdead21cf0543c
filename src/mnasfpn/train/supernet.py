"""The one-shot supernet: one set of weights for every head of a search space, and any
child of it run straight from those weights.

A child is the IR of its genotype (the same `build_opgraph` emitters the table and the
Keras builder read) cut at the proxy's frozen backbone (`train.head.head_ops`); each of its
weighted ops reads a slice of one supernet weight:

* channels C and expansion F by slicing (the first C or F channels of the widest weight);
* depthwise kernels by centre crop of the largest (7×7 → 5×5 → 3×3);
* every block input its own 1×1 conv: one weight per (cell, block, input node), whatever
  level the block is at; the level itself comes from the parameter-free max-pool and
  nearest upsampling, in the order SDO (or its absence) says;
* blocks are numbered as the search decides them: a genotype is pruned first, then its
  intermediate blocks keep their order and its four output blocks follow the five
  intermediate slots (`SearchSpace.padded`), so one architecture always reads the same
  weights;
* cells: the supernet has as many as the largest repeat count; a child of r repeats runs
  the first r.

Batch norm keeps its scale and offset in the supernet; its statistics are a child's own
(`mode="collect"` gathers them on a few training batches: BN re-estimation). A child run
from these weights computes what the stand-alone Keras head of its genotype computes with
the same weights copied in (`child_layer_weights`, tested on every space).

Everything runs eagerly in TensorFlow: the child changes every training step and every
evaluation, and eager ops cost microseconds where a retrace costs seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import Op
from mnasfpn.model.keras_builder import layer_name
from mnasfpn.model.layers import BN_EPSILON
from mnasfpn.searchspace.genotype import NUM_CELL_INPUTS, Genotype
from mnasfpn.searchspace.spaces import SearchSpace, get_space
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.detector import CLASS_PRIOR
from mnasfpn.train.head import head_ops, tap_ops
from mnasfpn.train.oneshot_config import check_child

MODES = ("train", "collect", "infer")


@dataclass(frozen=True)
class SupernetShape:
    """What the weights are sized for: a space's widest choices, its decision slots, the
    repeat count and the proxy detector (input size, classes, backbone width, depth D)."""

    space: str
    repeats: int
    detector: DetectorConfig

    @property
    def search_space(self) -> SearchSpace:
        return get_space(self.space)

    @property
    def c_max(self) -> int:
        return max(self.search_space.channels)

    @property
    def f_max(self) -> int:
        sp = self.search_space
        return max(sp.expansions) if sp.expansions is not None else self.c_max

    @property
    def k_max(self) -> int:
        return max(self.search_space.kernels)

    @property
    def slots(self) -> int:
        """Blocks per cell in the decisions' numbering (intermediate slots + 4 outputs)."""
        return self.search_space.num_intermediate + NUM_CELL_INPUTS

    def tap_channels(self) -> tuple[int, int, int]:
        graph = build_opgraph(_any_genotype(self.search_space), self.detector)
        c3, c4, c5 = (graph.ops[i].out_shape[2] for i in tap_ops(graph))
        return c3, c4, c5

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "repeats": self.repeats, **self.detector.to_dict()}


def _any_genotype(space: SearchSpace) -> Genotype:
    return space.sample(random.Random(0))


# ---- the weights ------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpec:
    name: str
    shape: tuple[int, ...]
    init: str  # glorot, zeros, ones, prior


def weight_specs(shape: SupernetShape) -> list[WeightSpec]:
    """Every supernet weight, in a fixed order (its seeded initialization follows it)."""
    sp = shape.search_space
    c, f, k = shape.c_max, shape.f_max, shape.k_max
    c3, c4, c5 = shape.tap_channels()
    pred = shape.detector.predictor
    out: list[WeightSpec] = []

    def conv(name: str, kshape: tuple[int, ...], *, bn: bool, bias: bool = False) -> None:
        out.append(WeightSpec(f"{name}/kernel", kshape, "glorot"))
        width = kshape[-1]
        if bias:
            out.append(WeightSpec(f"{name}/bias", (width,), "zeros"))
        if bn:
            out.append(WeightSpec(f"{name}/gamma", (width,), "ones"))
            out.append(WeightSpec(f"{name}/beta", (width,), "zeros"))

    conv("c6", (1, 1, c5, c), bn=True)
    for r in range(shape.repeats):
        for p in range(shape.slots):
            block = f"cell{r}/block{p}"
            for n in range(NUM_CELL_INPUTS + p):
                cin = (c3, c4, c5)[n] if r == 0 and n < 3 else c
                conv(f"{block}/from{n}", (1, 1, cin, f), bn=True)
            if "se" in sp.merges:
                conv(f"{block}/se", (1, 1, f, f), bn=False, bias=True)
            out.append(WeightSpec(f"{block}/dw/kernel", (k, k, f, 1), "glorot"))
            conv(f"{block}/project", (1, 1, f, c), bn=True)
    a = pred.anchors_per_location
    for i in range(pred.num_layers):
        cin = c if i == 0 else pred.depth
        out.append(WeightSpec(f"tower{i}/depthwise/kernel", (pred.kernel, pred.kernel, cin, 1),
                              "glorot"))  # fmt: skip
        conv(f"tower{i}/conv1x1", (1, 1, cin, pred.depth), bn=True)
    for head, width in (("box", 4), ("class", shape.detector.num_classes)):
        out.append(WeightSpec(f"{head}/depthwise/kernel", (pred.kernel, pred.kernel,
                                                           pred.depth, 1), "glorot"))  # fmt: skip
        conv(f"{head}/conv1x1", (1, 1, pred.depth, a * width), bn=False, bias=True)
    out = [replace(s, init="prior") if s.name == "class/conv1x1/bias" else s for s in out]
    return out


def init_weights(shape: SupernetShape, seed: int) -> dict[str, np.ndarray]:
    """Seeded initial values: Glorot-uniform kernels (fans as Keras computes them for the
    widest shape), BN scale 1 and offset 0, zero biases, the class head at its prior."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in weight_specs(shape):
        if s.init == "glorot":
            receptive = int(np.prod(s.shape[:-2]))
            limit = np.sqrt(6.0 / (receptive * (s.shape[-2] + s.shape[-1])))
            value = rng.uniform(-limit, limit, s.shape)
        elif s.init == "ones":
            value = np.ones(s.shape)
        elif s.init == "prior":
            value = np.full(s.shape, -np.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
        else:
            value = np.zeros(s.shape)
        out[s.name] = value.astype(np.float32)
    return out


# ---- which weight an op reads -------------------------------------------------------------


def canonical_child(shape: SupernetShape, genotype: Genotype) -> Genotype:
    """`genotype` as the supernet holds it (pruned), or a one-line error when it is not a
    head of the supernet's space and repeat count."""
    return check_child(shape.space, shape.repeats, genotype)


def _slot_maps(shape: SupernetShape, g: Genotype) -> tuple[list[int], list[int]]:
    """A pruned genotype's block → decision slot, and node → slot-numbered node."""
    have = g.num_intermediate
    shift = shape.search_space.num_intermediate - have
    slot = [b if b < have else b + shift for b in range(len(g.blocks))]
    node = list(range(NUM_CELL_INPUTS)) + [NUM_CELL_INPUTS + s for s in slot]
    return slot, node


def weight_key(op: Op, g: Genotype, slot: list[int], node: list[int]) -> str | None:
    """The supernet weight an op of the child reads (None: a weightless op)."""
    if op.type not in ("conv2d", "dwconv2d"):
        return None
    if op.weight_group is not None:
        return op.weight_group
    if op.name == "backbone/c6/conv1x1":
        return "c6"
    if op.cell is None or op.block is None or op.role is None:
        raise RuntimeError(f"op {op.name} has no place in a cell (IR tags changed?)")
    block = f"cell{op.cell}/block{slot[op.block]}"
    if op.is_block_input:
        source = g.blocks[op.block].inputs[int(op.role.removeprefix("input"))]
        return f"{block}/from{node[source]}"
    if op.role == "merge":
        return f"{block}/se"
    if op.role in ("dw", "project"):
        return f"{block}/{op.role}"
    raise RuntimeError(f"op {op.name} (role {op.role}) has no supernet weight")


def _kernel_window(op: Op, full: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which part of the widest kernel an op reads, as (begin, size): the first input and
    output channels, the centre k×k of a depthwise kernel."""
    if op.type == "conv2d":
        return (0, 0, 0, 0), (full[0], full[1], op.in_shapes[0][2], op.out_shape[2])
    off = (full[0] - op.kernel) // 2
    return (off, off, 0, 0), (op.kernel, op.kernel, op.out_shape[2], full[3])


def _take(tf: Any, value: Any, begin: tuple[int, ...], size: tuple[int, ...]) -> Any:
    """value[begin : begin + size] (the value itself when that is all of it: a slice op
    and its gradient cost more than the arithmetic in a small child)."""
    if tuple(value.shape) == size:
        return value
    return tf.slice(value, begin, size)


def _numpy_window(value: np.ndarray, begin: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    return value[tuple(slice(b, b + n) for b, n in zip(begin, size, strict=True))]


@dataclass(frozen=True)
class _Step:
    op: Op
    key: str | None  # supernet weight
    layer: str  # the stand-alone Keras layer (its name): BN statistics are per layer


class Child:
    """One head of the supernet, ready to run on cached C3..C5 features."""

    def __init__(self, shape: SupernetShape, genotype: Genotype) -> None:
        self.shape = shape
        self.genotype = canonical_child(shape, genotype)
        graph = build_opgraph(self.genotype, shape.detector)
        ops, self.levels = head_ops(graph)
        taps = tap_ops(graph)
        self.inputs = [taps[lv] for lv in self.levels]
        self.outputs = tuple(graph.outputs)
        slot, node = _slot_maps(shape, self.genotype)
        self.steps = [
            _Step(op, weight_key(op, self.genotype, slot, node),
                  layer_name(op.weight_group or op.name))
            for op in ops
        ]  # fmt: skip
        self.keys = sorted({s.key for s in self.steps if s.key is not None})
        self.graph = graph

    def weight_names(self) -> list[str]:
        """The supernet weights this child reads (kernels, biases, BN scales/offsets)."""
        names = []
        for s in self.steps:
            if s.key is None:
                continue
            names.append(f"{s.key}/kernel")
            if s.op.bias:
                names.append(f"{s.key}/bias")
            if s.op.batchnorm:
                names += [f"{s.key}/gamma", f"{s.key}/beta"]
        return sorted(set(names))

    def forward(
        self,
        weights: Mapping[str, Any],
        features: list[Any],
        mode: str = "infer",
        stats: BnStats | None = None,
    ) -> tuple[Any, Any, list[Any]]:
        """(box encodings, class logits, the kernels read, each once) on `features` (the
        taps of `self.levels`). `mode`: "train" normalizes by batch statistics, "collect"
        does too and adds them to `stats`, "infer" normalizes by `stats`."""
        tf = load_tensorflow()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "train" and stats is None:
            raise ValueError(f"mode {mode!r} needs BN statistics")
        tensors: dict[int, Any] = dict(zip(self.inputs, features, strict=True))
        sliced: dict[str, Any] = {}
        for s in self.steps:
            op = s.op
            args = [tensors[i] for i in op.inputs]
            if s.key is not None:
                kernel = sliced.get(s.key)
                if kernel is None:
                    full = weights[f"{s.key}/kernel"]
                    kernel = sliced[s.key] = _take(tf, full, *_kernel_window(op, tuple(full.shape)))
                tensors[op.id] = _weighted(tf, op, s, kernel, weights, args[0], mode, stats)
            else:
                tensors[op.id] = _weightless(tf, op, args)
        codes, logits = (tensors[i] for i in self.outputs)
        return codes, logits, list(sliced.values())


def _weighted(tf: Any, op: Op, s: _Step, kernel: Any, weights: Mapping[str, Any], x: Any,
              mode: str, stats: BnStats | None) -> Any:  # fmt: skip
    width = op.out_shape[2]
    if mode == "infer" and op.batchnorm and op.type == "conv2d":
        # BN folded into the conv, as the converter folds it: one conv and one add per op
        assert stats is not None
        folded, offset = stats.folded(s, kernel, weights, width)
        y = tf.nn.conv2d(x, folded, op.stride, "SAME") + offset
        return tf.nn.relu6(y) if op.act == "relu6" else y
    if op.type == "conv2d":
        y = tf.nn.conv2d(x, kernel, op.stride, "SAME")
    else:
        y = tf.nn.depthwise_conv2d(x, kernel, [1, op.stride, op.stride, 1], "SAME")
    if op.bias:
        y = y + _take(tf, weights[f"{s.key}/bias"], (0,), (width,))
    if op.batchnorm:
        gamma = _take(tf, weights[f"{s.key}/gamma"], (0,), (width,))
        beta = _take(tf, weights[f"{s.key}/beta"], (0,), (width,))
        if mode == "train":  # one fused op each way: the step's op count is its cost
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, gamma, beta, epsilon=BN_EPSILON)
        else:
            if mode == "infer":
                assert stats is not None
                mean, var = stats.get(s.layer, width)
            else:
                mean, var = tf.nn.moments(y, [0, 1, 2])
                assert stats is not None
                stats.add(s.layer, mean, var)
            y = tf.nn.batch_normalization(y, mean, var, beta, gamma, BN_EPSILON)
    if op.act == "relu6":
        y = tf.nn.relu6(y)
    return y


def _weightless(tf: Any, op: Op, args: list[Any]) -> Any:
    t = op.type
    if t == "maxpool":
        return tf.nn.max_pool2d(args[0], op.kernel, op.stride, "SAME")
    if t == "resize_nearest":
        return tf.image.resize(args[0], op.out_shape[:2], method="nearest")
    if t == "add":
        y = args[0] + args[1]
        return tf.nn.relu6(y) if op.act == "relu6" else y
    if t == "mul":
        return args[0] * args[1]
    if t == "mean":
        return tf.reduce_mean(args[0], axis=[1, 2], keepdims=True)
    if t == "sigmoid":
        return tf.sigmoid(args[0])
    if t == "reshape":
        return tf.reshape(args[0], [-1, *op.out_shape])
    if t == "concat":
        return tf.concat(args, axis=1)
    raise RuntimeError(f"no supernet kernel for op type {t!r}")


class BnStats:
    """A child's batch-norm statistics per stand-alone layer: the mean over the batches
    (and, for the predictor's layers shared across levels, over the levels) of each call's
    batch mean and variance, what a moving average of them converges to."""

    def __init__(self) -> None:
        self.sums: dict[str, list[Any]] = {}
        self.frozen: dict[str, tuple[Any, Any]] = {}
        self._folded: dict[str, tuple[Any, Any]] = {}

    def folded(
        self, s: Any, kernel: Any, weights: Mapping[str, Any], width: int
    ) -> tuple[Any, Any]:
        """A BN conv's kernel scaled by γ/√(σ²+ε) and its offset β − μ·γ/√(σ²+ε), made once
        per layer (a child scores many batches with the same statistics)."""
        got = self._folded.get(s.layer)
        if got is None:
            tf = load_tensorflow()
            mean, var = self.get(s.layer, width)
            gamma = _take(tf, weights[f"{s.key}/gamma"], (0,), (width,))
            beta = _take(tf, weights[f"{s.key}/beta"], (0,), (width,))
            scale = gamma * tf.math.rsqrt(var + BN_EPSILON)
            got = self._folded[s.layer] = (kernel * scale, beta - mean * scale)
        return got

    def add(self, layer: str, mean: Any, var: Any) -> None:
        entry = self.sums.get(layer)
        if entry is None:
            self.sums[layer] = [mean, var, 1]
        else:
            entry[0] = entry[0] + mean
            entry[1] = entry[1] + var
            entry[2] += 1
        self.frozen.pop(layer, None)
        self._folded.pop(layer, None)

    def get(self, layer: str, width: int) -> tuple[Any, Any]:
        got = self.frozen.get(layer)
        if got is None:
            if layer not in self.sums:
                raise KeyError(f"no BN statistics for layer {layer} (re-estimate first)")
            m, v, n = self.sums[layer]
            got = self.frozen[layer] = (m / n, v / n)
        return got

    def layers(self) -> list[str]:
        return sorted(self.sums)

    def numpy(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {k: tuple(np.asarray(t) for t in self.get(k, 0)) for k in self.layers()}


def child_layer_weights(
    child: Child, weights: Mapping[str, Any], stats: BnStats | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """The child's weights as its stand-alone Keras head holds them: per layer name, the
    sliced kernel, bias, BN scale and offset, and (with `stats`) moving mean and variance."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in child.steps:
        if s.key is None or s.layer in out:
            continue
        op = s.op
        full = np.asarray(weights[f"{s.key}/kernel"])
        entry = {"kernel": _numpy_window(full, *_kernel_window(op, full.shape))}
        width = op.out_shape[2]
        if op.bias:
            entry["bias"] = np.asarray(weights[f"{s.key}/bias"])[:width]
        if op.batchnorm:
            entry["gamma"] = np.asarray(weights[f"{s.key}/gamma"])[:width]
            entry["beta"] = np.asarray(weights[f"{s.key}/beta"])[:width]
            if stats is not None:
                mean, var = stats.get(s.layer, width)
                entry["moving_mean"], entry["moving_variance"] = np.asarray(mean), np.asarray(var)
        out[s.layer] = entry
    return out


def load_into_keras(model: Any, layer_weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Copy `child_layer_weights` into the Keras head of the same genotype
    (`train.head.build_head`)."""
    for name, entry in layer_weights.items():
        layer = model.get_layer(name)
        conv = layer.conv
        conv.kernel.assign(entry["kernel"])
        if "bias" in entry:
            conv.bias.assign(entry["bias"])
        for field in ("gamma", "beta", "moving_mean", "moving_variance"):
            if field in entry:
                getattr(layer.bn, field).assign(entry[field])


def variables_of(weights: Mapping[str, Any], names: Iterable[str]) -> list[Any]:
    return [weights[n] for n in names]
