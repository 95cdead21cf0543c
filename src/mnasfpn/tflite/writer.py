"""IR → float32 `.tflite` flatbuffer directly, with no TensorFlow.

It writes what the TensorFlow converter writes for the Keras model of the same ops (the
reference, `model/export.py`): the same builtin operators, opcode versions, builtin
options, tensor shapes and types, constant inputs (a bias on every convolution, an int32
size/axes/shape tensor where the op takes one) and `min_runtime_version` metadata. Batch
norm is folded into its convolution and ReLU6 fused into the op, as the converter does.

Weights are random (Keras' default Glorot-uniform kernels; biases zero, which is also what
a freshly initialised batch norm folds to): latency does not depend on their values, only
on their shapes. Identical constants are stored once, as the converter does.

Differences that do not change what runs: tensors are named after the IR's ops, ops run in
the IR's order (the converter follows Keras' layer-depth order; the dataflow graph is the
same), tensors without data share the empty buffer 0, and the converter's own
CONVERSION_METADATA entry (its TensorFlow version) is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import MODEL_INPUT, Op, Shape, parse_key

# Bumped whenever the bytes this module writes change: cached models are keyed by it.
WRITER_VERSION = "1"
SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16  # the schema's force_align on Buffer.data
DESCRIPTION = f"mnasfpn direct writer {WRITER_VERSION}"

_ACT = {
    "none": fb.ActivationFunctionType.NONE,
    "relu6": fb.ActivationFunctionType.RELU6,
}


@dataclass(frozen=True)
class OpCode:
    """A builtin operator as the converter versions it for float32 inputs, and the oldest
    runtime that runs that version (TFLite's runtime_version table)."""

    builtin: int
    version: int
    min_runtime: str


# The op types the IR emits (ir.ops.TFLITE_OP), float32 throughout.
OPCODES: dict[str, OpCode] = {
    "conv2d": OpCode(fb.BuiltinOperator.CONV_2D, 1, "1.5.0"),
    "dwconv2d": OpCode(fb.BuiltinOperator.DEPTHWISE_CONV_2D, 1, "1.5.0"),
    "maxpool": OpCode(fb.BuiltinOperator.MAX_POOL_2D, 1, "1.5.0"),
    # Keras' nearest resize uses half-pixel centres: version 3.
    "resize_nearest": OpCode(fb.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, 3, "2.3.0"),
    "add": OpCode(fb.BuiltinOperator.ADD, 1, "1.5.0"),
    "mul": OpCode(fb.BuiltinOperator.MUL, 1, "1.5.0"),
    "mean": OpCode(fb.BuiltinOperator.MEAN, 1, "1.6.0"),
    "sigmoid": OpCode(fb.BuiltinOperator.LOGISTIC, 1, "1.14.0"),
    "reshape": OpCode(fb.BuiltinOperator.RESHAPE, 1, "1.5.0"),
    "concat": OpCode(fb.BuiltinOperator.CONCATENATION, 1, "1.5.0"),
}


class WriterError(MnasfpnError, ValueError):
    """An op the writer cannot express (an unknown type or activation)."""


class _AlignedBuffer(fb.BufferT):
    """A Buffer whose data starts on a 16-byte boundary, as the schema asks (the generated
    Pack aligns only to the element size); kernels may read weights in place."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # the generated API's name
        data = None
        if self.data is not None:
            raw = bytes(self.data)
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class _ModelBuilder:
    """Collects tensors, constant buffers, opcodes and operators of one subgraph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[fb.TensorT] = []
        self.buffers: list[fb.BufferT] = [_AlignedBuffer()]  # 0: the empty buffer
        self.operators: list[fb.OperatorT] = []
        self.opcodes: dict[str, int] = {}
        self._constants: dict[tuple[int, tuple[int, ...], bytes], int] = {}
        self._groups: dict[str, tuple[int, int]] = {}

    def tensor(self, shape: Sequence[int], name: str, dtype: int = fb.TensorType.FLOAT32) -> int:
        t = fb.TensorT()
        # numpy vectors: the generated Pack writes them in one copy, lists element by element.
        t.shape = np.array(shape, np.int32)
        t.type = dtype
        t.buffer = 0
        t.name = name
        t.quantization = fb.QuantizationParametersT()
        t.hasRank = True
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, array: np.ndarray, name: str) -> int:
        """A constant tensor; identical constants (same type, shape and bytes) are shared,
        as the converter shares them."""
        dtype = {np.dtype(np.float32): fb.TensorType.FLOAT32,
                 np.dtype(np.int32): fb.TensorType.INT32}[array.dtype]  # fmt: skip
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        key = (dtype, tuple(array.shape), data)
        if key in self._constants:
            return self._constants[key]
        buf = _AlignedBuffer()
        buf.data = data
        self.buffers.append(buf)
        index = self.tensor(array.shape, name, dtype)
        self.tensors[index].buffer = len(self.buffers) - 1
        self._constants[key] = index
        return index

    def operator(
        self, op_type: str, inputs: list[int], output: int, options_type: int, options: Any
    ) -> None:
        if op_type not in self.opcodes:
            self.opcodes[op_type] = len(self.opcodes)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[op_type]
        o.inputs = np.array(inputs, np.int32)
        o.outputs = np.array([output], np.int32)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    # -- weights ----------------------------------------------------------------------

    def _glorot(self, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return self.rng.uniform(-limit, limit, size=shape).astype(np.float32)

    def conv_weights(self, op: Op, name: str) -> tuple[int, int]:
        """(filter, bias) tensors; ops of one weight group share them."""
        if op.weight_group is not None and op.weight_group in self._groups:
            return self._groups[op.weight_group]
        k, cin, cout = op.kernel, op.in_shapes[0][-1], op.out_shape[-1]
        if op.type == "conv2d":
            # TFLite's filter layout is OHWI; Keras' fans are computed on its HWIO kernel.
            w = self._glorot((cout, k, k, cin), k * k * cin, k * k * cout)
        else:
            w = self._glorot((1, k, k, cout), k * k * cout, k * k)
        weights = (
            self.constant(w, f"{name}/weights"),
            self.constant(np.zeros(cout, np.float32), f"{name}/bias"),
        )
        if op.weight_group is not None:
            self._groups[op.weight_group] = weights
        return weights

    # -- ops --------------------------------------------------------------------------

    def add_op(self, op: Op, inputs: list[int], name: str) -> int:
        """Emit `op` reading the tensors `inputs`; returns its output tensor."""
        if op.type not in OPCODES:
            raise WriterError(f"{name}: no TFLite op for IR op type {op.type!r}")
        if op.act not in _ACT:
            raise WriterError(f"{name}: unsupported activation {op.act!r}")
        act = _ACT[op.act]
        out = self.tensor((1, *op.out_shape), name)
        t = op.type
        opts: Any = None
        opts_type = fb.BuiltinOptions.NONE
        if t in ("conv2d", "dwconv2d"):
            weights, bias = self.conv_weights(op, name)
            inputs = [inputs[0], weights, bias]
            if t == "conv2d":
                opts, opts_type = fb.Conv2DOptionsT(), fb.BuiltinOptions.Conv2DOptions
            else:
                opts = fb.DepthwiseConv2DOptionsT()
                opts_type = fb.BuiltinOptions.DepthwiseConv2DOptions
                opts.depthMultiplier = 1
            opts.padding = fb.Padding.SAME
            opts.strideW = opts.strideH = op.stride
            opts.fusedActivationFunction = act
        elif t == "maxpool":
            opts, opts_type = fb.Pool2DOptionsT(), fb.BuiltinOptions.Pool2DOptions
            opts.padding = fb.Padding.SAME
            opts.strideW = opts.strideH = op.stride
            opts.filterWidth = opts.filterHeight = op.kernel
            opts.fusedActivationFunction = act
        elif t == "resize_nearest":
            size = np.array(op.out_shape[:2], np.int32)
            inputs = [inputs[0], self.constant(size, f"{name}/size")]
            opts = fb.ResizeNearestNeighborOptionsT()
            opts_type = fb.BuiltinOptions.ResizeNearestNeighborOptions
            opts.alignCorners, opts.halfPixelCenters = False, True
        elif t == "add":
            opts, opts_type = fb.AddOptionsT(), fb.BuiltinOptions.AddOptions
            opts.fusedActivationFunction = act
            opts.potScaleInt16 = True
        elif t == "mul":
            opts, opts_type = fb.MulOptionsT(), fb.BuiltinOptions.MulOptions
            opts.fusedActivationFunction = act
        elif t == "mean":
            axes = np.array([1, 2], np.int32)  # spatial mean, keeping dims (Keras keepdims)
            inputs = [inputs[0], self.constant(axes, f"{name}/axes")]
            opts, opts_type = fb.ReducerOptionsT(), fb.BuiltinOptions.ReducerOptions
            opts.keepDims = True
        elif t == "reshape":
            shape = np.array((1, *op.out_shape), np.int32)
            inputs = [inputs[0], self.constant(shape, f"{name}/shape")]
        elif t == "concat":
            opts = fb.ConcatenationOptionsT()
            opts_type = fb.BuiltinOptions.ConcatenationOptions
            opts.axis = 1  # rows of [1, rows, width] tensors (the anchors)
            opts.fusedActivationFunction = act
        # sigmoid (LOGISTIC) takes no options.
        self.operator(t, inputs, out, opts_type, opts)
        return out

    # -- the file ---------------------------------------------------------------------

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        sub = fb.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = np.array(inputs, np.int32)
        sub.outputs = np.array(outputs, np.int32)
        sub.operators = self.operators
        sub.name = "main"

        model = fb.ModelT()
        model.version = SCHEMA_VERSION
        model.description = DESCRIPTION
        model.subgraphs = [sub]
        codes = []
        for op_type in self.opcodes:  # insertion order = opcode index
            spec = OPCODES[op_type]
            code = fb.OperatorCodeT()
            code.builtinCode = spec.builtin
            # Builtins below 127 are also written to the deprecated int8 field, which
            # older runtimes read.
            code.deprecatedBuiltinCode = min(
                spec.builtin, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
            )
            code.version = spec.version
            codes.append(code)
        model.operatorCodes = codes
        # The oldest runtime that runs every op, as the converter records it: a
        # NUL-padded 16-byte string.
        runtime = max((OPCODES[t].min_runtime for t in self.opcodes), key=_version_key)
        runtime_buf = _AlignedBuffer()
        runtime_buf.data = runtime.encode().ljust(16, b"\0")
        self.buffers.append(runtime_buf)
        meta = fb.MetadataT()
        meta.name = "min_runtime_version"
        meta.buffer = len(self.buffers) - 1
        model.metadata = [meta]
        model.buffers = self.buffers

        builder = flatbuffers.Builder(1024 + sum(len(b.data or b"") for b in self.buffers))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def opgraph_tflite(graph: OpGraph, *, seed: int = 0) -> bytes:
    """The whole detector of `graph` (its live ops; outputs before NMS) as a .tflite."""
    b = _ModelBuilder(seed)
    image = b.tensor((1, *graph.input_shape), "image")
    tensors: dict[int, int] = {MODEL_INPUT: image}
    for op in graph.live_ops():
        tensors[op.id] = b.add_op(op, [tensors[i] for i in op.inputs], op.name)
    return b.finish([image], [tensors[i] for i in graph.outputs])


def micromodel_op(key: str) -> Op:
    """The single op an op key stands for, reading model inputs -1, -2, … in order.

    After BN folding every convolution of a detector carries a bias, so the micro-model's
    convolution has one (as the converter's micro-model does)."""
    f = parse_key(key)
    in_shapes: tuple[Shape, ...] = f["in_shapes"]  # type: ignore[assignment]
    op_type = str(f["type"])
    return Op(
        id=0,
        type=op_type,
        inputs=tuple(-1 - i for i in range(len(in_shapes))),
        in_shapes=in_shapes,
        out_shape=f["out_shape"],  # type: ignore[arg-type]
        part="micromodel",
        name=op_type,
        kernel=int(f["kernel"]),  # type: ignore[call-overload]
        stride=int(f["stride"]),  # type: ignore[call-overload]
        act=str(f["act"]),
        bias=op_type in ("conv2d", "dwconv2d"),
    )


def micromodel_tflite(key: str, *, seed: int = 0) -> bytes:
    """A one-op model of the op `key`: its activation inputs are the model's inputs."""
    op = micromodel_op(key)
    b = _ModelBuilder(seed)
    inputs = [b.tensor((1, *s), f"x{i}") for i, s in enumerate(op.in_shapes)]
    out = b.add_op(op, inputs, op.name)
    return b.finish(inputs, [out])


def write_opgraph(graph: OpGraph, out: Path | str, *, seed: int = 0) -> Path:
    """Write the detector of `graph` atomically (no half file if killed)."""
    return write_atomic(out, opgraph_tflite(graph, seed=seed))


def write_micromodel(key: str, out: Path | str, *, seed: int = 0) -> Path:
    return write_atomic(out, micromodel_tflite(key, seed=seed))
