"""The training step every TensorFlow training path takes (`mnasfpn train`, the proxy's
shared backbone and its children, the one-shot supernet): SSD targets, the objective of
`mnasfpn.train.objective`, gradients, global-norm clipping, a momentum-SGD update and an
optional weight EMA; plus the plain fixed-length loop the proxy trains with."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners
from mnasfpn.train.detector import preprocess
from mnasfpn.train.schedule import Schedule

# (inputs, training) → (box encodings, class logits)
Forward = Callable[[Any, bool], tuple[Any, Any]]


@dataclass(frozen=True)
class StepConfig:
    input_size: int
    num_classes: int
    weight_decay: float = 4e-5
    clip_norm: float = 10.0
    # A detector takes 0..255 pixels (scaled here); a head fed by cached features does not.
    preprocess: bool = True


class Objective:
    """SSD targets and the loss for one input size and class count (anchors made once)."""

    def __init__(self, config: StepConfig) -> None:
        tf = load_tensorflow()

        self.config = config
        self.anchors = tf.constant(anchor_centers_sizes(config.input_size))
        self.corners = tf.constant(anchor_corners(config.input_size))

    def targets(self, boxes: Any, classes: Any) -> tuple[Any, Any, Any]:
        # boxes imports Keras at its top: only where a model is built
        from mnasfpn.train.boxes import targets

        return targets(self.anchors, self.corners, boxes, classes, self.config.num_classes)

    def inputs(self, x: Any) -> Any:
        return preprocess(x) if self.config.preprocess else x

    def loss(self, codes: Any, logits: Any, target: tuple[Any, Any, Any],
             kernels: Sequence[Any]) -> dict[str, Any]:  # fmt: skip
        # objective imports Keras at its top: only where a model is built
        from mnasfpn.train.objective import training_loss

        return training_loss(codes, logits, *target, kernels, self.config.weight_decay)


def clip_and_apply(optimizer: Any, grads: list[Any], variables: list[Any], clip: float) -> Any:
    """Scale the gradients to global norm ≤ `clip`, apply them; returns the norm before."""
    tf = load_tensorflow()
    grads, norm = tf.clip_by_global_norm(grads, clip)
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    return norm


def momentum_apply(optimizer: Any, grads: list[Any], variables: list[Any], clip: float) -> Any:
    """`clip_and_apply` for an eager step that updates a different subset of a large set of
    variables each time (the supernet): the Keras SGD's own update (m ← μ·m − lr·g,
    w ← w + m, into its momentum slots, so its checkpoints stay the same), one fused
    TensorFlow op per variable instead of Keras' per-variable Python (~1 ms each)."""
    tf = load_tensorflow()
    grads, norm = tf.clip_by_global_norm(grads, clip)
    lr = tf.cast(optimizer.learning_rate, tf.float32)
    momentum = tf.constant(optimizer.momentum, tf.float32)
    for g, v in zip(grads, variables, strict=True):
        m = optimizer.momentums[optimizer._get_variable_index(v)]
        tf.raw_ops.ResourceApplyKerasMomentum(var=v.handle, accum=m.value.handle, lr=lr,
                                              grad=g, momentum=momentum)  # fmt: skip
    optimizer.iterations.assign_add(1)
    return norm


def step_body(
    forward: Forward,
    variables: list[Any],
    kernels: list[Any],
    optimizer: Any,
    objective: Objective,
    x: Any,
    boxes: Any,
    classes: Any,
    ema: Any = None,
) -> dict[str, Any]:
    """One update of `variables` on a batch; the loss parts, gradient norm and matched
    anchors per image. Traced by `make_step_fn`, or run eagerly where the model changes
    from step to step (the supernet)."""
    tf = load_tensorflow()
    target = objective.targets(boxes, classes)
    with tf.GradientTape() as tape:
        codes, logits = forward(objective.inputs(x), True)
        out = objective.loss(codes, logits, target, kernels)
    grads = tape.gradient(out["loss"], variables)
    norm = clip_and_apply(optimizer, grads, variables, objective.config.clip_norm)
    if ema is not None:
        ema.update(optimizer.iterations)
    batch = tf.cast(tf.shape(boxes)[0], tf.float32)
    matched = out.pop("matched")
    return {**out, "grad_norm": norm, "matched_per_image": matched / batch}


def make_step_fn(model: Any, optimizer: Any, config: StepConfig, ema: Any = None) -> Any:
    """`step_body` for a fixed Keras model, traced once: (x, boxes, classes) → loss parts."""
    tf = load_tensorflow()
    # objective imports Keras at its top: only where a model is built
    from mnasfpn.train.objective import decayed_indices

    objective = Objective(config)
    variables = model.trainable_variables
    kernels = [variables[i] for i in decayed_indices(variables)]

    def forward(x: Any, training: bool) -> tuple[Any, Any]:
        return model(x, training=training)

    @tf.function(reduce_retracing=True, autograph=False)
    def step_fn(x: Any, boxes: Any, classes: Any) -> dict[str, Any]:
        return step_body(forward, variables, kernels, optimizer, objective, x, boxes, classes,
                         ema)  # fmt: skip

    return step_fn


def sgd(lr: float, variables: list[Any], momentum: float = 0.9) -> Any:
    """Keras momentum SGD, built for `variables` (so a checkpoint can restore into it)."""
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    optimizer.build(variables)
    return optimizer


def run_steps(
    step_fn: Callable[[Any, Any, Any], dict[str, Any]],
    optimizer: Any,
    batches: Iterator[tuple[Any, Any, Any]],
    schedule: Schedule,
    steps: int,
    *,
    start: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Steps `start`..`steps`-1 on the schedule; a non-finite loss raises. Returns the mean
    loss of the last 10% of steps (those of them run here)."""
    tail: list[float] = []
    for step in range(start, steps):
        x, boxes, classes = next(batches)
        optimizer.learning_rate.assign(schedule(step))
        loss = float(step_fn(x, boxes, classes)["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}")
        if step >= steps - max(1, steps // 10):
            tail.append(loss)
        if on_step is not None:
            on_step(step + 1, loss)
    return float(np.mean(tail)) if tail else float("nan")
