"""A trained run → .tflite: the same two outputs as the untrained export (box encodings,
class logits, before NMS), or with TFLite's detection post-process op appended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.train.anchors import SCALE_FACTORS, anchor_centers_sizes
from mnasfpn.train.run import RunInfo

MAX_DETECTIONS = 100
NMS_IOU = 0.6
NMS_SCORE = 1e-8


class ExportError(MnasfpnError):
    """A trained detector that could not be converted."""


def trained_model(info: RunInfo, run_dir: Path) -> tuple[Any, int]:
    """The batch-1 Keras model (what the table timed) with the run's latest weights."""
    from mnasfpn.train.detector import build_detector, restore_weights

    model = build_detector(info.genotype, info.detector, batch_size=1)
    step = restore_weights(model, run_dir)
    return model, step


def export_run(
    info: RunInfo,
    run_dir: Path,
    out: Path,
    *,
    with_postprocess: bool = False,
    replace: bool = True,
) -> tuple[Path, int]:
    """Write the run's detector to `out`; returns (path, the checkpoint step exported)."""
    from mnasfpn.model.export import convert_keras

    model, step = trained_model(info, run_dir)
    data = _convert_with_postprocess(model, info) if with_postprocess else convert_keras(model)
    return write_atomic(out, data, replace=replace), step


def _postprocess_attrs(num_classes: int) -> str:
    """The TFLite_Detection_PostProcess custom op's attributes, as the converter's
    `experimental_implements` annotation spells them."""
    sy, sx, sh, sw = SCALE_FACTORS
    attrs = {
        "max_detections": ("i", MAX_DETECTIONS), "max_classes_per_detection": ("i", 1),
        "detections_per_class": ("i", MAX_DETECTIONS), "num_classes": ("i", num_classes),
        "use_regular_nms": ("b", "false"), "nms_score_threshold": ("f", NMS_SCORE),
        "nms_iou_threshold": ("f", NMS_IOU), "y_scale": ("f", sy), "x_scale": ("f", sx),
        "h_scale": ("f", sh), "w_scale": ("f", sw),
    }  # fmt: skip
    parts = ['name: "TFLite_Detection_PostProcess"']
    for key, (kind, value) in attrs.items():
        parts.append(f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}')
    return " ".join(parts)


def _convert_with_postprocess(model: Any, info: RunInfo) -> bytes:
    """Detector + sigmoid + TFLite_Detection_PostProcess (NMS in the model, for apps).

    The op has no TensorFlow kernel: a stand-in function carries its attributes through
    `experimental_implements`, and the converter replaces it with the custom op (the way
    the TF Object Detection API exports SSD models)."""
    from mnasfpn.tfenv import load_tensorflow

    tf = load_tensorflow()
    anchors = tf.constant(anchor_centers_sizes(info.detector.input_size))

    @tf.function(experimental_implements=_postprocess_attrs(info.detector.num_classes))
    def postprocess(box_encodings: Any, class_scores: Any, anchors: Any) -> Any:
        boxes = tf.constant(0.0, tf.float32, name="boxes")
        scores = tf.constant(0.0, tf.float32, name="scores")
        classes = tf.constant(0.0, tf.float32, name="classes")
        count = tf.constant(0.0, tf.float32, name="num_detections")
        return boxes, classes, scores, count

    @tf.function(input_signature=[tf.TensorSpec(model.inputs[0].shape, tf.float32)])
    def serve(image: Any) -> Any:
        codes, logits = model(image, training=False)
        return postprocess(codes, tf.sigmoid(logits), anchors)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        module = tf.Module()
        module.model = model
        module.serve = serve
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.allow_custom_ops = True
        try:
            return converter.convert()
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            raise ExportError(
                f"conversion with the post-process op failed: "
                f"{msg[0] if msg else type(exc).__name__}"
            ) from None
