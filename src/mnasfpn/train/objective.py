"""The objective every backend's training step minimizes, in `keras.ops`: the SSD loss
(focal + smooth-L1 over the matched anchors) plus L2 weight decay on the conv kernels.

The TensorFlow trainer calls it under its GradientTape with the model's variables; a JAX
step (benchmarks/train_throughput.py --backend jax) calls it inside `jax.value_and_grad`
with the same variables' values, so both minimize the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mnasfpn.train.boxes import ops, sigmoid_cross_entropy, smooth_l1, ssd_loss

# Conv weights take weight decay; biases, BN scales and offsets do not.
DECAYED_WEIGHTS = ("kernel", "depthwise_kernel")


def decayed_indices(variables: Sequence[Any]) -> list[int]:
    """Positions in `variables` (a model's trainable variables) that take weight decay."""
    return [i for i, v in enumerate(variables) if v.name in DECAYED_WEIGHTS]


def l2_penalty(kernels: Sequence[Any], weight_decay: float) -> Any:
    """weight_decay × Σ ‖k‖² / 2 (tf.nn.l2_loss's half-square, as the paper's recipe)."""
    if not kernels:
        return ops.convert_to_tensor(0.0)
    return weight_decay * ops.sum(ops.stack([ops.sum(ops.square(k)) for k in kernels])) / 2


def training_loss(
    codes: Any,
    logits: Any,
    box_targets: Any,
    onehot: Any,
    positive: Any,
    kernels: Sequence[Any],
    weight_decay: float,
) -> dict[str, Any]:
    """The loss to differentiate ("loss") and its parts; "matched" counts positive anchors."""
    cls, box, matched = ssd_loss(codes, logits, box_targets, onehot, positive)
    l2 = l2_penalty(kernels, weight_decay)
    return {"loss": cls + box + l2, "cls_loss": cls, "box_loss": box, "l2_loss": l2,
            "matched": matched}  # fmt: skip


def distillation_loss(
    codes: Any, logits: Any, teacher_codes: Any, teacher_probs: Any, positive: Any
) -> Any:
    """In-place distillation (a supernet child learning from the widest child of its
    step): the class outputs by the quality focal loss (Li et al., GFL 2020) against the
    teacher's probabilities, |t − p|² · BCE(t, logits), which vanishes as the student meets
    the teacher on the many easy anchors; the box codes by smooth-L1 to the teacher's on
    the matched anchors; both over the number of matched anchors, as the SSD loss."""
    norm = ops.maximum(ops.sum(ops.cast(positive, "float32")), 1.0)
    p = ops.sigmoid(logits)
    weight = ops.square(teacher_probs - p)
    cls = ops.sum(weight * sigmoid_cross_entropy(teacher_probs, logits)) / norm
    box = ops.sum(smooth_l1(codes, teacher_codes, positive)) / norm
    return cls + box
