"""Which tool turns the IR into .tflite bytes: the direct writer or the TensorFlow converter.

`direct` (the default) writes the flatbuffer from the IR with no TensorFlow (tflite/); its
output equals the converter's op for op (tests/test_tflite_writer.py). `tf` builds the
Keras model and runs the TensorFlow converter: the reference, and what a trained model
goes through. Importing this module loads neither Keras nor TensorFlow. A converter is
added by registering a `Converter` in `CONVERTERS`; ``--converter`` offers every one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.graph import OpGraph
from mnasfpn.model.export import convert_keras
from mnasfpn.registry import Registry
from mnasfpn.tfenv import load_tensorflow

DEFAULT_CONVERTER = "direct"
TRAIN_EXTRA_HINT = "pip install 'mnasfpn[train]'"


class ConverterError(MnasfpnError, ValueError):
    """An unknown converter, or the TensorFlow one without TensorFlow installed."""


@dataclass(frozen=True)
class Converter:
    name: str
    description: str  # for --help
    version: Callable[[], str]  # what makes the files (raises ConverterError if it cannot)
    detector: Callable[[OpGraph, int], bytes]  # (graph, weight seed) → .tflite bytes
    micromodel: Callable[[str], bytes]  # op key → the one-op .tflite of that key
    # Fast enough that worker processes would cost more than they save.
    in_process: bool = False


def _direct_version() -> str:
    # the writer loads LiteRT's flatbuffer schema: only when a model is written
    from mnasfpn.tflite.writer import WRITER_VERSION

    return WRITER_VERSION


def _direct_detector(graph: OpGraph, seed: int) -> bytes:
    # the writer loads LiteRT's flatbuffer schema: only when a model is written
    from mnasfpn.tflite.writer import opgraph_tflite

    return opgraph_tflite(graph, seed=seed)


def _direct_micromodel(key: str) -> bytes:
    # the writer loads LiteRT's flatbuffer schema: only when a model is written
    from mnasfpn.tflite.writer import micromodel_tflite

    return micromodel_tflite(key)


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


def _through_tf(build: Callable[[], Any]) -> bytes:
    """Convert the Keras model `build` makes (called once TensorFlow is loaded)."""
    tensorflow_version()  # one clear line when TensorFlow is missing

    load_tensorflow()
    return convert_keras(build())


def _tf_detector(graph: OpGraph, seed: int) -> bytes:
    def build() -> Any:
        # keras_builder imports Keras at its top: only where a model is built
        from mnasfpn.model.keras_builder import build_keras_model

        return build_keras_model(graph, seed=seed)

    return _through_tf(build)


def _tf_micromodel(key: str) -> bytes:
    def build() -> Any:
        # keras_builder imports Keras at its top: only where a model is built
        from mnasfpn.model.keras_builder import build_micromodel

        return build_micromodel(key)

    return _through_tf(build)


CONVERTERS: Registry[Converter] = Registry(
    "converter",
    {
        c.name: c
        for c in (
            Converter(
                "direct",
                "write the .tflite from the IR (no TensorFlow)",
                _direct_version,
                _direct_detector,
                _direct_micromodel,
                in_process=True,
            ),
            Converter(
                "tf",
                "build the Keras model and run the TensorFlow converter (the reference; "
                "needs the train extra)",
                tensorflow_version,
                _tf_detector,
                _tf_micromodel,
            ),
        )
    },
    error=ConverterError,
)


def converters_help() -> str:
    """The converters for a ``--converter`` help text."""
    return "; ".join(f"{c.name}: {c.description}" for c in CONVERTERS.values())


def converter_id(converter: str = DEFAULT_CONVERTER) -> str:
    """What makes files, for cache keys and table metadata: 'direct-<writer version>' or
    'tf-<TensorFlow version>'."""
    return f"{converter}-{CONVERTERS.get(converter).version()}"


def detector_tflite(graph: OpGraph, converter: str = DEFAULT_CONVERTER, *, seed: int = 0) -> bytes:
    """The detector of `graph` (live ops, outputs before NMS) as float32 .tflite bytes."""
    return CONVERTERS.get(converter).detector(graph, seed)
