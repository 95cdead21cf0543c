"""Training throughput (images/s) of whole detectors, through the real training step
(target assignment, focal + smooth-L1 loss, L2, global-norm clipping, momentum SGD) on
random batches.

    python benchmarks/train_throughput.py [--backend tensorflow|jax] [--steps 10]
        [--warmup 3] [--gpu-batches] [--only NAME]

Settings: `paper-mnasfpn` at 320×320 (α 1.0, batch 8, 90 classes: the deployment
detector) and a proxy-sized one (128×128, α 0.35, batch 16); `--gpu-batches` adds the same
two at batch sizes that fill an accelerator (64 and 128). The first steps trace (and, on
JAX, compile) the step and are not timed.

`--backend tensorflow` times the trainer's own step (mnasfpn.train.trainer). `--backend
jax` times the same step on Keras' JAX backend, for machines with a GPU but no TensorFlow:
the same Keras detector, the same target assignment and loss (mnasfpn.train.boxes and
.objective, one implementation in keras.ops), model.stateless_call under
jax.value_and_grad, the same clipping and the Keras SGD's stateless_apply, all in one
jax.jit. Its batches sit in the device's memory: the figure leaves out the input pipeline.
It needs `pip install 'mnasfpn[jax]'` (and jax's CUDA plugin for a GPU); TensorFlow is
not imported.

On a machine shared with other jobs the figures drop with the load (say so when reporting
them): the table prints the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.run import HParams, RunInfo

BACKENDS = ("tensorflow", "jax")


@dataclass(frozen=True)
class Setting:
    name: str
    arch: str
    input_size: int
    alpha: float
    batch_size: int
    num_classes: int = 90
    gpu_sized: bool = False  # a batch that fills an accelerator; run with --gpu-batches


SETTINGS = (
    Setting("deployment", "paper-mnasfpn", 320, 1.0, 8),
    Setting("proxy", "paper-mnasfpn", 128, 0.35, 16),
    Setting("deployment-b64", "paper-mnasfpn", 320, 1.0, 64, gpu_sized=True),
    Setting("proxy-b128", "paper-mnasfpn", 128, 0.35, 128, gpu_sized=True),
)


def random_batch(s: Setting, rng: np.random.Generator, boxes: int = 8) -> dict[str, np.ndarray]:
    """Images and a few random boxes per image (the matching cost grows with boxes)."""
    yx = rng.uniform(0, 0.7, (s.batch_size, boxes, 2))
    hw = rng.uniform(0.05, 0.3, (s.batch_size, boxes, 2))
    return {
        "image": rng.uniform(0, 255, (s.batch_size, s.input_size, s.input_size, 3)).astype(
            np.float32
        ),
        "boxes": np.concatenate([yx, yx + hw], -1).astype(np.float32),
        "classes": rng.integers(0, s.num_classes, (s.batch_size, boxes)).astype(np.int32),
    }


def run_info(s: Setting, steps: int) -> RunInfo:
    return RunInfo(
        get_architecture(s.arch),
        DetectorConfig(input_size=s.input_size, num_classes=s.num_classes, alpha=s.alpha),
        HParams(steps=steps, batch_size=s.batch_size, lr=0.01, warmup_steps=1),
        "scratch",
        "random",
    )


def build(info: RunInfo) -> tuple[Any, Any]:
    """The detector and its momentum SGD, as the trainer makes them."""
    from mnasfpn.train.detector import build_detector
    from mnasfpn.train.step import sgd

    hp = info.hparams
    model = build_detector(info.genotype, info.detector, batch_size=None, seed=hp.seed)
    return model, sgd(hp.lr, model.trainable_variables, hp.momentum)


# One training step on a batch {"image", "boxes", "classes"}: its loss parts (backend
# tensors; float() of one waits for the step to finish).
Step = Callable[[dict[str, Any]], dict[str, Any]]


def tensorflow_step(model: Any, optimizer: Any, info: RunInfo) -> Step:
    """The trainer's own step (batches stay numpy, as the trainer's tf.data feeds them)."""
    from mnasfpn.train.trainer import make_step_fn

    step_fn = make_step_fn(model, info, optimizer, None)
    return lambda b: step_fn(b["image"], b["boxes"], b["classes"])


def jax_step(model: Any, optimizer: Any, info: RunInfo) -> Step:
    """The trainer's step for Keras' JAX backend, as one jitted function that carries the
    model's and optimizer's variables as its state (the Keras objects are left as built)."""
    import jax
    import jax.numpy as jnp

    from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners
    from mnasfpn.train.boxes import targets
    from mnasfpn.train.detector import preprocess
    from mnasfpn.train.objective import decayed_indices, training_loss

    hp = info.hparams
    size, num_classes = info.detector.input_size, info.detector.num_classes
    decayed = decayed_indices(model.trainable_variables)
    anchors = jnp.asarray(anchor_centers_sizes(size))
    corners = jnp.asarray(anchor_corners(size))

    def loss_fn(trainable: list[Any], non_trainable: list[Any], images: Any, box_t: Any,
                onehot: Any, positive: Any) -> tuple[Any, Any]:  # fmt: skip
        (codes, logits), non_trainable = model.stateless_call(
            trainable, non_trainable, preprocess(images), training=True
        )
        out = training_loss(codes, logits, box_t, onehot, positive,
                            [trainable[i] for i in decayed], hp.weight_decay)  # fmt: skip
        return out["loss"], (out, non_trainable)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: tuple[Any, Any, Any], images: Any, boxes: Any,
                   classes: Any) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:  # fmt: skip
        trainable, non_trainable, opt_vars = state
        box_t, onehot, positive = targets(anchors, corners, boxes, classes, num_classes)
        (_, (out, non_trainable)), grads = grad_fn(
            trainable, non_trainable, images, box_t, onehot, positive
        )
        # tf.clip_by_global_norm's rule: scale all gradients by clip / max(norm, clip).
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads))
        grads = [g * (hp.clip_norm / jnp.maximum(norm, hp.clip_norm)) for g in grads]
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        matched = out.pop("matched")
        out.update(grad_norm=norm, matched_per_image=matched / images.shape[0])
        return (trainable, non_trainable, opt_vars), out

    jitted = jax.jit(train_step, donate_argnums=0)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )

    def step(b: dict[str, Any]) -> dict[str, Any]:
        nonlocal state
        state, out = jitted(state, b["image"], b["boxes"], b["classes"])
        return out

    return step


def measure(s: Setting, backend: str, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s over `steps` timed steps, seconds of the first (tracing) step)."""
    info = run_info(s, steps)
    model, optimizer = build(info)
    if backend == "jax":
        import jax

        # Batches placed on the device once: the figure is the step's, not the input's.
        step, place = jax_step(model, optimizer, info), jax.device_put
    else:
        step, place = tensorflow_step(model, optimizer, info), lambda b: b
    rng = np.random.default_rng(0)
    batches = [place(random_batch(s, rng)) for _ in range(2)]
    first = 0.0
    t = time.perf_counter()
    for i in range(warmup):
        float(step(batches[i % 2])["loss"])
        if i == 0:
            first = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(steps):
        out = step(batches[i % 2])
    float(out["loss"])  # wait for the last step
    return steps * s.batch_size / (time.perf_counter() - t), first


