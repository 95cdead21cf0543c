"""`make_dataset`: a checked `CocoSet` → batched `tf.data.Dataset` for SSD training/eval.

TensorFlow is imported inside the functions only. The element contract is in the package
docstring (`mnasfpn.data`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnasfpn.data.coco import CocoSet, DataError
from mnasfpn.tfenv import load_tensorflow

# Training scale jitter: the image is resized so that its longer side is S * U(lo, hi), then
# a random S×S window of it is taken (zoom in: crop; zoom out: more padding).
SCALE_JITTER = (0.6, 1.4)
# A box cut by the crop window is kept when at least this fraction of its area is inside.
MIN_VISIBLE_FRACTION = 0.3
# Boxes smaller than this (in input pixels) after the crop are dropped.
MIN_BOX_SIDE_PX = 1.0


def _targets(coco: CocoSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image boxes as normalized [ymin,xmin,ymax,xmax] of the original image, contiguous
    classes, and row lengths (for a ragged slice). Crowd boxes are left out: the training
    loss should neither match them nor call them background, and COCO eval reads crowd
    regions from the annotation file itself."""
    boxes, classes, lengths = [], [], []
    for im, ann in zip(coco.images, coco.annotations, strict=True):
        keep = ~ann.iscrowd
        b = ann.boxes[keep].astype(np.float64)
        yxyx = np.stack(
            [b[:, 1] / im.height, b[:, 0] / im.width,
             (b[:, 1] + b[:, 3]) / im.height, (b[:, 0] + b[:, 2]) / im.width], axis=1,
        ) if len(b) else np.zeros((0, 4))  # fmt: skip
        boxes.append(yxyx.astype(np.float32))
        classes.append(coco.class_index.contiguous_array(ann.category_ids[keep]))
        lengths.append(len(b))
    return (
        np.concatenate(boxes).reshape(-1, 4),
        np.concatenate(classes).astype(np.int32),
        np.asarray(lengths, dtype=np.int64),
    )


def make_dataset(
    coco: CocoSet,
    input_size: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    max_boxes: int = 100,
) -> Any:
    """The batched `tf.data.Dataset` of `coco` at `input_size` (see `mnasfpn.data`)."""
    tf = load_tensorflow()
    if input_size < 1 or batch_size < 1 or max_boxes < 1:
        raise DataError(
            f"input size, batch size and max boxes must be positive "
            f"(got {input_size}, {batch_size}, {max_boxes})"
        )
    if training and len(coco.images) < batch_size:
        raise DataError(
            f"{coco.split} has {len(coco.images)} images, fewer than one batch of {batch_size}"
        )
    boxes, classes, lengths = _targets(coco)
    paths = [str(im.path) for im in coco.images]
    ids = np.asarray([im.id for im in coco.images], dtype=np.int64)
    sizes = np.asarray([[im.height, im.width] for im in coco.images], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "path": paths,
            "image_id": ids,
            "size": sizes,
            "boxes": tf.RaggedTensor.from_row_lengths(boxes, lengths),
            "classes": tf.RaggedTensor.from_row_lengths(classes, lengths),
        }
    )
    S = float(input_size)

    def load(el: dict[str, Any]) -> tuple[Any, Any]:
        raw = tf.io.read_file(el["path"])
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        return image, el

    def transform(el: dict[str, Any], rng_seed: Any) -> dict[str, Any]:
        image, el = load(el)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        boxes = el["boxes"] * tf.concat([hw, hw], 0)  # original pixels, yxyx
        classes = el["classes"]
        scale = S / tf.reduce_max(hw)
        offset = tf.zeros([2], tf.float32)
        if training:
            seeds = tf.random.experimental.stateless_split(rng_seed, 3)
            scale *= tf.random.stateless_uniform([], seeds[0], *SCALE_JITTER)
        new_hw = tf.maximum(tf.round(hw * scale), 1.0)
        image = tf.image.resize(image, tf.cast(new_hw, tf.int32), method="bilinear")
        boxes = boxes * scale
        if training:
            # Random S×S window of the resized image (the whole image when it is smaller).
            room = tf.maximum(new_hw - S, 0.0)
            offset = tf.floor(tf.random.stateless_uniform([2], seeds[1]) * (room + 1.0))
            off_i = tf.cast(offset, tf.int32)
            win = tf.cast(tf.minimum(new_hw - offset, S), tf.int32)
            image = image[off_i[0] : off_i[0] + win[0], off_i[1] : off_i[1] + win[1]]
            win_f = tf.cast(win, tf.float32)
            shifted = boxes - tf.concat([offset, offset], 0)
            clipped = tf.clip_by_value(shifted, 0.0, tf.concat([win_f, win_f], 0))
            area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
            c_h, c_w = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            keep = (
                (c_h >= MIN_BOX_SIDE_PX)
                & (c_w >= MIN_BOX_SIDE_PX)
                & (c_h * c_w >= MIN_VISIBLE_FRACTION * area)
            )
            boxes, classes = tf.boolean_mask(clipped, keep), tf.boolean_mask(classes, keep)
            flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
            width = win_f[1]
            image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
            boxes = tf.cond(
                flip,
                lambda: tf.stack(
                    [boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], 1
                ),
                lambda: boxes,
            )
        image = tf.image.pad_to_bounding_box(image, 0, 0, input_size, input_size)
        n = tf.minimum(tf.shape(classes)[0], max_boxes)
        boxes = tf.clip_by_value(boxes[:n] / S, 0.0, 1.0)
        pad = max_boxes - n
        return {
            "image": tf.ensure_shape(image, [input_size, input_size, 3]),
            "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_boxes, 4]),
            "classes": tf.ensure_shape(
                tf.pad(classes[:n], [[0, pad]], constant_values=-1), [max_boxes]
            ),
            "num_boxes": n,
            "image_id": el["image_id"],
            "scale": tf.cast(scale, tf.float32),
        }

    options = tf.data.Options()
    options.deterministic = True
    if training:
        ds = ds.shuffle(min(len(paths), 20_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
        # Element k of the endless stream gets its own stateless seed (seed, k): the same
        # seed gives the same augmented batches on every run, at any parallelism.
        counter = tf.data.Dataset.counter().map(lambda k: tf.stack([tf.cast(seed, tf.int64), k]))
        ds = tf.data.Dataset.zip((ds, counter))
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        zero = tf.zeros([2], tf.int64)
        ds = ds.map(lambda el: transform(el, zero), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=False)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
