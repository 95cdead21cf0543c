"""The proxy task's TensorFlow side, run inside `proxy_evaluate`'s child process: the shared
frozen backbone and its feature cache, and one child's head training and COCO evaluation.
See `mnasfpn.train.proxy` for what is done and why."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.data.coco import CocoSet, DataError, load_coco
from mnasfpn.data.pipeline import make_dataset
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.coco_metrics import coco_metrics
from mnasfpn.train.detector import preprocess, set_bn_momentum, set_class_prior
from mnasfpn.train.evaluate import coco_results, make_predict_fn
from mnasfpn.train.head import LEVEL_NAMES, build_detector_and_backbone, build_head
from mnasfpn.train.proxy_config import ProxyBudget, backbone_cache_dir
from mnasfpn.train.schedule import Schedule, bn_momentum
from mnasfpn.train.step import StepConfig, make_step_fn, run_steps, sgd

EVAL_BATCH = 64


def _train(
    model: Any, batches: Iterator[tuple[Any, Any, Any]], *, steps: int, lr: float,
    warmup_frac: float, weight_decay: float, input_size: int, num_classes: int,
    preprocess: bool,
) -> float:  # fmt: skip
    """The shared training step (mnasfpn.train.step) on the paper's schedule shape for a
    fixed number of steps; the mean loss of the last 10% of them."""
    optimizer = sgd(lr, model.trainable_variables)
    config = StepConfig(input_size, num_classes, weight_decay=weight_decay, preprocess=preprocess)
    step_fn = make_step_fn(model, optimizer, config)
    schedule = Schedule(lr, steps, max(1, round(warmup_frac * steps)))
    return run_steps(step_fn, optimizer, batches, schedule, steps)


# ---- the shared backbone and its feature cache -------------------------------------------


@dataclass
class Features:
    """One split's cached backbone outputs and padded targets, in memory."""

    maps: list[np.ndarray]  # C3, C4, C5 [N, h, w, c] float16
    boxes: np.ndarray  # [N, M, 4] normalized yxyx in the padded square
    classes: np.ndarray  # [N, M] int32, -1 padding
    image_id: np.ndarray  # [N] int64
    scale: np.ndarray  # [N] float32

    def __len__(self) -> int:
        return len(self.image_id)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, m in zip(LEVEL_NAMES, self.maps, strict=True):
            np.save(folder / f"{name}.npy", m)
        for name in ("boxes", "classes", "image_id", "scale"):
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> Features:
        get = lambda name: np.load(folder / f"{name}.npy")  # noqa: E731
        return cls([get(n) for n in LEVEL_NAMES], get("boxes"), get("classes"),
                   get("image_id"), get("scale"))  # fmt: skip


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _extract(backbone: Any, coco: CocoSet, size: int, max_boxes: int, flip: bool) -> Features:
    tf = load_tensorflow()

    @tf.function(reduce_retracing=True, autograph=False)
    def run(images: Any) -> Any:
        return backbone(preprocess(images), training=False)

    maps: list[list[np.ndarray]] = [[], [], []]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("boxes", "classes", "image_id", "scale")}
    ds = make_dataset(coco, size, EVAL_BATCH, training=False, max_boxes=max_boxes)
    for batch in ds:
        images, boxes = batch["image"], batch["boxes"].numpy()
        if flip:  # mirror the padded square; padding boxes stay all-zero rows
            images = images[:, :, ::-1]
            real = batch["classes"].numpy() >= 0
            mirrored = np.stack([boxes[..., 0], 1 - boxes[..., 3], boxes[..., 2],
                                 1 - boxes[..., 1]], axis=-1)  # fmt: skip
            boxes = np.where(real[..., None], mirrored, 0.0).astype(np.float32)
        for level, m in enumerate(run(images)):
            maps[level].append(m.numpy().astype(np.float16))
        parts["boxes"].append(boxes)
        for k in ("classes", "image_id", "scale"):
            parts[k].append(batch[k].numpy())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Features([np.concatenate(m) for m in maps], cat["boxes"], cat["classes"],
                    cat["image_id"], cat["scale"])  # fmt: skip