def describe_backend(backend: str) -> str:
    import keras

    if backend == "jax":
        import jax

        devices = ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices())
        return f"Keras {keras.__version__} on JAX {jax.__version__}, devices [{devices}]"
    from mnasfpn.tfenv import load_tensorflow

    tf = load_tensorflow()
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    return f"Keras {keras.__version__} on TensorFlow {tf.__version__}, devices {devices}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="tensorflow",
                        help="Keras backend that runs the step.")  # fmt: skip
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per setting.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed first steps.")
    parser.add_argument("--gpu-batches", action="store_true",
                        help="Also batches that fill a GPU (64 at 320, 128 at 128).")  # fmt: skip
    parser.add_argument("--only", choices=[s.name for s in SETTINGS], default=None)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    # Keras reads its backend once, at its first import (nothing above imported it).
    os.environ["KERAS_BACKEND"] = args.backend
    print(f"{describe_backend(args.backend)}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    header = f"{'setting':<14} {'arch':<14} {'input':>5} {'alpha':>5} {'batch':>5} " \
             f"{'images/s':>9} {'first step s':>12} {'load':>5}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for s in SETTINGS:
        if (s.name != args.only) if args.only else (s.gpu_sized and not args.gpu_batches):
            continue
        ips, first = measure(s, args.backend, args.steps, args.warmup)
        print(f"{s.name:<14} {s.arch:<14} {s.input_size:>5} {s.alpha:>5} {s.batch_size:>5} "
              f"{ips:>9.1f} {first:>12.1f} {os.getloadavg()[0]:>5.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
