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

from mnasfpn.atomic import OutputError, check_output, check_output_dir, write_atomic
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
    _check_outputs(coco_root, split, out_root, names, force)
    source = load_coco(coco_root, split, check_images="exists")  # checks before writing
    n = len(source.images)
    if val_fraction is not None:
        if not 0 < val_fraction < 1:
            raise DataError(f"search-val fraction must be in (0, 1), got {val_fraction}")
        val_count = max(1, round(n * val_fraction))
        if val_count >= n:
            raise DataError(f"--val-fraction {val_fraction:g} of the {n} images of {split} "
                            f"leaves no search-train image; give at most "
                            f"{(n - 1) / n:.3g}")  # fmt: skip
    assert val_count is not None
    if not 0 < val_count < n:
        raise DataError(f"search-val count must be 1..{n - 1} for {n} images, got {val_count}")

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
        if link.is_symlink():
            link.unlink()
        out_root.mkdir(parents=True, exist_ok=True)
        os.symlink(image_dir, link, target_is_directory=True)
        write_atomic(annotation_path(out_root, name), json.dumps(sub))
        counts[name] = len(images)
    return counts


def _check_outputs(
    coco_root: Path, split: str, out_root: Path, names: tuple[str, str], force: bool
) -> None:
    """The output guard: each annotation file written is neither the source's (even with
    --force: the split would be rewritten from itself, losing images) nor, without
    --force, an existing file; an image folder that is not a link this command made is
    never replaced."""
    check_output_dir(out_root)
    source = annotation_path(coco_root, split)
    image_dir = coco_root / split
    for name in names:
        try:
            check_output(annotation_path(out_root, name), inputs=[source], force=force)
        except OutputError as exc:
            if "is the input" in str(exc):
                raise DataError(f"--out {out_root}: its {name} split would be written over the "
                                f"input {source}; choose another --out") from None
            raise DataError(f"{out_root} already has a '{name}' split; pass --force to "
                            "replace it") from None
        link = out_root / name
        if link.is_symlink():
            if not force:
                raise DataError(f"{out_root} already has a '{name}' split; pass --force to "
                                "replace it")
        elif link.exists():
            what = "the input's image folder" if link.resolve() == image_dir.resolve() else (
                "not a link this command made")
            raise DataError(f"{link} exists and is {what}; choose another --out")
