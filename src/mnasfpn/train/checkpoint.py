"""Checkpoints of a run: model, optimizer, EMA weights, step and data position.

Each checkpoint is written in full under its own prefix, then `latest.json` is replaced
atomically to point at it: a run killed at any moment (even mid-write) resumes from the
last complete checkpoint. The two newest are kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.run import RunError, checkpoint_dir

LATEST = "latest.json"
KEEP = 2


@dataclass(frozen=True)
class Latest:
    step: int
    prefix: str  # relative to the checkpoint folder
    data_state: bool  # whether the data iterator's own state is in the checkpoint


def read_latest(run_dir: Path) -> Latest | None:
    path = checkpoint_dir(run_dir) / LATEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        return Latest(int(doc["step"]), str(doc["prefix"]), bool(doc["data_state"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: unreadable checkpoint index ({exc})") from None


def require_checkpoint(run_dir: Path) -> Latest:
    """The latest checkpoint, or a one-line error for a run that has none yet."""
    latest = read_latest(run_dir)
    if latest is None:
        raise RunError(f"{run_dir}: no checkpoint yet (train the run first)")
    return latest


class EmaWeights:
    """Exponential moving average of every model weight (BN statistics included).

    The decay ramps up as min(decay, (1 + t) / (10 + t)), so the average is not dominated
    by the random initial weights in short runs."""

    def __init__(self, model: Any, decay: float) -> None:
        tf = load_tensorflow()
        self.decay = decay
        self.sources = list(model.weights)
        self.module = tf.Module()
        self.module.shadows = [
            tf.Variable(v.value if hasattr(v, "value") else v, trainable=False)
            for v in self.sources
        ]

    def update(self, step: Any) -> None:
        tf = load_tensorflow()
        t = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for shadow, v in zip(self.module.shadows, self.sources, strict=True):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(v, shadow.dtype))


def save_checkpoint(
    run_dir: Path, step: int, objects: dict[str, Any], iterator: Any | None
) -> bool:
    """Write a checkpoint for `step`; returns whether the iterator's state went in (a
    dataset with Python functions in it cannot be saved: then the position is replayed)."""
    tf = load_tensorflow()
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step}"
    stale = folder / name
    if stale.exists():  # left by a run killed while writing this very step
        shutil.rmtree(stale)
    data_state = iterator is not None
    try:
        extra = {"data": iterator} if iterator is not None else {}
        tf.train.Checkpoint(**objects, **extra).write(str(stale / "ckpt"))
    except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError, ValueError):
        if stale.exists():
            shutil.rmtree(stale)
        data_state = False
        tf.train.Checkpoint(**objects).write(str(stale / "ckpt"))
    doc = {"step": step, "prefix": f"{name}/ckpt", "data_state": data_state}
    write_atomic(folder / LATEST, json.dumps(doc) + "\n")
    kept = sorted(
        (p for p in folder.glob("ckpt-*") if p.is_dir()),
        key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
    )
    for old in kept[:-KEEP]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return data_state


def restore_checkpoint(
    run_dir: Path, latest: Latest, objects: dict[str, Any], iterator: Any | None
) -> None:
    tf = load_tensorflow()
    extra = {"data": iterator} if latest.data_state and iterator is not None else {}
    path = checkpoint_dir(run_dir) / latest.prefix
    status = tf.train.Checkpoint(**objects, **extra).read(str(path))
    status.assert_existing_objects_matched()


def restore_inference_weights(model: Any, run_dir: Path, *, use_ema: bool = True) -> int:
    """The latest checkpoint's weights into `model` (its EMA copy if kept and wanted)."""
    tf = load_tensorflow()
    latest = require_checkpoint(run_dir)
    path = str(checkpoint_dir(run_dir) / latest.prefix)
    names = {name for name, _ in tf.train.list_variables(path)}
    has_ema = any(n.startswith("ema/") for n in names)
    objects: dict[str, Any] = {"model": model}
    ema = None
    if use_ema and has_ema:
        ema = EmaWeights(model, 0.0)
        objects["ema"] = ema.module
    tf.train.Checkpoint(**objects).read(path).expect_partial()
    if ema is not None:
        for shadow, v in zip(ema.module.shadows, ema.sources, strict=True):
            v.assign(shadow)
    return latest.step
