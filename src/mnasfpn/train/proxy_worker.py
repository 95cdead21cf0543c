"""The proxy task's TensorFlow side, run inside `proxy_evaluate`'s child process: the shared
frozen backbone and its feature cache, and one child's head training and COCO evaluation.
See `mnasfpn.train.proxy` for what is done and why."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.data.coco import CocoSet, DataError, load_coco
from mnasfpn.ir.build import TAP_BLOCKS
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import MODEL_INPUT, Op
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.proxy import ProxyBudget, backbone_cache_dir

LEVEL_NAMES = ("c3", "c4", "c5")
EVAL_BATCH = 64
LOG_EVERY = 50


# ---- building Keras models from a slice of the IR ------------------------------------------


def tap_ops(graph: OpGraph) -> list[int]:
    """Op ids of the backbone's C3, C4, C5 outputs."""
    by_name = {op.name: op.id for op in graph.ops}
    out = []
    for block in sorted(TAP_BLOCKS):
        name = f"backbone/block{block}"
        out.append(by_name.get(f"{name}/add", by_name.get(f"{name}/project", -1)))
    if -1 in out:
        raise RuntimeError("backbone taps not found in the IR (op names changed?)")
    return out


def is_frozen_backbone(op: Op) -> bool:
    """Backbone ops up to C5; C6 (a max-pool and a 1×1 conv to C) belongs to the child."""
    return op.part == "backbone" and not op.name.startswith("backbone/c6/")


def build_ops(ops: list[Op], inputs: dict[int, Any], outputs: list[int], name: str) -> Any:
    """A Keras model of `ops` (in execution order) fed by `inputs` (op id → keras.Input):
    one layer per op, weight groups shared, as the IR's own builder does."""
    import keras

    from mnasfpn.model.keras_builder import layer_name
    from mnasfpn.model.layers import make_layer

    tensors = dict(inputs)
    shared: dict[str, Any] = {}
    for op in ops:
        layer = shared.get(op.weight_group) if op.weight_group else None
        if layer is None:
            layer = make_layer(
                op.type, in_shapes=op.in_shapes, out_shape=op.out_shape, kernel=op.kernel,
                stride=op.stride, act=op.act, batchnorm=op.batchnorm, bias=op.bias,
                name=layer_name(op.weight_group or op.name),
            )  # fmt: skip
            if op.weight_group:
                shared[op.weight_group] = layer
        args = [tensors[i] for i in op.inputs]
        tensors[op.id] = layer(args if len(args) > 1 else args[0])
    return keras.Model(list(inputs.values()), [tensors[i] for i in outputs], name=name)


def build_detector_and_backbone(graph: OpGraph) -> tuple[Any, Any]:
    """(whole detector image → [codes, logits], its backbone image → [C3, C4, C5]) sharing
    layers; free batch dimension."""
    import keras

    image = keras.Input(shape=graph.input_shape, name="image")
    detector = build_ops(graph.live_ops(), {MODEL_INPUT: image}, list(graph.outputs), "reference")
    taps = [detector.get_layer(_layer_of(graph, i)).output for i in tap_ops(graph)]
    return detector, keras.Model(image, taps, name="backbone")


def _layer_of(graph: OpGraph, op_id: int) -> str:
    from mnasfpn.model.keras_builder import layer_name

    op = graph.ops[op_id]
    return layer_name(op.weight_group or op.name)


def build_head(graph: OpGraph) -> tuple[Any, list[int]]:
    """The child's trainable part (C6, cells, predictor) fed by the cached taps it reads;
    returns the model and which of C3, C4, C5 (0, 1, 2) it takes, in order."""
    import keras

    ops = [op for op in graph.live_ops() if not is_frozen_backbone(op)]
    used = {i for op in ops for i in op.inputs}
    taps = tap_ops(graph)
    inputs, levels = {}, []
    for level, op_id in enumerate(taps):
        if op_id in used:
            shape = graph.ops[op_id].out_shape
            inputs[op_id] = keras.Input(shape=shape, name=LEVEL_NAMES[level])
            levels.append(level)
    known = set(inputs) | {op.id for op in ops}
    if not used <= known:
        raise RuntimeError("the head reads backbone ops other than C3..C5")
    return build_ops(ops, inputs, list(graph.outputs), "proxy_head"), levels


# ---- SSD training steps -------------------------------------------------------------------


def _set_bn_momentum(model: Any, momentum: float) -> None:
    import keras

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _set_class_prior(model: Any) -> None:
    from mnasfpn.train.detector import set_class_prior

    set_class_prior(model)


