"""Tiny in-memory detection batches in the shape mnasfpn.data.make_dataset yields."""

from __future__ import annotations

from typing import Any

import numpy as np


def shapes_set(n: int, size: int, *, seed: int = 0, max_boxes: int = 8) -> dict[str, np.ndarray]:
    """n images of squares (class 0) and plus signs (class 1) on a noisy grey background."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(90, 140, (n, size, size, 3)).astype(np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    classes = np.full((n, max_boxes), -1, np.int32)
    num = np.zeros(n, np.int32)
    for i in range(n):
        k = int(rng.integers(1, 4))
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(50):
            if len(placed) == k:
                break
            side = int(rng.integers(size // 6, size // 2))
            y, x = (int(v) for v in rng.integers(0, size - side, 2))
            if any(y < b[2] and b[0] < y + side and x < b[3] and b[1] < x + side for b in placed):
                continue
            cls = len(placed) % 2
            if cls == 0:
                images[i, y : y + side, x : x + side] = (230, 40, 40)
            else:
                t = max(1, side // 3)
                images[i, y + t : y + side - t, x : x + side] = (40, 40, 230)
                images[i, y : y + side, x + t : x + side - t] = (40, 40, 230)
            j = len(placed)
            boxes[i, j] = (y / size, x / size, (y + side) / size, (x + side) / size)
            classes[i, j] = cls
            placed.append((y, x, y + side, x + side))
        num[i] = len(placed)
    return {"image": images, "boxes": boxes, "classes": classes, "num_boxes": num,
            "image_id": np.arange(1, n + 1, dtype=np.int64),
            "scale": np.ones(n, np.float32)}  # fmt: skip


def batches_fn(data: dict[str, np.ndarray], batch_size: int, *, shuffle: bool = True) -> Any:
    """epoch → one shuffled pass (seeded by the epoch), as the trainer takes it."""
    from mnasfpn.tfenv import load_tensorflow

    tf = load_tensorflow()

    def make(epoch: int) -> Any:
        ds = tf.data.Dataset.from_tensor_slices(data)
        if shuffle:
            ds = ds.shuffle(len(data["image"]), seed=epoch)
        return ds.batch(batch_size, drop_remainder=True)

    return make


def coco_ground_truth(data: dict[str, np.ndarray], num_classes: int = 2) -> dict[str, Any]:
    """The COCO document of a shapes_set (category ids 1..K, pixel boxes)."""
    size = data["image"].shape[1]
    images, annotations = [], []
    for i, image_id in enumerate(data["image_id"]):
        images.append({"id": int(image_id), "width": size, "height": size})
        for j in range(int(data["num_boxes"][i])):
            ymin, xmin, ymax, xmax = (float(v) * size for v in data["boxes"][i, j])
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image_id),
                "category_id": int(data["classes"][i, j]) + 1,
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "area": (xmax - xmin) * (ymax - ymin), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": k + 1, "name": f"shape{k}"} for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}
