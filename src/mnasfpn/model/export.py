"""Keras detector → float32 .tflite (outputs before NMS, as the paper times them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.ir.graph import OpGraph
from mnasfpn.tfenv import load_tensorflow


def convert_keras(model: Any) -> bytes:
    """Float32 TFLite flatbuffer of a Keras model, outputs in the model's output order."""
    tf = load_tensorflow()
    # TensorFlow: only where a model is converted
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    # Freezing one traced function ourselves is ~5x faster than from_keras_model, which
    # exports a whole SavedModel first (16 s → 3 s for a detector here).
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]

    def forward(*xs: Any) -> Any:
        ys = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        return tuple(ys) if isinstance(ys, list | tuple) else ys

    concrete = tf.function(forward).get_concrete_function(*specs)
    frozen = convert_variables_to_constants_v2(concrete)
    # Without a trackable object the converter warns on every call that it takes its
    # older path; that path is the fast one for a frozen graph (with one: 5x slower).
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        return tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    finally:
        absl_log.setLevel(level)


def export_tflite(graph: OpGraph, out: Path | str, *, seed: int = 0) -> Path:
    load_tensorflow()
    # keras_builder imports Keras at its top: only where a model is built
    from mnasfpn.model.keras_builder import build_keras_model

    model = build_keras_model(graph, seed=seed)
    return write_atomic(out, convert_keras(model))