def ensure_backbone_cache(
    data: Path, train: CocoSet, val: CocoSet, budget: ProxyBudget, cache_dir: Path
) -> tuple[Path, float]:
    """The cache folder of (data, backbone settings), made if missing (under a lock, so
    concurrent children wait for one maker); returns it and the seconds spent making it."""
    folder = backbone_cache_dir(cache_dir, data, budget)
    done = folder / "done.json"
    if done.exists():
        return folder, 0.0
    with locked(cache_dir / f"{folder.name}.lock"):
        if done.exists():  # another child made it while we waited
            return folder, 0.0
        t0 = time.perf_counter()
        tmp = cache_dir / f"{folder.name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        _make_backbone_cache(tmp, train, val, budget)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        seconds = time.perf_counter() - t0
        meta = {"seconds": seconds, "data": str(data), "budget": budget.backbone_fields()}
        (folder / "done.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder, seconds


def _make_backbone_cache(out: Path, train: CocoSet, val: CocoSet, budget: ProxyBudget) -> None:
    tf = load_tensorflow()
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    keras.utils.set_random_seed(budget.backbone_seed)
    reference = get_architecture(budget.backbone_head, budget.backbone_head_repeats)
    config = DetectorConfig(budget.input_size, train.num_classes, budget.alpha, budget.depth)
    graph = build_opgraph(reference, config)
    detector, backbone = build_detector_and_backbone(graph)
    set_bn_momentum(detector, bn_momentum(budget.backbone_steps))
    set_class_prior(detector)
    max_boxes = _max_boxes(train, val)
    ds = make_dataset(train, budget.input_size, budget.backbone_batch_size, training=True,
                      seed=budget.backbone_seed, max_boxes=max_boxes)  # fmt: skip
    batches = ((b["image"], b["boxes"], b["classes"]) for b in ds)
    loss = _train(
        detector, batches, steps=budget.backbone_steps, lr=budget.backbone_lr,
        warmup_frac=0.05, weight_decay=4e-5, input_size=budget.input_size,
        num_classes=train.num_classes, preprocess=True,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(out / "backbone.weights.h5"))
    _extract(backbone, train, budget.input_size, max_boxes, flip=False).save(out / "train")
    if budget.flip_views:
        _extract(backbone, train, budget.input_size, max_boxes, flip=True).save(out / "train_flip")
    _extract(backbone, val, budget.input_size, max_boxes, flip=False).save(out / "val")
    (out / "backbone.json").write_text(json.dumps({"final_loss": loss, "reference_head":
                                                   reference.to_dict()}, indent=2))  # fmt: skip
    del tf


def _max_boxes(*sets: CocoSet) -> int:
    most = max(int((~a.iscrowd).sum()) for s in sets for a in s.annotations)
    return max(1, min(100, most))


# ---- one child ------------------------------------------------------------------------------


def _feature_batches(
    views: list[Features], levels: list[int], batch: int, seed: int
) -> Iterator[tuple[Any, Any, Any]]:
    """Endless seeded batches: every epoch a new order, each image in a random view."""
    tf = load_tensorflow()
    rng = np.random.default_rng(seed)
    n = len(views[0])
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            idx = np.sort(order[start : start + batch])
            view = views[int(rng.integers(len(views)))] if len(views) > 1 else views[0]
            x = [tf.constant(view.maps[lv][idx], dtype=tf.float32) for lv in levels]
            yield x, tf.constant(view.boxes[idx]), tf.constant(view.classes[idx])


def _evaluate(
    head: Any, levels: list[int], val: Features, coco: CocoSet, input_size: int
) -> dict[str, float]:
    """The NMS and COCO evaluation of `mnasfpn eval`, on the cached val features."""
    tf = load_tensorflow()

    predict = make_predict_fn(head, input_size, preprocess_images=False)
    batches = (
        ([tf.constant(val.maps[lv][s : s + EVAL_BATCH], dtype=tf.float32) for lv in levels],
         val.image_id[s : s + EVAL_BATCH], val.scale[s : s + EVAL_BATCH])
        for s in range(0, len(val), EVAL_BATCH)
    )  # fmt: skip
    results, seen = coco_results(predict, batches, input_size, list(coco.class_index.coco_ids))
    return coco_metrics(coco.ground_truth(), results, seen)


def run_proxy(
    genotype: Genotype,
    data: Path,
    budget: ProxyBudget,
    cache_dir: Path,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One child, start to finish (in the spawned process); ProxyResult's fields.
    `on_ready()` is called once the shared backbone cache exists (the time limit starts)."""
    tf = load_tensorflow()
    if budget.threads:
        tf.config.threading.set_intra_op_parallelism_threads(budget.threads)
        tf.config.threading.set_inter_op_parallelism_threads(budget.threads)
    # Keras: loaded here, once tfenv has set TensorFlow up, never at import
    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped annotations are the data command's report
        train, val = load_coco(data, "train"), load_coco(data, "val")
    if train.class_index != val.class_index:
        raise DataError(f"{data}: train and val splits have different category lists")
    folder, backbone_seconds = ensure_backbone_cache(data, train, val, budget, cache_dir)
    if on_ready is not None:
        on_ready()
    views = [Features.load(folder / "train")]
    if budget.flip_views:
        views.append(Features.load(folder / "train_flip"))
    val_features = Features.load(folder / "val")
    if len(views[0]) < budget.batch_size:
        raise DataError(f"{data}: {len(views[0])} train images, fewer than a batch")

    keras.utils.set_random_seed(budget.seed)
    config = DetectorConfig(budget.input_size, train.num_classes, budget.alpha, budget.depth)
    head, levels = build_head(build_opgraph(genotype, config))
    set_bn_momentum(head, 0.99)
    set_class_prior(head)
    t0 = time.perf_counter()
    loss = _train(
        head, _feature_batches(views, levels, budget.batch_size, budget.seed),
        steps=budget.steps, lr=budget.lr, warmup_frac=budget.warmup_frac,
        weight_decay=budget.weight_decay, input_size=budget.input_size,
        num_classes=train.num_classes, preprocess=False,
    )  # fmt: skip
    t1 = time.perf_counter()
    metrics = _evaluate(head, levels, val_features, val, budget.input_size)
    t2 = time.perf_counter()
    clean = {k: (v if np.isfinite(v) else -1.0) for k, v in metrics.items()}
    return {
        "map": float(metrics["mAP"]),
        "map50": float(metrics["mAP50"]),
        "map75": float(metrics["mAP75"]),
        "metrics": clean,
        "train_seconds": t1 - t0,
        "eval_seconds": t2 - t1,
        "total_seconds": 0.0,  # the caller fills in its own wall time
        "steps": budget.steps,
        "backbone_seconds": backbone_seconds,
        "final_loss": loss,
        "head_params": int(head.count_params()),
        "val_images": len(val_features),
        "budget": budget.to_dict(),
    }


def run_proxy_child(
    genotype_doc: dict[str, Any], data: str, budget_doc: dict[str, Any], cache: str,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`run_proxy` from plain arguments: the entry point of `proxy_evaluate`'s process."""
    genotype = genotype_from_dict(genotype_doc, source="proxy genotype")
    return run_proxy(genotype, Path(data), ProxyBudget(**budget_doc), Path(cache), on_ready)