def _train_loop(
    model: Any,
    batches: Iterator[tuple[Any, Any, Any]],
    *,
    steps: int,
    lr: float,
    warmup_frac: float,
    weight_decay: float,
    input_size: int,
    num_classes: int,
    preprocess: bool,
) -> float:
    """Momentum SGD with the paper's schedule shape on the SSD loss; returns the mean loss
    of the last 10% of steps."""
    tf = load_tensorflow()
    import keras

    from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners
    from mnasfpn.train.boxes import targets
    from mnasfpn.train.detector import preprocess as to_unit_range
    from mnasfpn.train.objective import decayed_indices, training_loss
    from mnasfpn.train.schedule import Schedule

    anchors = tf.constant(anchor_centers_sizes(input_size))
    corners = tf.constant(anchor_corners(input_size))
    variables = model.trainable_variables
    kernels = [variables[i] for i in decayed_indices(variables)]
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    optimizer.build(variables)

    @tf.function(reduce_retracing=True, autograph=False)
    def step_fn(x: Any, boxes: Any, classes: Any) -> Any:
        box_t, onehot, positive = targets(anchors, corners, boxes, classes, num_classes)
        with tf.GradientTape() as tape:
            codes, logits = model(to_unit_range(x) if preprocess else x, training=True)
            loss = training_loss(codes, logits, box_t, onehot, positive, kernels,
                                 weight_decay)["loss"]  # fmt: skip
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 10.0)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    schedule = Schedule(lr, steps, max(1, round(warmup_frac * steps)))
    tail: list[float] = []
    for step in range(steps):
        x, boxes, classes = next(batches)
        optimizer.learning_rate.assign(schedule(step))
        loss = float(step_fn(x, boxes, classes))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}")
        if step >= steps - max(1, steps // 10):
            tail.append(loss)
    return float(np.mean(tail))


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
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _extract(backbone: Any, coco: CocoSet, size: int, max_boxes: int, flip: bool) -> Features:
    tf = load_tensorflow()
    from mnasfpn.data.pipeline import make_dataset
    from mnasfpn.train.detector import preprocess

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
    with _locked(cache_dir / f"{folder.name}.lock"):
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
    import keras

    from mnasfpn.data.pipeline import make_dataset
    from mnasfpn.train.schedule import bn_momentum

    keras.utils.set_random_seed(budget.backbone_seed)
    reference = get_architecture(budget.backbone_head, budget.backbone_head_repeats)
    config = DetectorConfig(budget.input_size, train.num_classes, budget.alpha, budget.depth)
    graph = config.opgraph(reference)
    detector, backbone = build_detector_and_backbone(graph)
    _set_bn_momentum(detector, bn_momentum(budget.backbone_steps))
    _set_class_prior(detector)
    max_boxes = _max_boxes(train, val)
    ds = make_dataset(train, budget.input_size, budget.backbone_batch_size, training=True,
                      seed=budget.backbone_seed, max_boxes=max_boxes)  # fmt: skip
    batches = ((b["image"], b["boxes"], b["classes"]) for b in ds)
    loss = _train_loop(
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
    tf = load_tensorflow()

    from mnasfpn.train.anchors import anchor_centers_sizes
    from mnasfpn.train.boxes import decode
    from mnasfpn.train.coco_metrics import coco_metrics
    from mnasfpn.train.evaluate import NmsConfig, detections_to_coco

    nms = NmsConfig()
    anchors = tf.constant(anchor_centers_sizes(input_size))

    @tf.function(reduce_retracing=True, autograph=False)
    def predict(x: Any) -> Any:
        codes, logits = head(x, training=False)
        out = tf.image.combined_non_max_suppression(
            decode(codes, anchors)[:, :, None, :], tf.sigmoid(logits),
            max_output_size_per_class=nms.max_detections, max_total_size=nms.max_detections,
            iou_threshold=nms.iou, score_threshold=nms.score_threshold, clip_boxes=True,
        )  # fmt: skip
        return out.nmsed_boxes, out.nmsed_scores, out.nmsed_classes, out.valid_detections

    results: list[dict[str, Any]] = []
    cats = list(coco.class_index.coco_ids)
    for s in range(0, len(val), EVAL_BATCH):
        sl = slice(s, s + EVAL_BATCH)
        x = [tf.constant(val.maps[lv][sl], dtype=tf.float32) for lv in levels]
        boxes, scores, classes, counts = (t.numpy() for t in predict(x))
        results += detections_to_coco(boxes, scores, classes, counts, val.image_id[sl],
                                      val.scale[sl], input_size, cats)  # fmt: skip
    return coco_metrics(coco.ground_truth(), results, [int(i) for i in val.image_id])


def run_proxy(
    genotype: Genotype,
    data: Path,
    budget: ProxyBudget,
    cache_dir: Path,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One child, start to finish (in the spawned process); ProxyResult's fields.
    `on_ready()` is called once the shared backbone cache exists (the time limit starts)."""
    import warnings

    tf = load_tensorflow()
    if budget.threads:
        tf.config.threading.set_intra_op_parallelism_threads(budget.threads)
        tf.config.threading.set_inter_op_parallelism_threads(budget.threads)
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
    head, levels = build_head(config.opgraph(genotype))
    _set_bn_momentum(head, 0.99)
    _set_class_prior(head)
    t0 = time.perf_counter()
    loss = _train_loop(
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
