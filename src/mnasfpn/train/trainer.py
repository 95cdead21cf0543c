"""The SSD training loop: momentum SGD on the paper's schedule, global-norm clipping,
optional weight EMA, checkpoints every N steps and at the end, exact resume."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mnasfpn.atomic import write_atomic
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.backbone_weights import load_backbone_weights
from mnasfpn.train.checkpoint import (
    EmaWeights,
    has_checkpoint,
    intact_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from mnasfpn.train.detector import build_detector, set_class_prior
from mnasfpn.train.run import METRICS_FILE, RunInfo, checkpoint_dir
from mnasfpn.train.schedule import Schedule
from mnasfpn.train.step import StepConfig, sgd
from mnasfpn.train.step import make_step_fn as build_step_fn

# One pass over the training data for epoch e (seeded by e): a tf.data.Dataset of batches
# as mnasfpn.data.make_dataset yields them (image, boxes, classes, ...).
BatchesFn = Callable[[int], Any]

METRIC_COLUMNS = (
    "step", "epoch", "lr", "loss", "cls_loss", "box_loss", "l2_loss", "grad_norm",
    "matched_per_image", "images_per_s", "elapsed_s",
)  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    start_step: int
    final_step: int
    seconds: float
    images_per_s: float  # after the first (tracing) step
    last: dict[str, float]


def make_step_fn(model: Any, info: RunInfo, optimizer: Any, ema: EmaWeights | None) -> Any:
    """The run's training step (mnasfpn.train.step) for its detector and settings."""
    hp = info.hparams
    config = StepConfig(info.detector.input_size, info.detector.num_classes,
                        weight_decay=hp.weight_decay, clip_norm=hp.clip_norm)  # fmt: skip
    return build_step_fn(model, optimizer, config, ema)


