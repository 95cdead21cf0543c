"""Keras detector → float32 .tflite (outputs before NMS, as the paper times them)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from mnasfpn.ir.graph import OpGraph


def convert_keras(model: Any) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # The converter exports a SavedModel first and prints every captured variable.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return converter.convert()


def write_atomic(data: bytes, out: Path) -> Path:
    """Write via a temporary file and rename, so a killed run never leaves half a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def export_tflite(graph: OpGraph, out: Path | str, *, seed: int = 0) -> Path:
    from mnasfpn.model.keras_builder import build_keras_model

    model = build_keras_model(graph, seed=seed)
    return write_atomic(convert_keras(model), Path(out))
