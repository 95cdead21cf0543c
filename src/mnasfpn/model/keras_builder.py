"""OpGraph → Keras model: one layer per live op; weight-shared ops reuse one layer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import MODEL_INPUT, Op
from mnasfpn.model.layers import make_layer


def layer_name(op_name: str) -> str:
    return op_name.replace("/", "_")


def op_layer(op: Op) -> keras.layers.Layer:
    """A new Keras layer for `op`, named after its weight group or its own name."""
    return make_layer(
        op.type,
        in_shapes=op.in_shapes,
        out_shape=op.out_shape,
        kernel=op.kernel,
        stride=op.stride,
        act=op.act,
        batchnorm=op.batchnorm,
        bias=op.bias,
        name=layer_name(op.weight_group or op.name),
    )


def apply_ops(ops: Iterable[Op], tensors: dict[int, Any]) -> dict[int, Any]:
    """Apply `ops` (in execution order) to `tensors` (op id → Keras tensor; the model input
    is MODEL_INPUT), one new layer per op, one per weight group; returns every op's output
    with the given tensors. Layers are made in op order, so a seeded build is repeatable."""
    tensors = dict(tensors)
    shared: dict[str, keras.layers.Layer] = {}
    for op in ops:
        layer = shared.get(op.weight_group) if op.weight_group else None
        if layer is None:
            layer = op_layer(op)
            if op.weight_group:
                shared[op.weight_group] = layer
        args = [tensors[i] for i in op.inputs]
        tensors[op.id] = layer(args if len(args) > 1 else args[0])
    return tensors


def build_keras_model(
    graph: OpGraph, *, seed: int | None = 0, batch_size: int | None = 1
) -> keras.Model:
    """The detector of `graph` (before NMS): image in [-1, 1] → [boxes [B,A,4], logits [B,A,K]].

    B is 1 for export and timing (what the table measured); training passes None for a free
    batch dimension. Layer names and weights are the same either way, so weights trained on
    one load into the other."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    image = keras.Input(shape=graph.input_shape, batch_size=batch_size, name="image")
    tensors = apply_ops(graph.live_ops(), {MODEL_INPUT: image})
    # A list, not a dict: the .tflite keeps this order (box encodings first).
    outputs = [tensors[i] for i in graph.outputs]
    return keras.Model(image, outputs, name=graph.meta.get("name") or "mnasfpn_detector")
