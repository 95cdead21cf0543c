"""The objective every backend's training step minimizes, in `keras.ops`: the SSD loss
(focal + smooth-L1 over the matched anchors) plus L2 weight decay on the conv kernels.

The TensorFlow trainer calls it under its GradientTape with the model's variables; a JAX
step (benchmarks/train_throughput.py --backend jax) calls it inside `jax.value_and_grad`
with the same variables' values, so both minimize the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mnasfpn.train.boxes import ops, ssd_loss

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
