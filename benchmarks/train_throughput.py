"""Training throughput (images/s) of whole detectors, through the real training step
(target assignment, focal + smooth-L1 loss, clipping, momentum SGD) on random batches.

    python benchmarks/train_throughput.py [--steps 10] [--warmup 3] [--only NAME]

Settings: `paper-mnasfpn` at 320×320 (α 1.0, batch 8, 90 classes: the deployment
detector) and a proxy-sized one (128×128, α 0.35, batch 16). The first steps trace the
graph and are not timed. On a machine shared with other jobs the figures drop with the
load (say so when reporting them): the table prints the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.run import HParams, RunInfo


@dataclass(frozen=True)
class Setting:
    name: str
    arch: str
    input_size: int
    alpha: float
    batch_size: int
    num_classes: int = 90


SETTINGS = (
    Setting("deployment", "paper-mnasfpn", 320, 1.0, 8),
    Setting("proxy", "paper-mnasfpn", 128, 0.35, 16),
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


def measure(s: Setting, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, seconds of the traced first step)."""
    import keras

    from mnasfpn.train.detector import build_detector
    from mnasfpn.train.trainer import _make_step_fn

    info = RunInfo(
        get_architecture(s.arch),
        DetectorConfig(input_size=s.input_size, num_classes=s.num_classes, alpha=s.alpha),
        HParams(steps=steps, batch_size=s.batch_size, lr=0.01, warmup_steps=1),
        "scratch",
        "random",
    )
    model = build_detector(info.genotype, info.detector, batch_size=None)
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = _make_step_fn(model, info, optimizer, None)
    rng = np.random.default_rng(0)
    batches = [random_batch(s, rng) for _ in range(2)]
    t = time.perf_counter()
    for i in range(warmup):
        b = batches[i % 2]
        float(step(b["image"], b["boxes"], b["classes"])["loss"])
        if i == 0:
            first = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(steps):
        b = batches[i % 2]
        out = step(b["image"], b["boxes"], b["classes"])
    float(out["loss"])  # wait for the last step
    return steps * s.batch_size / (time.perf_counter() - t), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per setting.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed first steps.")
    parser.add_argument("--only", choices=[s.name for s in SETTINGS], default=None)
    args = parser.parse_args()
    from mnasfpn.tfenv import load_tensorflow

    tf = load_tensorflow()
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"TensorFlow {tf.__version__}, devices {devices}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    header = f"{'setting':<11} {'arch':<14} {'input':>5} {'alpha':>5} {'batch':>5} " \
             f"{'images/s':>9} {'first step s':>12} {'load':>5}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for s in SETTINGS:
        if args.only and s.name != args.only:
            continue
        ips, first = measure(s, args.steps, args.warmup)
        print(f"{s.name:<11} {s.arch:<14} {s.input_size:>5} {s.alpha:>5} {s.batch_size:>5} "
              f"{ips:>9.1f} {first:>12.1f} {os.getloadavg()[0]:>5.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
