"""The detector cut where the proxy's frozen backbone ends: its C3, C4, C5 taps, the
trainable head above them (C6, the cells, the predictor) as a Keras model fed by cached
taps, and the whole detector with its backbone half as a second model sharing layers."""

from __future__ import annotations

from typing import Any

from mnasfpn.ir.build import TAP_BLOCKS
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import MODEL_INPUT, Op

LEVEL_NAMES = ("c3", "c4", "c5")


def tap_ops(graph: OpGraph) -> list[int]:
    """Op ids of the backbone's C3, C4, C5 outputs."""
    by_name = {op.name: op.id for op in graph.ops}
    out = []
    for block in sorted(TAP_BLOCKS):
        name = f"backbone/block{block}"
        out.append(by_name.get(f"{name}/add", by_name.get(f"{name}/project", -1)))
    if -1 in out:
        raise RuntimeError("backbone taps not found in the IR (op names changed?)")
    return out


def is_frozen_backbone(op: Op) -> bool:
    """Backbone ops up to C5; C6 (a max-pool and a 1×1 conv to C) belongs to the head."""
    return op.part == "backbone" and not op.name.startswith("backbone/c6/")


def head_ops(graph: OpGraph) -> tuple[list[Op], list[int]]:
    """The head's live ops in execution order, and which taps (0, 1, 2 for C3, C4, C5) it
    reads, in order."""
    ops = [op for op in graph.live_ops() if not is_frozen_backbone(op)]
    used = {i for op in ops for i in op.inputs}
    taps = tap_ops(graph)
    levels = [level for level, op_id in enumerate(taps) if op_id in used]
    if not used <= {taps[lv] for lv in levels} | {op.id for op in ops}:
        raise RuntimeError("the head reads backbone ops other than C3..C5")
    return ops, levels


def build_head(graph: OpGraph) -> tuple[Any, list[int]]:
    """The trainable part (C6, cells, predictor) as a Keras model fed by the cached taps it
    reads; returns the model and which of C3, C4, C5 (0, 1, 2) it takes, in order."""
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    from mnasfpn.model.keras_builder import apply_ops

    ops, levels = head_ops(graph)
    taps = tap_ops(graph)
    inputs = {taps[lv]: keras.Input(shape=graph.ops[taps[lv]].out_shape, name=LEVEL_NAMES[lv])
              for lv in levels}  # fmt: skip
    tensors = apply_ops(ops, inputs)
    outputs = [tensors[i] for i in graph.outputs]
    return keras.Model(list(inputs.values()), outputs, name="proxy_head"), levels


def build_detector_and_backbone(graph: OpGraph) -> tuple[Any, Any]:
    """(whole detector image → [codes, logits], its backbone image → [C3, C4, C5]) sharing
    layers; free batch dimension."""
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    from mnasfpn.model.keras_builder import apply_ops

    image = keras.Input(shape=graph.input_shape, name="image")
    tensors = apply_ops(graph.live_ops(), {MODEL_INPUT: image})
    detector = keras.Model(image, [tensors[i] for i in graph.outputs], name="reference")
    return detector, keras.Model(image, [tensors[i] for i in tap_ops(graph)], name="backbone")
