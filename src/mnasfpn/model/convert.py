"""Which tool turns the IR into .tflite bytes: the direct writer or the TensorFlow converter.

`direct` (the default) writes the flatbuffer from the IR with no TensorFlow (tflite/); its
output equals the converter's op for op (tests/test_tflite_writer.py). `tf` builds the
Keras model and runs the TensorFlow converter: the reference, and what a trained model
goes through. Importing this module loads neither Keras nor TensorFlow.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from importlib import metadata

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.graph import OpGraph

CONVERTERS: tuple[str, ...] = ("direct", "tf")
DEFAULT_CONVERTER = "direct"
TRAIN_EXTRA_HINT = "pip install 'mnasfpn[train]'"


class ConverterError(MnasfpnError, ValueError):
    """An unknown converter, or the TensorFlow one without TensorFlow installed."""


def check_converter(converter: str) -> str:
    if converter not in CONVERTERS:
        raise ConverterError(
            f"unknown converter {converter!r}; choose one of: {', '.join(CONVERTERS)}"
        )
    return converter


@cache
def tensorflow_version() -> str:
    """TensorFlow's version, read from its package metadata without importing it."""
    try:
        # Importable at all (find_spec does not import), then its distribution's version.
        if importlib.util.find_spec("tensorflow") is None:
            raise ModuleNotFoundError("tensorflow")
        return metadata.version("tensorflow")
    except (ModuleNotFoundError, metadata.PackageNotFoundError):
        raise ConverterError(
            f"--converter tf needs TensorFlow, which is not installed: {TRAIN_EXTRA_HINT} "
            "(or use --converter direct)"
        ) from None


def converter_id(converter: str = DEFAULT_CONVERTER) -> str:
    """What makes files, for cache keys and table metadata: 'direct-<writer version>' or
    'tf-<TensorFlow version>'."""
    if check_converter(converter) == "direct":
        from mnasfpn.tflite.writer import WRITER_VERSION

        return f"direct-{WRITER_VERSION}"
    return f"tf-{tensorflow_version()}"


def detector_tflite(graph: OpGraph, converter: str = DEFAULT_CONVERTER, *, seed: int = 0) -> bytes:
    """The detector of `graph` (live ops, outputs before NMS) as float32 .tflite bytes."""
    if check_converter(converter) == "direct":
        from mnasfpn.tflite.writer import opgraph_tflite

        return opgraph_tflite(graph, seed=seed)
    tensorflow_version()  # one clear line when TensorFlow is missing
    from mnasfpn.model.export import convert_keras
    from mnasfpn.tfenv import load_tensorflow

    load_tensorflow()
    from mnasfpn.model.keras_builder import build_keras_model

    return convert_keras(build_keras_model(graph, seed=seed))
