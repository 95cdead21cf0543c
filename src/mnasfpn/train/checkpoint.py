"""Checkpoints of a run: model, optimizer, EMA weights, step and data position.

Each checkpoint is written in full under its own prefix, then `latest.json` is replaced
atomically to point at it: a run killed at any moment (even mid-write) resumes from the
last complete checkpoint. The two newest are kept, so a newest one damaged later (a
truncated copy, a full disk, a deleted folder) still leaves the older one: every reader
(`intact_checkpoint`) checks a checkpoint's every tensor and its checksum before using it
and falls back to the older one, saying so in one line.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
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


def _step_of(folder: Path) -> int | None:
    tail = folder.name.split("-", 1)[1] if folder.name.startswith("ckpt-") else ""
    return int(tail) if tail.isdigit() else None


def _stored(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder holding an index file, newest first."""
    folder = checkpoint_dir(run_dir)
    found = []
    for p in folder.glob("ckpt-*") if folder.is_dir() else ():
        step = _step_of(p)
        if step is not None and (p / "ckpt.index").is_file():
            found.append((step, p))
    return sorted(found, reverse=True)


def candidates(run_dir: Path) -> tuple[Latest | None, list[Latest]]:
    """What `latest.json` names (None: no checkpoint was ever completed), and the
    checkpoints to try in order: that one, then the older complete ones (their data
    position is found when they are read). A latest.json that cannot be read leaves the
    checkpoint folders to try."""
    try:
        latest = read_latest(run_dir)
    except RunError:
        latest = Latest(sys.maxsize, "latest.json", False)  # stands for "unreadable"
    if latest is None:
        return None, []
    older = [Latest(step, f"{p.name}/ckpt", True) for step, p in _stored(run_dir)
             if step < latest.step]  # fmt: skip
    first = [latest] if latest.step != sys.maxsize else []
    return latest, first + older


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a checkpoint was ever completed in the run (latest.json is written after
    one): a run without one has trained nothing that starting it again would lose."""
    return candidates(run_dir)[0] is not None


def require_checkpoint(run_dir: Path) -> Latest:
    """The newest checkpoint that may be intact (TensorFlow-free: its files are there), or
    a one-line error for a run that has none yet or whose checkpoints are all gone. Which
    one is actually read is `intact_checkpoint`'s choice."""
    latest, tries = candidates(run_dir)
    if latest is None:
        raise RunError(
            f"{run_dir}: no checkpoint yet; `mnasfpn train --out {run_dir} --resume ...` "
            "trains it with its own settings, or start it again with new ones without --resume"
        )
    folder = checkpoint_dir(run_dir)
    present = [t for t in tries if (folder / (t.prefix + ".index")).is_file()]
    if not present:
        what = ("is unreadable" if latest.step == sys.maxsize
                else f"names {latest.prefix}, which is not there")  # fmt: skip
        raise RunError(
            f"{run_dir}: checkpoints/latest.json {what}, and no older checkpoint is left; "
            "the run cannot be read (train it again in a new --out)"
        )
    return present[0]


def _check_intact(path: str) -> bool:
    """Read every tensor of the checkpoint at `path` (checksums included); returns whether
    it holds the data iterator's state, or raises what was wrong."""
    tf = load_tensorflow()
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    names = sorted(dtypes)
    # One RestoreV2 reads each tensor's bytes and checks its CRC: a truncated or
    # overwritten data file fails here, not halfway through restoring a model.
    tf.raw_ops.RestoreV2(prefix=path, tensor_names=names, shape_and_slices=[""] * len(names),
                         dtypes=[dtypes[n] for n in names])  # fmt: skip
    return any(n.startswith("data/") for n in names)


def intact_checkpoint(
    run_dir: Path, echo: Callable[[str], None] | None = None
) -> Latest:
    """The newest checkpoint whose every tensor reads back: latest.json's, or else the
    older one kept beside it (`echo` says so in one line). A one-line error if none is."""
    tf = load_tensorflow()
    require_checkpoint(run_dir)
    latest, tries = candidates(run_dir)
    assert latest is not None
    say = echo or (lambda s: print(s, file=sys.stderr))
    folder = checkpoint_dir(run_dir)
    unreadable = latest.step == sys.maxsize
    damaged = ["checkpoints/latest.json: unreadable"] if unreadable else []
    for cand in tries:
        path = str(folder / cand.prefix)
        try:
            has_data = _check_intact(path)
        except (tf.errors.OpError, IndexError, ValueError, OSError) as exc:
            damaged.append(f"checkpoint {cand.prefix}: {_reason(exc)}")
            continue
        if damaged:
            which = ("the newest intact one" if unreadable and len(damaged) == 1
                     else "the older one")  # fmt: skip
            say(f"note: {run_dir}: {damaged[0]}; using {which}, {cand.prefix} (step "
                f"{cand.step}), instead")  # fmt: skip
            return replace(cand, data_state=has_data)
        return cand
    raise RunError(f"{run_dir}: no intact checkpoint ({'; '.join(damaged)}); train the run "
                   "again in a new --out")  # fmt: skip


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), type(exc).__name__)
    if "not found" in line.lower() or "NotFound" in type(exc).__name__:
        return "missing"
    if "less bytes" in line or "OutOfRange" in type(exc).__name__:
        return "truncated"
    if "checksum" in line.lower() or "DataLoss" in type(exc).__name__:
        return "damaged (checksum mismatch)"
    return f"unreadable ({line[:120]})"


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
    for old in kept:
        # Later than the checkpoint just written: left by a run that was resumed from an
        # older one (its newest was damaged); latest.json no longer names it, and the
        # two-newest rule below must not keep it in place of a real one.
        later = _step_of(old)
        if later is not None and later > step:
            shutil.rmtree(old, ignore_errors=True)
    kept = [p for p in kept if p.exists()]
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


def restore_inference_weights(
    model: Any, run_dir: Path, *, use_ema: bool = True, echo: Callable[[str], None] | None = None
) -> int:
    """The newest intact checkpoint's weights into `model` (its EMA copy if kept and
    wanted); `echo` says when that is the older one."""
    tf = load_tensorflow()
    latest = intact_checkpoint(run_dir, echo)
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
