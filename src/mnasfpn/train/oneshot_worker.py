"""The one-shot evaluator's TensorFlow side: training the supernet once (under a lock, with
resumable checkpoints) on the proxy's cached backbone features, and scoring children from
it (BN re-estimation, then the proxy's NMS and COCO evaluation). See
`mnasfpn.train.oneshot` for what is done and why."""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mnasfpn.atomic import write_atomic
from mnasfpn.data.coco import CocoSet, DataError, load_coco
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.spaces import get_space, pruned
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.anchors import anchor_centers_sizes
from mnasfpn.train.checkpoint import (
    has_checkpoint,
    intact_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from mnasfpn.train.coco_metrics import coco_metrics
from mnasfpn.train.evaluate import NmsConfig, coco_results, nms_detections
from mnasfpn.train.oneshot_config import OneShotBudget, OneShotError, SupernetKey
from mnasfpn.train.proxy_worker import EVAL_BATCH, Features, ensure_backbone_cache, locked
from mnasfpn.train.run import RunError
from mnasfpn.train.schedule import Schedule
from mnasfpn.train.step import Objective, StepConfig, momentum_apply, sgd

WEIGHTS_FILE = "weights.npz"
META_FILE = "supernet.json"
DONE_FILE = "done.json"


# ---- data -------------------------------------------------------------------------------


@dataclass
class CachedData:
    """The proxy's cached features of one data set, as the supernet reads them."""

    train: CocoSet
    val: CocoSet
    views: list[Features]  # train (and its mirror)
    val_features: Features
    folder: Path  # the backbone cache
    backbone_seconds: float


def load_data(data: Path, budget: OneShotBudget, cache_dir: Path) -> CachedData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped annotations are the data command's report
        train, val = load_coco(data, "train"), load_coco(data, "val")
    if train.class_index != val.class_index:
        raise DataError(f"{data}: train and val splits have different category lists")
    folder, seconds = ensure_backbone_cache(data, train, val, budget.proxy, cache_dir)
    views = [Features.load(folder / "train")]
    if budget.proxy.flip_views:
        views.append(Features.load(folder / "train_flip"))
    if len(views[0]) < budget.batch_size:
        raise DataError(f"{data}: {len(views[0])} train images, fewer than a batch "
                        f"({budget.batch_size})")  # fmt: skip
    return CachedData(train, val, views, Features.load(folder / "val"), folder, seconds)


def supernet_shape(key: SupernetKey, num_classes: int) -> Any:
    # supernet imports Keras at its top: only where a model is built
    from mnasfpn.train.supernet import SupernetShape

    p = key.budget.proxy
    return SupernetShape(key.space, key.repeats,
                         DetectorConfig(p.input_size, num_classes, p.alpha, p.depth))  # fmt: skip


class StepBatches:
    """The batch of any training step, from the step number alone (a resumed training
    reads what an uninterrupted one would): each epoch a seeded order, each batch one view
    (plain or mirrored)."""

    def __init__(self, views: list[Features], batch: int, seed: int) -> None:
        self.views, self.batch, self.seed = views, batch, seed
        self.per_epoch = len(views[0]) // batch
        self._order: tuple[int, np.ndarray] | None = None

    def __call__(self, step: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        epoch, k = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            n = len(self.views[0])
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        idx = np.sort(self._order[1][k * self.batch : (k + 1) * self.batch])
        pick = np.random.default_rng([self.seed, epoch, k]).integers(len(self.views))
        view = self.views[int(pick)]
        return [m[idx] for m in view.maps], view.boxes[idx], view.classes[idx]


# ---- which children a step trains ---------------------------------------------------------


def _widths(g: Genotype, channels: int, expansion: int | None, kernel: int) -> Genotype:
    blocks = tuple(replace(b, expansion=expansion or channels, kernel=kernel) for b in g.blocks)
    return replace(g, channels=channels, blocks=blocks, name=None)


def step_children(space_name: str, repeats: int, rule: str, seed: int, step: int) -> list[Genotype]:
    """The children step `step` trains (from the step number: a resumed training samples
    the same): one uniform random child, or the sandwich of one random topology (widest,
    narrowest, random widths), the widest first."""
    sp = get_space(space_name)
    g = pruned(sp.sample(random.Random(f"{seed}:{step}"))).with_repeats(repeats)
    if rule == "uniform":
        return [g]
    ex = sp.expansions
    widest = _widths(g, max(sp.channels), max(ex) if ex else None, max(sp.kernels))
    narrowest = _widths(g, min(sp.channels), min(ex) if ex else None, min(sp.kernels))
    return [widest, narrowest, g]


# ---- training ---------------------------------------------------------------------------


def _supernet_variables(shape: Any, seed: int) -> dict[str, Any]:
    tf = load_tensorflow()
    # supernet imports Keras at its top: only where a model is built
    from mnasfpn.train.supernet import init_weights

    return {k: tf.Variable(v, name=k.replace("/", "_"))
            for k, v in init_weights(shape, seed).items()}  # fmt: skip


def train_supernet(
    folder: Path,
    key: SupernetKey,
    data: CachedData,
    *,
    progress: bool = False,
    stop_after: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train (or resume training) the supernet in `folder`: checkpoints every
    `checkpoint_every` steps (weights, optimizer, step), the weights at the end. Returns the
    training's summary, or None when `stop_after` ended it at that step without a
    checkpoint there (as a kill would: it resumes from the one before)."""
    tf = load_tensorflow()

    # supernet imports Keras at its top: only where a model is built
    from mnasfpn.train.supernet import Child

    b = key.budget
    shape = supernet_shape(key, data.train.num_classes)
    weights = _supernet_variables(shape, b.seed)
    variables = list(weights.values())
    optimizer = sgd(b.lr, variables)
    module = tf.Module()
    module.weights = variables
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    objects = {"supernet": module, "optimizer": optimizer, "step": step_var}
    # A killed write leaves the newest checkpoint damaged: resume from the older one kept
    # beside it, and a cache with none intact is a cache to train again, not an error.
    latest = None
    if has_checkpoint(folder):
        try:
            latest = intact_checkpoint(folder, echo)
        except RunError as exc:
            echo(f"note: {exc}; training the supernet from the start")
    start = 0
    if latest is not None:
        restore_checkpoint(folder, latest, objects, None)
        start = int(step_var.numpy())
        echo(f"resuming the supernet's training from step {start} ({folder})")
    objective = Objective(StepConfig(shape.detector.input_size, shape.detector.num_classes,
                                     weight_decay=b.weight_decay, preprocess=False))  # fmt: skip
    schedule = Schedule(b.lr, b.steps, max(1, round(b.warmup_frac * b.steps)))
    batches = StepBatches(data.views, b.batch_size, b.seed)
    end = b.steps if stop_after is None else min(b.steps, stop_after)
    tail: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=b.steps, initial=start, unit="step", disable=not progress,
               desc="supernet", dynamic_ncols=True, smoothing=0.05)  # fmt: skip
    try:
        for step in range(start, end):
            maps, boxes, classes = batches(step)
            genotypes = step_children(key.space, key.repeats, b.sampling, b.seed, step)
            optimizer.learning_rate.assign(schedule(step))
            children = [Child(shape, g) for g in genotypes]
            value = supernet_step(weights, optimizer, objective, children, maps, boxes, classes,
                                  distill=b.sampling == "distill")  # fmt: skip
            if not np.isfinite(value):
                raise OneShotError(f"supernet loss became {value} at step {step}; lower "
                                   "--oneshot-lr")  # fmt: skip
            if step >= b.steps - max(1, b.steps // 10):
                tail.append(value)
            step_var.assign(step + 1)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{value:.3f}")
            if (step + 1) % b.checkpoint_every == 0 and step + 1 < b.steps:
                save_checkpoint(folder, step + 1, objects, None)
    finally:
        bar.close()
    if int(step_var.numpy()) < b.steps:
        return None  # stopped early, as if killed: the last checkpoint stays
    np.savez(folder / WEIGHTS_FILE, **{k: v.numpy() for k, v in weights.items()})
    return {
        "seconds": time.perf_counter() - t0,
        "resumed_from": start,
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "params": int(sum(int(np.prod(v.shape)) for v in variables)),
        "shape": shape.to_dict(),
    }


def supernet_step(
    weights: dict[str, Any], optimizer: Any, objective: Any, children: list[Any],
    maps: list[np.ndarray], boxes: np.ndarray, classes: np.ndarray, *, distill: bool,
) -> float:  # fmt: skip
    """One update of the weights `children` read, on the sum of their losses (with
    `distill`, every child after the first learns the first one's outputs); returns the
    mean loss per child."""
    tf = load_tensorflow()
    # objective imports Keras at its top: only where a model is built
    from mnasfpn.train.objective import distillation_loss

    target = objective.targets(tf.constant(boxes), tf.constant(classes))
    used = [weights[n] for n in sorted({n for c in children for n in c.weight_names()})]
    feats = [tf.constant(m, dtype=tf.float32) for m in maps]
    with tf.GradientTape() as tape:
        total, teacher = 0.0, None
        for i, child in enumerate(children):
            codes, logits, kernels = child.forward(weights, [feats[lv] for lv in child.levels],
                                                   "train")  # fmt: skip
            out = objective.loss(codes, logits, target, kernels)
            if distill and teacher is not None:
                loss = distillation_loss(codes, logits, *teacher, target[2]) + out["l2_loss"]
            else:
                loss = out["loss"]
            if i == 0:
                teacher = (tf.stop_gradient(codes), tf.stop_gradient(tf.sigmoid(logits)))
            total = total + loss
    grads = tape.gradient(total, used)
    momentum_apply(optimizer, grads, used, objective.config.clip_norm)
    return float(total) / len(children)


def ensure_supernet(
    key: SupernetKey,
    cache_dir: Path,
    *,
    progress: bool = False,
    stop_after: int | None = None,
    echo: Callable[[str], None] = print,
    data: CachedData | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The trained supernet's folder and its record, trained first when missing (under a
    lock: one maker, the others wait and then read it). A killed training resumes from its
    last checkpoint; a folder whose record names another supernet is refused."""
    folder = key.folder(cache_dir)
    if (folder / DONE_FILE).exists():
        return folder, read_record(folder, key)
    data = data or load_data(Path(key.data), key.budget, cache_dir)
    with locked(folder.parent / f"{folder.name}.lock"):
        if (folder / DONE_FILE).exists():
            return folder, read_record(folder, key)
        part = folder.parent / f"{folder.name}.part"
        marker = part / "key.json"
        if part.exists() and (not marker.exists()
                              or json.loads(marker.read_text()) != key.identity()):  # fmt: skip
            shutil.rmtree(part)  # not this supernet's: never resume from it
        part.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps(key.identity()) + "\n")
        summary = train_supernet(part, key, data, progress=progress, stop_after=stop_after,
                                 echo=echo)  # fmt: skip
        if summary is None:
            raise OneShotError(f"supernet training stopped at step {stop_after} (resumable)")
        record = {"identity": key.identity(), "data": key.data,
                  "budget": key.budget.to_dict(), **summary}  # fmt: skip
        write_atomic(part / META_FILE, json.dumps(record, indent=2) + "\n")
        shutil.rmtree(part / "checkpoints", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        part.rename(folder)
        write_atomic(folder / DONE_FILE, json.dumps({"seconds": summary["seconds"]}) + "\n")
        return folder, record


def read_record(folder: Path, key: SupernetKey) -> dict[str, Any]:
    """The trained supernet's record, refused in one line if it was made for another data
    set, space, repeat count or training budget."""
    try:
        record = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise OneShotError(f"supernet cache {folder} is unreadable ({exc}); remove it") from None
    if record.get("identity") != key.identity():
        raise OneShotError(f"supernet cache {folder} was made for another data set, space or "
                           "budget; remove it to train this one")  # fmt: skip
    return record


def ensure_supernet_child(
    key_doc: dict[str, Any], cache: str, progress: bool, on_ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """`ensure_supernet` from plain arguments, in the spawned process of `prepare_supernet`."""
    key = SupernetKey(key_doc["data"], key_doc["space"], int(key_doc["repeats"]),
                      OneShotBudget(**key_doc["budget"]))  # fmt: skip
    folder, record = ensure_supernet(key, Path(cache), progress=progress,
                                     echo=lambda s: print(s, file=sys.stderr))  # fmt: skip
    return {"folder": str(folder), **record}


# ---- scoring children -------------------------------------------------------------------


class Scorer:
    """Scores children of one trained supernet: loads the weights and the cached features
    once, then per child re-estimates BN statistics on fixed train batches and runs the
    proxy's NMS and COCO evaluation on the val split."""

    def __init__(self, key: SupernetKey, cache_dir: Path) -> None:
        tf = load_tensorflow()

        t0 = time.perf_counter()
        self.key = key
        data = load_data(Path(key.data), key.budget, cache_dir)
        self.folder, self.record = ensure_supernet(key, cache_dir, data=data)
        self.coco = data.val
        self.shape = supernet_shape(key, data.train.num_classes)
        with np.load(self.folder / WEIGHTS_FILE) as f:
            self.weights = {k: tf.constant(f[k]) for k in f.files}
        b = key.budget
        order = np.random.default_rng([b.seed, 7]).permutation(len(data.views[0]))
        self.bn_batches = []
        for k in range(b.bn_batches):
            idx = np.sort(order[k * b.bn_batch_size : (k + 1) * b.bn_batch_size])
            if len(idx):
                self.bn_batches.append([tf.constant(m[idx], tf.float32)
                                        for m in data.views[0].maps])  # fmt: skip
        val = data.val_features
        n = len(val) if b.val_images is None else min(b.val_images, len(val))
        self.val = [
            ([tf.constant(m[s : min(s + EVAL_BATCH, n)], tf.float32) for m in val.maps],
             val.image_id[s : min(s + EVAL_BATCH, n)], val.scale[s : min(s + EVAL_BATCH, n)])
            for s in range(0, n, EVAL_BATCH)
        ]  # fmt: skip
        self.anchors = tf.constant(anchor_centers_sizes(self.shape.detector.input_size))
        self.load_seconds = time.perf_counter() - t0

    def re_estimate(self, child: Any) -> Any:
        """The child's BN statistics on the fixed train batches (the weights untouched)."""
        # supernet imports Keras at its top: only where a model is built
        from mnasfpn.train.supernet import BnStats

        stats = BnStats()
        for feats in self.bn_batches:
            child.forward(self.weights, [feats[lv] for lv in child.levels], "collect", stats)
        return stats

    def score(self, genotype: Genotype) -> dict[str, Any]:
        # supernet imports Keras at its top: only where a model is built
        from mnasfpn.train.supernet import Child

        t0 = time.perf_counter()
        child = Child(self.shape, genotype)
        stats = self.re_estimate(child)
        t1 = time.perf_counter()
        nms = NmsConfig()

        def predict(feats: list[Any]) -> Any:
            codes, logits, _ = child.forward(self.weights, [feats[lv] for lv in child.levels],
                                             "infer", stats)  # fmt: skip
            return nms_detections(codes, logits, self.anchors, nms)

        results, seen = coco_results(predict, self.val, self.shape.detector.input_size,
                                     list(self.coco.class_index.coco_ids))  # fmt: skip
        metrics = coco_metrics(self.coco.ground_truth(), results, seen, engine="faster")
        t2 = time.perf_counter()
        clean = {k: (v if np.isfinite(v) else -1.0) for k, v in metrics.items()}
        return {
            "map": float(metrics["mAP"]), "map50": float(metrics["mAP50"]),
            "map75": float(metrics["mAP75"]), "metrics": clean,
            "bn_seconds": t1 - t0, "eval_seconds": t2 - t1, "val_images": len(seen),
        }  # fmt: skip


_SCORERS: dict[str, Scorer] = {}


def scorer(key: SupernetKey, cache_dir: Path, threads: int | None = None) -> Scorer:
    """This process's scorer of `key` (made once: a Ray worker scores many children)."""
    ident = json.dumps([key.identity(), key.budget.scoring_fields(), str(cache_dir)],
                       sort_keys=True)  # fmt: skip
    found = _SCORERS.get(ident)
    if found is None:
        tf = load_tensorflow()
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already running in this process: keep its pool
                pass
        found = _SCORERS[ident] = Scorer(key, cache_dir)
    return found
