"""COCO box metrics through pycocotools (TensorFlow-free)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

METRIC_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


def coco_metrics(
    ground_truth: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """mAP@[.5:.95], @.5, @.75 and by object size, as COCO defines them.

    `ground_truth` is a COCO instances document (images, annotations, categories);
    `detections` are COCO results ({image_id, category_id, bbox [x,y,w,h], score}) in
    original image pixels. `image_ids` limits the evaluation (default: every image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = sorted({int(i) for i in image_ids} if image_ids is not None
                 else {int(im["id"]) for im in ground_truth["images"]})  # fmt: skip
    if not detections:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {
            "images": ground_truth["images"],
            "annotations": [
                {**a, "iscrowd": a.get("iscrowd", 0),
                 "area": a.get("area", a["bbox"][2] * a["bbox"][3])}
                for a in ground_truth["annotations"]
            ],
            "categories": ground_truth["categories"],
        }  # fmt: skip
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 marks "no ground truth of that size": report it as 0 would lie; keep -1 → NaN.
    return {
        name: (float(v) if v >= 0 else float("nan"))
        for name, v in zip(METRIC_NAMES, ev.stats[:6], strict=True)
    }
