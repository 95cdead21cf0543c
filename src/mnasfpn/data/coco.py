"""Read a COCO-format detection folder into a checked, TensorFlow-free `CocoSet`.

Layout: `ROOT/annotations/instances_{split}.json`, images under `ROOT/{split}/` (the real COCO
2017 folders `train2017` / `val2017` work as they are). An image's `file_name` is resolved
against `ROOT/{split}/`; a name that already includes that folder, or an absolute path, also
works. Everything is checked here, before any training: a folder or file that is missing, an
unreadable image, an empty or inconsistent category list raise one-line `DataError`s. Single
bad annotations (zero area, far out of bounds, unknown category) are skipped and counted in
`CocoSet.skipped` (and warned about once); when so many are bad that the file is more likely
in another format than COCO's, that is an error too.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.errors import MnasfpnError


class DataError(MnasfpnError, ValueError):
    """A detection data folder that cannot be used as it is (one line: what and what to do)."""


class DataWarning(UserWarning):
    """Annotations that were skipped (counted in `CocoSet.skipped`)."""


# A box may stick out of its image by this many pixels (COCO's own boxes do, by rounding)
# before it counts as out of bounds; within it, the box is clipped to the image.
BOUNDS_TOLERANCE_PX = 2.0
# More skipped annotations than this fraction means the file is not what we think it is
# (boxes as corners instead of x,y,w,h; another category list): refuse rather than train on it.
MAX_BAD_FRACTION = 0.05


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class ImageAnnotations:
    """One image's kept annotations: `boxes` [N,4] COCO x,y,w,h pixels (float32, clipped to
    the image), `category_ids` [N] COCO ids (int64), `iscrowd` [N] bool, `source_index` [N]
    each one's position in the file's annotation list."""

    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.category_ids)


@dataclass(frozen=True)
class ClassIndex:
    """COCO category ids ↔ contiguous class indices 0..K-1 (in ascending id order)."""

    coco_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.coco_ids)

    def to_contiguous(self, coco_id: int) -> int:
        return self._lookup[int(coco_id)]

    def to_coco(self, index: int) -> int:
        return self.coco_ids[int(index)]

    def contiguous_array(self, coco_ids: np.ndarray) -> np.ndarray:
        """Vectorized `to_contiguous` (int32)."""
        return np.array([self._lookup[int(c)] for c in coco_ids], dtype=np.int32)

    def coco_array(self, indices: np.ndarray) -> np.ndarray:
        """Vectorized `to_coco` (int64)."""
        return np.asarray(self.coco_ids, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]

    @property
    def _lookup(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.coco_ids)}


@dataclass
class CocoSet:
    """One split of a COCO-format folder, checked. `images[i]` goes with `annotations[i]`."""

    root: Path
    split: str
    annotation_path: Path
    images: list[ImageRecord]
    annotations: list[ImageAnnotations]
    categories: list[tuple[int, str]]
    class_index: ClassIndex
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.class_index.num_classes

    @property
    def num_boxes(self) -> int:
        return sum(len(a) for a in self.annotations)

    def ground_truth(self) -> dict[str, Any]:
        """The COCO instances document for evaluation (pycocotools): the file's own entries
        (every field kept, e.g. segmentation `area`, which decides COCO's size buckets),
        with the skipped annotations left out and kept boxes clipped as here."""
        doc = _read_json(self.annotation_path)
        raw = doc["annotations"]
        anns = []
        for ann in self.annotations:
            for i, box in zip(ann.source_index, ann.boxes, strict=True):
                entry = dict(raw[int(i)])
                entry["bbox"] = [float(v) for v in box]
                entry.setdefault("area", float(box[2] * box[3]))
                entry.setdefault("iscrowd", 0)
                entry.setdefault("id", int(i) + 1)
                anns.append(entry)
        return {**doc, "annotations": anns}

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        note = f", {skipped} annotations skipped ({_reasons(self.skipped)})" if skipped else ""
        return (
            f"{self.split}: {len(self.images)} images, {self.num_boxes} boxes, "
            f"{self.num_classes} classes{note}"
        )


def annotation_path(root: Path | str, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def annotation_digest(root: Path | str, split: str) -> str:
    """A digest of the split's annotation file's content (16 hex digits): what a training
    run records of its data, so it never continues on a set regenerated in place (a copy
    or a move of the same set has the same digest). Reading COCO's 450 MB train file takes
    about a second, once per train command."""
    path = annotation_path(root, split)
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def load_coco(root: Path | str, split: str, *, check_images: str = "header") -> CocoSet:
    """Read and check `ROOT/annotations/instances_{split}.json` and its images.

    check_images: "header" opens every image's header (format, size; no pixel decode),
    "exists" only checks that each file is there (for very large sets)."""
    if check_images not in ("header", "exists"):
        raise ValueError(f"check_images must be 'header' or 'exists', got {check_images!r}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist (make one with `mnasfpn data synth`)")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder")
    ann_path = annotation_path(root, split)
    if not ann_path.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        hint = f" (found: {', '.join(found)})" if found else " (no annotations/instances_*.json)"
        raise DataError(f"{root} has no annotation file annotations/{ann_path.name}{hint}")
    image_dir = root / split
    if not image_dir.is_dir():
        raise DataError(f"{root} has no image folder {split}/ next to annotations/")
    doc = _read_json(ann_path)

    categories = _categories(doc, ann_path)
    class_index = ClassIndex(
        coco_ids=tuple(c for c, _ in categories), names=tuple(n for _, n in categories)
    )
    images = _images(doc, ann_path, image_dir, root, check_images)
    if not images:
        raise DataError(f"{ann_path} lists no images")
    annotations, skipped, total = _annotations(doc, ann_path, images, set(class_index.coco_ids))
    bad = sum(skipped.values())
    if total == 0:
        raise DataError(f"{ann_path} lists no annotations; a detector needs labelled boxes")
    if total and bad > MAX_BAD_FRACTION * total:
        raise DataError(
            f"{ann_path}: {bad} of {total} annotations are unusable ({_reasons(skipped)}); "
            "boxes must be COCO [x, y, width, height] in pixels within the image, "
            "with category ids from the file's category list"
        )
    if bad:
        warnings.warn(
            f"{ann_path.name}: skipped {bad} of {total} annotations ({_reasons(skipped)})",
            DataWarning,
            stacklevel=2,
        )
    return CocoSet(
        root=root,
        split=split,
        annotation_path=ann_path,
        images=images,
        annotations=annotations,
        categories=categories,
        class_index=class_index,
        skipped=dict(skipped),
    )


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} is not a COCO annotation file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path} has no '{key}' list; is it a COCO instances file?")
    return doc


def _categories(doc: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    raw = doc["categories"]
    if not raw:
        raise DataError(f"{path} has an empty category list; a detector needs at least one class")
    out: dict[int, str] = {}
    for c in raw:
        try:
            cid, name = int(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: category entry {c!r} lacks an integer id and a name"
            ) from None
        if cid in out:
            raise DataError(f"{path}: category id {cid} appears twice in the category list")
        out[cid] = name
    return sorted(out.items())


def _image_path(entry_name: str, image_dir: Path, root: Path) -> Path:
    candidate = image_dir / entry_name  # absolute names stay absolute
    if not candidate.exists() and (root / entry_name).exists():
        candidate = root / entry_name  # file_name already includes the split folder
    return candidate


def _images(
    doc: dict[str, Any], path: Path, image_dir: Path, root: Path, check: str
) -> list[ImageRecord]:
    # Pillow (~40 ms): this module loads with `--help`, Pillow only when images are read
    from PIL import Image, UnidentifiedImageError

    records: list[ImageRecord] = []
    seen: set[int] = set()
    for entry in doc["images"]:
        try:
            iid, name = int(entry["id"]), str(entry["file_name"])
            width, height = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: image entry {entry!r} needs id, file_name, width and height"
            ) from None
        if iid in seen:
            raise DataError(f"{path}: image id {iid} appears twice")
        seen.add(iid)
        if width < 1 or height < 1:
            raise DataError(f"{path}: image {iid} ({name}) has size {width}x{height}")
        img_path = _image_path(name, image_dir, root)
        if not img_path.is_file():
            raise DataError(
                f"{path}: image {iid} points at {img_path}, which does not exist "
                f"(images go under {image_dir})"
            )
        if check == "header":
            try:
                with Image.open(img_path) as im:
                    size = im.size
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"image {img_path} is unreadable: {exc}") from None
            if size != (width, height):
                raise DataError(
                    f"{path}: image {iid} is {size[0]}x{size[1]} on disk but "
                    f"{width}x{height} in the annotations"
                )
        records.append(ImageRecord(id=iid, path=img_path, width=width, height=height))
    return records


def _annotations(
    doc: dict[str, Any], path: Path, images: list[ImageRecord], category_ids: set[int]
) -> tuple[list[ImageAnnotations], Counter[str], int]:
    by_id = {im.id: i for i, im in enumerate(images)}
    boxes: list[list[list[float]]] = [[] for _ in images]
    cats: list[list[int]] = [[] for _ in images]
    crowd: list[list[bool]] = [[] for _ in images]
    where: list[list[int]] = [[] for _ in images]
    skipped: Counter[str] = Counter()
    total = 0
    for position, ann in enumerate(doc["annotations"]):
        total += 1
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            skipped["malformed"] += 1
            continue
        i = by_id.get(iid)
        if i is None:
            skipped["unknown image id"] += 1
            continue
        if cid not in category_ids:
            skipped["unknown category"] += 1
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            skipped["zero area"] += 1
            continue
        im = images[i]
        tol = BOUNDS_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > im.width + tol or y + h > im.height + tol:
            skipped["out of bounds"] += 1
            continue
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(im.width)), min(y + h, float(im.height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            skipped["zero area"] += 1
            continue
        boxes[i].append([x0, y0, x1 - x0, y1 - y0])
        cats[i].append(cid)
        crowd[i].append(bool(ann.get("iscrowd", 0)))
        where[i].append(position)
    out = [
        ImageAnnotations(
            boxes=np.asarray(b, dtype=np.float32).reshape(-1, 4),
            category_ids=np.asarray(c, dtype=np.int64),
            iscrowd=np.asarray(k, dtype=bool),
            source_index=np.asarray(w, dtype=np.int64),
        )
        for b, c, k, w in zip(boxes, cats, crowd, where, strict=True)
    ]
    return out, skipped, total
