"""Box coding, IoU matching and the SSD loss, batched, in `keras.ops`.

One implementation serves every Keras backend: the TensorFlow trainer traces it into its
`tf.function`, and a JAX training step (benchmarks/train_throughput.py --backend jax)
traces it into `jax.jit`. Importing this module loads TensorFlow only when Keras' backend
is TensorFlow (mnasfpn.tfenv.load_keras).

The coder is the Faster R-CNN / SSD one with the usual scale factors (10, 10, 5, 5) on
(ty, tx, th, tw): the layout TFLite's detection post-process op decodes.
"""

from __future__ import annotations

from typing import Any

from mnasfpn.tfenv import load_keras
from mnasfpn.train.anchors import SCALE_FACTORS

ops = load_keras().ops

MATCH_IOU = 0.5
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
_EPS = 1e-8


def corners_to_center(boxes: Any) -> Any:
    """(ymin, xmin, ymax, xmax) → (ycenter, xcenter, height, width), last axis."""
    ymin, xmin, ymax, xmax = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def center_to_corners(boxes: Any) -> Any:
    cy, cx, h, w = ops.unstack(boxes, 4, axis=-1)
    return ops.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def encode(boxes: Any, anchors: Any) -> Any:
    """Corner boxes [..., A, 4] relative to center-size anchors [A, 4] → regression targets."""
    b = corners_to_center(boxes)
    h = ops.maximum(b[..., 2], _EPS)
    w = ops.maximum(b[..., 3], _EPS)
    sy, sx, sh, sw = SCALE_FACTORS
    return ops.stack(
        [
            sy * (b[..., 0] - anchors[:, 0]) / anchors[:, 2],
            sx * (b[..., 1] - anchors[:, 1]) / anchors[:, 3],
            sh * ops.log(h / anchors[:, 2]),
            sw * ops.log(w / anchors[:, 3]),
        ],
        axis=-1,
    )


def decode(codes: Any, anchors: Any) -> Any:
    """Regression outputs [..., A, 4] + center-size anchors [A, 4] → corner boxes."""
    sy, sx, sh, sw = SCALE_FACTORS
    cy = codes[..., 0] / sy * anchors[:, 2] + anchors[:, 0]
    cx = codes[..., 1] / sx * anchors[:, 3] + anchors[:, 1]
    h = ops.exp(codes[..., 2] / sh) * anchors[:, 2]
    w = ops.exp(codes[..., 3] / sw) * anchors[:, 3]
    return center_to_corners(ops.stack([cy, cx, h, w], axis=-1))


def pairwise_iou(a: Any, b: Any) -> Any:
    """IoU of corner boxes a [..., N, 4] and b [..., M, 4] → [..., N, M]."""
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    ih = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    iw = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = ih * iw
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / ops.maximum(area_a + area_b - inter, _EPS)


def match(anchor_corners: Any, boxes: Any, classes: Any) -> tuple[Any, Any]:
    """Per anchor, the index of its ground-truth box or -1 (batched: [B, A]).

    An anchor matches the box it overlaps most when that IoU is at least 0.5; every real
    box also claims its own best anchor (so small or odd-shaped objects are never left
    without a positive). Padding boxes (class -1) match nothing. Returns (index, iou)."""
    valid = classes >= 0  # [B, M]
    iou = pairwise_iou(anchor_corners, boxes)  # [B, A, M]
    iou = ops.where(valid[:, None, :], iou, -1.0)
    best_box = ops.cast(ops.argmax(iou, axis=2), "int32")  # [B, A]
    best_iou = ops.max(iou, axis=2)
    matched = ops.where(best_iou >= MATCH_IOU, best_box, -1)
    # Force-match: each valid box's best anchor points at that box.
    best_anchor = ops.argmax(iou, axis=1)  # [B, M]
    num_anchors = anchor_corners.shape[0]
    num_boxes = ops.shape(boxes)[-2]  # dynamic under a tf.function relaxed to [None, None, 4]
    claims = ops.one_hot(best_anchor, num_anchors, dtype="int32")  # [B, M, A]
    claims = claims * ops.cast(valid, "int32")[:, :, None]
    claimed = ops.max(claims, axis=1) > 0  # [B, A]
    box_ids = ops.arange(num_boxes, dtype="int32")[None, :, None]
    claimer = ops.max(claims * (box_ids + 1), axis=1) - 1  # last claiming box
    matched = ops.where(claimed, claimer, matched)
    return matched, best_iou


def targets(
    anchors: Any, anchor_corners: Any, boxes: Any, classes: Any, num_classes: int
) -> tuple[Any, Any, Any]:
    """(box targets [B,A,4], class one-hot [B,A,K], positive mask [B,A]) for a batch."""
    matched, _ = match(anchor_corners, boxes, classes)
    positive = matched >= 0
    safe = ops.maximum(matched, 0)
    gt_boxes = ops.take_along_axis(boxes, safe[:, :, None], axis=1)  # [B, A, 4]
    gt_classes = ops.take_along_axis(classes, safe, axis=1)  # [B, A]
    box_targets = encode(gt_boxes, anchors)
    # Unmatched anchors: an all-zero row (background for every class).
    onehot = ops.one_hot(ops.maximum(gt_classes, 0), num_classes, dtype="float32")
    onehot = onehot * ops.cast(positive, "float32")[:, :, None]
    return box_targets, onehot, positive


def sigmoid_cross_entropy(labels: Any, logits: Any) -> Any:
    """Elementwise, in the overflow-free form max(x, 0) − x·z + log(1 + e^−|x|)."""
    return ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))


def focal_loss(logits: Any, onehot: Any) -> Any:
    """Sigmoid focal loss (α 0.25, γ 2), summed over anchors and classes, per image."""
    ce = sigmoid_cross_entropy(onehot, logits)
    p = ops.sigmoid(logits)
    p_t = onehot * p + (1 - onehot) * (1 - p)
    alpha_t = onehot * FOCAL_ALPHA + (1 - onehot) * (1 - FOCAL_ALPHA)
    return ops.sum(alpha_t * (1 - p_t) ** FOCAL_GAMMA * ce, axis=(1, 2))


def smooth_l1(codes: Any, box_targets: Any, positive: Any, delta: float = 1.0) -> Any:
    """Smooth-L1 (Huber) box loss over positive anchors, per image."""
    diff = ops.abs(codes - box_targets)
    per = ops.where(diff < delta, 0.5 * diff**2 / delta, diff - 0.5 * delta)
    return ops.sum(ops.sum(per, axis=-1) * ops.cast(positive, "float32"), axis=1)


def ssd_loss(
    codes: Any, logits: Any, box_targets: Any, onehot: Any, positive: Any
) -> tuple[Any, Any, Any]:
    """(class loss, box loss, matched anchors): both losses summed over the batch and
    divided by its number of matched anchors (at least 1)."""
    matched = ops.sum(ops.cast(positive, "float32"))
    norm = ops.maximum(matched, 1.0)
    cls = ops.sum(focal_loss(logits, onehot)) / norm
    box = ops.sum(smooth_l1(codes, box_targets, positive)) / norm
    return cls, box, matched
