"""Detections of a trained detector (decode, sigmoid, NMS, back to original pixels) and
their COCO metrics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.anchors import anchor_centers_sizes
from mnasfpn.train.detector import preprocess

NMS_IOU = 0.6
SCORE_THRESHOLD = 0.01
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class NmsConfig:
    iou: float = NMS_IOU
    score_threshold: float = SCORE_THRESHOLD
    max_detections: int = MAX_DETECTIONS


def make_predict_fn(
    model: Any, input_size: int, nms: NmsConfig | None = None, *, preprocess_images: bool = True
) -> Any:
    """images 0..255 [B,S,S,3] → (boxes [B,N,4] normalized corners, scores, classes, counts).

    `model` is any callable (inputs, training=False) → (codes, logits); with
    `preprocess_images=False` its inputs go in as given (a head fed by cached features)."""
    tf = load_tensorflow()
    nms = nms or NmsConfig()
    anchors = tf.constant(anchor_centers_sizes(input_size))

    @tf.function(reduce_retracing=True, autograph=False)
    def predict(x: Any) -> tuple[Any, Any, Any, Any]:
        codes, logits = model(preprocess(x) if preprocess_images else x, training=False)
        return nms_detections(codes, logits, anchors, nms)

    return predict


def nms_detections(codes: Any, logits: Any, anchors: Any, nms: NmsConfig) -> tuple[Any, ...]:
    """Decoded, sigmoid-scored, per-class NMS: (boxes [B,N,4], scores, classes, counts)."""
    tf = load_tensorflow()
    # boxes imports Keras at its top: only where a model is built
    from mnasfpn.train.boxes import decode

    boxes = decode(codes, anchors)
    scores = tf.sigmoid(logits)
    out = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        scores,
        max_output_size_per_class=nms.max_detections,
        max_total_size=nms.max_detections,
        iou_threshold=nms.iou,
        score_threshold=nms.score_threshold,
        clip_boxes=True,
    )
    return out.nmsed_boxes, out.nmsed_scores, out.nmsed_classes, out.valid_detections


def detections_to_coco(
    boxes: Any, scores: Any, classes: Any, counts: Any, image_ids: Any, scales: Any,
    input_size: int, category_ids: list[int],
) -> list[dict[str, Any]]:  # fmt: skip
    """One batch of NMS output → COCO results in original image pixels.

    Boxes are normalized to the padded input square; `scale` is input pixels per original
    pixel (the image was resized, then padded at the bottom/right)."""
    out = []
    for b in range(len(counts)):
        factor = input_size / float(scales[b])
        for i in range(int(counts[b])):
            ymin, xmin, ymax, xmax = (float(v) * factor for v in boxes[b, i])
            out.append({
                "image_id": int(image_ids[b]),
                "category_id": int(category_ids[int(classes[b, i])]),
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "score": float(scores[b, i]),
            })  # fmt: skip
    return out


def coco_results(
    predict: Any, batches: Iterable[tuple[Any, Any, Any]], input_size: int,
    category_ids: list[int],
) -> tuple[list[dict[str, Any]], list[int]]:  # fmt: skip
    """COCO results of `predict` (a `make_predict_fn`) on batches of (inputs, image ids,
    scales), and the ids of the images seen."""
    results: list[dict[str, Any]] = []
    seen: list[int] = []
    for x, ids, scales in batches:
        boxes, scores, classes, counts = (np.asarray(t) for t in predict(x))
        ids = np.asarray(ids)
        results += detections_to_coco(boxes, scores, classes, counts, ids, np.asarray(scales),
                                      input_size, category_ids)  # fmt: skip
        seen += [int(i) for i in ids]
    return results, seen


def predict_dataset(
    model: Any, batches: Iterable[dict[str, Any]], input_size: int, category_ids: list[int],
    nms: NmsConfig | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:  # fmt: skip
    """COCO results for every image of `batches`, and the ids of the images seen."""
    predict = make_predict_fn(model, input_size, nms)
    triples = ((b["image"], b["image_id"], b["scale"]) for b in batches)
    return coco_results(predict, triples, input_size, category_ids)
