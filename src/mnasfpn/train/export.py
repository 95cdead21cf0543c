"""A trained run → .tflite: the same two outputs as the untrained export (box encodings,
class logits, before NMS), or with TFLite's detection post-process op appended."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.model.export import convert_keras
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.anchors import SCALE_FACTORS, anchor_centers_sizes
from mnasfpn.train.detector import build_detector, restore_weights
from mnasfpn.train.run import RunInfo

MAX_DETECTIONS = 100
NMS_IOU = 0.6
NMS_SCORE = 1e-8


class ExportError(MnasfpnError):
    """A trained detector that could not be converted."""


def trained_model(
    info: RunInfo, run_dir: Path, echo: Callable[[str], None] | None = None
) -> tuple[Any, int]:
    """The batch-1 Keras model (what the table timed) with the run's newest intact
    weights (`echo` says when that is the older checkpoint)."""
    model = build_detector(info.genotype, info.detector, batch_size=1)
    step = restore_weights(model, run_dir, echo=echo)
    return model, step


def export_run(
    info: RunInfo,
    run_dir: Path,
    out: Path,
    *,
    with_postprocess: bool = False,
    replace: bool = True,
    echo: Callable[[str], None] | None = None,
) -> tuple[Path, int]:
    """Write the run's detector to `out`; returns (path, the checkpoint step exported)."""
    model, step = trained_model(info, run_dir, echo)
    data = _convert_with_postprocess(model, info) if with_postprocess else convert_keras(model)
    return write_atomic(out, data, replace=replace), step


def _postprocess_attrs(num_classes: int) -> str:
    """The TFLite_Detection_PostProcess custom op's attributes, as the converter's
    `experimental_implements` annotation spells them (floats in %f, as it parses them)."""
    sy, sx, sh, sw = SCALE_FACTORS
    attrs = [
        ("max_detections", "i", str(MAX_DETECTIONS)),
        ("max_classes_per_detection", "i", "1"),
        ("detections_per_class", "i", str(MAX_DETECTIONS)),
        ("num_classes", "i", str(num_classes)),
        ("use_regular_nms", "b", "false"),
        ("nms_score_threshold", "f", f"{NMS_SCORE:f}"),
        ("nms_iou_threshold", "f", f"{NMS_IOU:f}"),
        ("y_scale", "f", f"{sy:f}"),
        ("x_scale", "f", f"{sx:f}"),
        ("h_scale", "f", f"{sh:f}"),
        ("w_scale", "f", f"{sw:f}"),
    ]
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ {kind}: {v} }} }}' for k, kind, v in attrs]
    return " ".join(parts)


def _convert_with_postprocess(model: Any, info: RunInfo) -> bytes:
    """Detector + sigmoid + TFLite_Detection_PostProcess (NMS inside the model, for apps):
    outputs boxes [1, N, 4] (normalized ymin, xmin, ymax, xmax), classes [1, N] (0-based),
    scores [1, N], count [1].

    The op has no TensorFlow kernel: a stand-in function carries its attributes through
    `experimental_implements` and the converter puts the op in its place (as the TF Object
    Detection API exports SSD models). The detector is frozen first, so its weights become
    constants the converter folds (a SavedModel's variables would stay VAR_HANDLE ops)."""
    # TensorFlow: only where a model is converted
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    tf = load_tensorflow()
    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32)
    detector = convert_variables_to_constants_v2(
        tf.function(lambda x: tuple(model(x, training=False))).get_concrete_function(spec)
    )
    anchors = anchor_centers_sizes(info.detector.input_size)

    @tf.function(experimental_implements=_postprocess_attrs(info.detector.num_classes))
    def postprocess(box_encodings: Any, class_scores: Any, anchors: Any) -> Any:
        return (
            tf.constant(0.0, name="boxes"),
            tf.constant(0.0, name="classes"),
            tf.constant(0.0, name="scores"),
            tf.constant(0.0, name="num_detections"),
        )

    class Serving(tf.Module):
        @tf.function(input_signature=[spec])
        def serve(self, image: Any) -> Any:
            codes, logits = detector(image)
            return postprocess(codes, tf.sigmoid(logits), tf.constant(anchors))

    module = Serving()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.serve.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.allow_custom_ops = True
        try:
            return converter.convert()
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            raise ExportError(
                "conversion with the post-process op failed: "
                f"{msg[0] if msg else type(exc).__name__}"
            ) from None
