"""The trainable detector: the IR builder's Keras model (what the table timed), with a free
batch dimension, plus what training adds around it (preprocessing, BN momentum, the class
prior) and restoring a run's weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.tfenv import load_keras
from mnasfpn.train.checkpoint import restore_inference_weights

CLASS_PRIOR = 0.01  # initial foreground probability of every anchor (RetinaNet's prior)
CLASS_HEAD = "class_conv1x1"  # the weight-shared class head's last conv (its bias sets the prior)


def preprocess(images: Any) -> Any:
    """Pixels 0..255 → [-1, 1], the range the detector takes (docs/design.md §4)."""
    return images * (2.0 / 255.0) - 1.0


def build_detector(
    genotype: Genotype,
    detector: DetectorConfig,
    *,
    batch_size: int | None = None,
    bn_momentum: float | None = None,
    seed: int = 0,
) -> Any:
    """Keras model of the IR: image in [-1, 1] → [box encodings, class logits]."""
    load_keras()  # TensorFlow only on its backend: a JAX training step builds this too
    # keras_builder imports Keras at its top: only where a model is built
    from mnasfpn.model.keras_builder import build_keras_model

    model = build_keras_model(build_opgraph(genotype, detector), seed=seed, batch_size=batch_size)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


def set_bn_momentum(model: Any, momentum: float) -> None:
    """The moving-average momentum of every batch-norm layer in `model`."""
    keras = load_keras()
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def set_class_prior(model: Any, prior: float = CLASS_PRIOR) -> None:
    """Start every anchor at foreground probability `prior`: without it the focal loss of
    tens of thousands of easy negatives swamps the first steps."""
    head = model.get_layer(CLASS_HEAD)
    bias = head.conv.bias
    bias.assign(bias.numpy() * 0 - math.log((1 - prior) / prior))


def restore_weights(
    model: Any, run_dir: Path, *, use_ema: bool = True, echo: Callable[[str], None] | None = None
) -> int:
    """Load a run's newest intact checkpoint into `model` (EMA weights when the run kept
    them; `echo` says when a damaged newest one was passed over); returns its step."""
    return restore_inference_weights(model, run_dir, use_ema=use_ema, echo=echo)
