"""Carve a search-train / search-val pair out of one training split, with a seed.

The paper's proxy task splits COCO train2017 into 111k search-train and 7k search-val
images, so the search never sees the real val2017. The new folder holds only the two
annotation files plus, per split, a symbolic link to the source image folder: nothing
is copied, and every field of the source annotations (segmentation, area, ...) is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.atomic import write_atomic
from mnasfpn.data.coco import DataError, annotation_path, load_coco


def split_coco(
    coco_root: Path | str,
    split: str,
    out_root: Path | str,
    *,
    val_count: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    names: tuple[str, str] = ("train", "val"),
    force: bool = False,
) -> dict[str, int]:
    """Write `out_root` with splits `names` (search-train, search-val) drawn from
    `coco_root`'s `split`; give exactly one of val_count / val_fraction. Returns the image
    count of each new split."""
    if (val_count is None) == (val_fraction is None):
        raise DataError("give exactly one of a search-val image count or fraction")
    coco_root, out_root = Path(coco_root), Path(out_root)
    source = load_coco(coco_root, split, check_images="exists")  # checks before writing
    n = len(source.images)
    if val_fraction is not None:
        if not 0 < val_fraction < 1:
            raise DataError(f"search-val fraction must be in (0, 1), got {val_fraction}")
        val_count = max(1, round(n * val_fraction))
    assert val_count is not None
    if not 0 < val_count < n:
        raise DataError(f"search-val count must be 1..{n - 1} for {n} images, got {val_count}")
    for name in names:
        if not force and (annotation_path(out_root, name).exists() or (out_root / name).exists()):
            raise DataError(f"{out_root} already has a '{name}' split; pass --force to replace it")

    with open(source.annotation_path, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    order = np.random.default_rng(seed).permutation(n)
    val_ids = {source.images[i].id for i in order[:val_count]}
    image_dir = (coco_root / split).resolve()
    counts: dict[str, int] = {}
    for name, is_val in zip(names, (False, True), strict=True):
        images = [im for im in doc["images"] if (int(im["id"]) in val_ids) == is_val]
        ids = {int(im["id"]) for im in images}
        sub = {
            **{k: v for k, v in doc.items() if k not in ("images", "annotations")},
            "images": images,
            "annotations": [a for a in doc["annotations"] if int(a.get("image_id", -1)) in ids],
        }
        sub.setdefault("info", {})
        if isinstance(sub["info"], dict):
            sub["info"] = {**sub["info"], "split_of": f"{coco_root}/{split}", "seed": seed}
        link = out_root / name
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                raise DataError(f"{link} exists and is not a link this command made; remove it")
            link.unlink()
        out_root.mkdir(parents=True, exist_ok=True)
        os.symlink(image_dir, link, target_is_directory=True)
        write_atomic(annotation_path(out_root, name), json.dumps(sub))
        counts[name] = len(images)
    return counts