class _MetricsLog:
    """metrics.csv, one row per logging interval; on resume, rows after the checkpoint
    (logged by the killed run past its last checkpoint) are dropped, so no step repeats."""

    def __init__(self, path: Path, keep_until: int) -> None:
        rows: list[list[str]] = []
        if path.exists() and keep_until > 0:
            with path.open(newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header == list(METRIC_COLUMNS):
                    rows = [r for r in reader if r and r[0].isdigit() and int(r[0]) <= keep_until]
        # The kept rows go in atomically (a run killed here keeps its old log whole); the
        # new rows are appended to that file as they come.
        kept = io.StringIO()
        table = csv.writer(kept)
        table.writerow(METRIC_COLUMNS)
        table.writerows(rows)
        write_atomic(path, kept.getvalue())
        self.file = path.open("a", newline="")
        self.writer = csv.writer(self.file)

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow([_fmt(row[c]) for c in METRIC_COLUMNS])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def train(
    run_dir: Path,
    info: RunInfo,
    batches: BatchesFn,
    *,
    resume: bool = False,
    backbone_weights: Path | None = None,
    log_every: int = 10,
    progress: bool = True,
    stop_after: int | None = None,
    images_per_epoch: int | None = None,
    echo: Callable[[str], None] = print,
    write_run: bool = False,
) -> TrainResult:
    """Train `info`'s detector in `run_dir` (its run.json already written, or, with
    `write_run`, written here once the model is built and its backbone weights loaded:
    a start that fails before leaves no run.json behind).

    `stop_after` ends the loop early at that step, as if killed right after a checkpoint
    (for tests of resume). `images_per_epoch` turns the step into epochs in metrics.csv
    for an endless (repeating) stream; without it the column counts passes. Returns the
    step range done and the throughput."""
    tf = load_tensorflow()
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    hp = info.hparams
    keras.utils.set_random_seed(hp.seed)
    model = build_detector(
        info.genotype, info.detector, batch_size=None, bn_momentum=hp.bn_momentum, seed=hp.seed
    )
    optimizer = sgd(hp.lr, model.trainable_variables, hp.momentum)
    ema = EmaWeights(model, hp.ema_decay) if hp.ema_decay else None
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    batch_var = tf.Variable(0, dtype=tf.int64, trainable=False)  # batches done this epoch
    objects: dict[str, Any] = {
        "model": model, "optimizer": optimizer, "epoch": epoch_var, "batch": batch_var,
    }  # fmt: skip
    if ema is not None:
        objects["ema"] = ema.module

    # The newest checkpoint that reads back whole (a damaged newest one: the older, said).
    latest = intact_checkpoint(run_dir, echo) if resume and has_checkpoint(run_dir) else None
    iterator = iter(batches(0))
    if latest is None:
        set_class_prior(model)
        if backbone_weights is not None:
            n = load_backbone_weights(
                model, backbone_weights, alpha=info.detector.alpha,
                input_size=info.detector.input_size,
            )  # fmt: skip
            echo(f"loaded {n} backbone layers from {backbone_weights}")
        if ema is not None:
            ema = EmaWeights(model, hp.ema_decay or 0.0)  # shadows start at the initial weights
            objects["ema"] = ema.module
        start = 0
        if write_run:
            info.save(run_dir)
    else:
        epoch0 = int(_peek_epoch(run_dir, latest))
        if epoch0 != 0:
            iterator = iter(batches(epoch0))
        restore_checkpoint(run_dir, latest, objects, iterator)
        start = int(optimizer.iterations.numpy())
        if not latest.data_state:  # replay the data position: same seed, skip what was used
            iterator = iter(batches(int(epoch_var.numpy())).skip(int(batch_var.numpy())))
        echo(f"resuming {run_dir} from step {start} (checkpoint {latest.prefix})")

    step_fn = make_step_fn(model, info, optimizer, ema)
    schedule = Schedule(hp.lr, hp.steps, hp.warmup_steps)
    log = _MetricsLog(run_dir / METRICS_FILE, keep_until=start)
    end = hp.steps if stop_after is None else min(hp.steps, stop_after)
    bar = tqdm(total=hp.steps, initial=start, unit="step", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    t0 = time.perf_counter()
    window_t, window_imgs, total_imgs = t0, 0, 0
    # Throughput leaves out the first step, which traces the graph (tens of seconds).
    traced_t, traced_imgs = t0, 0
    sums: dict[str, float] = {}
    n_in_window = 0
    last: dict[str, float] = {}
    step = start
    data_state = latest.data_state if latest else True
    try:
        while step < end:
            try:
                batch = next(iterator)
            except StopIteration:
                epoch_var.assign_add(1)
                batch_var.assign(0)
                iterator = iter(batches(int(epoch_var.numpy())))
                continue
            lr = schedule(step)
            optimizer.learning_rate.assign(lr)
            out = step_fn(batch["image"], batch["boxes"], batch["classes"])
            batch_var.assign_add(1)
            step += 1
            n = int(batch["image"].shape[0])
            window_imgs += n
            total_imgs += n
            if step == start + 1:
                traced_t, traced_imgs = time.perf_counter(), total_imgs
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_in_window += 1
            if step % log_every == 0 or step == end:
                now = time.perf_counter()
                last = {k: v / n_in_window for k, v in sums.items()}
                ips = window_imgs / max(now - window_t, 1e-9)
                epoch = (step * hp.batch_size / images_per_epoch if images_per_epoch
                         else int(epoch_var.numpy()))  # fmt: skip
                log.write({**last, "step": step, "epoch": epoch, "lr": lr,
                           "images_per_s": ips, "elapsed_s": now - t0})  # fmt: skip
                bar.set_postfix(loss=f"{last['loss']:.3f}", cls=f"{last['cls_loss']:.3f}",
                                box=f"{last['box_loss']:.3f}", img_s=f"{ips:.1f}")  # fmt: skip
                window_t, window_imgs, sums, n_in_window = now, 0, {}, 0
            bar.update(1)
            if step % hp.checkpoint_every == 0 or step == hp.steps:
                data_state = save_checkpoint(
                    run_dir, step, objects, iterator if data_state else None
                )
    finally:
        bar.close()
        log.close()
    end_t = time.perf_counter()
    timed = total_imgs - traced_imgs
    ips = timed / max(end_t - traced_t, 1e-9) if timed else total_imgs / max(end_t - t0, 1e-9)
    return TrainResult(start, step, end_t - t0, ips, last)


def _peek_epoch(run_dir: Path, latest: Any) -> int:
    """The epoch a checkpoint was in, read before building the iterator to restore into."""
    tf = load_tensorflow()

    reader = tf.train.load_checkpoint(str(checkpoint_dir(run_dir) / latest.prefix))
    return int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))
