"""A synthetic detection set in COCO format, so training and search run with no download.

Each image: a textured background (smooth colour fields, a faint periodic pattern, pixel
noise), a few distractors (irregular blobs, strokes, specks: things that are no class),
and 1..8 labelled objects. The classes are *shapes* (circle, square, triangle, ...); each
object's colour and fill are drawn independently of its class, so colour alone says
nothing and a detector has to see shape. Objects are rotated, range from ~3% to ~60% of the
image side (log-uniform: many small ones, which need fine feature levels, and large ones,
which need coarse ones), and may overlap and partly occlude each other. Image aspect ratios
vary (the longer side is `size`), which exercises resize-and-pad.

Deterministic: image i of a split depends only on (seed, split, i), whatever else is made.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.atomic import check_output_dir, write_atomic
from mnasfpn.data.coco import DataError, annotation_path

Polygon = list[np.ndarray]  # closed outlines in unit coordinates; the first is the outside


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(2 * points, -np.pi / 2)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array(
        [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
         [-1, a], [-1, -a], [-a, -a]], dtype=float,
    )  # fmt: skip


def _arrow() -> np.ndarray:
    return np.array(
        [[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3], [-1, 0.3]],
        dtype=float,
    )


def _ell() -> np.ndarray:
    return np.array([[-1, -1], [-0.3, -1], [-0.3, 0.4], [1, 0.4], [1, 1], [-1, 1]], dtype=float)


def _crescent() -> np.ndarray:
    t = np.linspace(-0.75 * np.pi, 0.75 * np.pi, 40)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([0.35 + 0.75 * np.cos(t[::-1]), 0.75 * np.sin(t[::-1])], axis=1)
    return np.concatenate([outer, inner])


# Name → outlines (outside first, then holes). Order fixes the class ids 1..K.
SHAPES: dict[str, Polygon] = {
    "circle": [_regular(48)],
    "square": [_regular(4, np.pi / 4) * np.sqrt(2) / 1.2],
    "triangle": [_regular(3, -np.pi / 2)],
    "star": [_star()],
    "cross": [_cross()],
    "ring": [_regular(48), _regular(48) * 0.55],
    "hexagon": [_regular(6)],
    "arrow": [_arrow()],
    "crescent": [_crescent()],
    "ell": [_ell()],
}
MAX_CLASSES = len(SHAPES)
SPLIT_CODES = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthSpec:
    """What `write_synthetic` makes; stored as `synth.json` beside the data."""

    train: int = 2000
    val: int = 500
    size: int = 320
    classes: int = 6
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 8
    min_object_frac: float = 0.03
    max_object_frac: float = 0.6

    def check(self) -> None:
        if not 1 <= self.classes <= MAX_CLASSES:
            raise DataError(
                f"--classes must be 1..{MAX_CLASSES} (one per shape), got {self.classes}"
            )
        if self.size < 32:
            raise DataError(f"--size must be at least 32 pixels, got {self.size}")
        if self.train < 0 or self.val < 0 or self.train + self.val == 0:
            raise DataError("--train and --val must be >= 0, and not both 0")


@dataclass
class SynthObject:
    category: int  # 1-based COCO category id
    bbox: tuple[float, float, float, float]  # x, y, w, h pixels


def categories(num_classes: int) -> list[dict[str, Any]]:
    names = list(SHAPES)[:num_classes]
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    code = SPLIT_CODES.get(split) or sum(split.encode())  # any other split name still works
    return np.random.default_rng([seed, code, index])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # Pillow (~40 ms): this module loads with `--help`, Pillow only when images are read
    from PIL import Image

    # Smooth colour field: a coarse random grid upsampled bicubically.
    gh, gw = rng.integers(2, 6, size=2)
    grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32)
    field = 0.5 * field + 0.5 * rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:  # checkerboard
        period = rng.uniform(8, 48)
        wave = np.sign(np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period))
    else:  # blotchy mid-frequency noise
        coarse = rng.normal(size=(max(h // 12, 2), max(w // 12, 2))).astype(np.float32)
        img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        wave = np.clip(np.asarray(img, dtype=np.float32), -2, 2) / 2
    field += wave[..., None] * rng.uniform(5, 30) * rng.choice([-1, 1], size=3)
    field += rng.normal(0, rng.uniform(2, 10), size=field.shape)
    return np.clip(field, 0, 255)


def _transform(outline: np.ndarray, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = outline @ np.array([[c, s], [-s, c]])
    return rot * r + np.array([cx, cy])


def _fill(rng: np.random.Generator, h: int, w: int, avoid: np.ndarray) -> np.ndarray:
    """A colour (or a two-colour pattern) that stands out from the local background."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - avoid).sum() > 150:
            break
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if rng.random() < 0.3:  # patterned fill: shape, not texture, must decide the class
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period, angle = rng.uniform(4, 14), rng.uniform(0, np.pi)
        mask = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        fill = np.where(mask[..., None], fill, fill * 0.55)
    return fill + rng.normal(0, 4, size=fill.shape)


def _paint(
    canvas: np.ndarray, outlines: list[np.ndarray], rng: np.random.Generator
) -> tuple[float, float, float, float] | None:
    """Fill the polygon (outside minus holes) on `canvas`; return its clipped x,y,w,h box."""
    # Pillow (~40 ms): this module loads with `--help`, Pillow only when images are read
    from PIL import Image, ImageDraw

    h, w = canvas.shape[:2]
    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask_img)
    draw.polygon([tuple(p) for p in outlines[0]], fill=255)
    for hole in outlines[1:]:
        draw.polygon([tuple(p) for p in hole], fill=0)
    mask = np.asarray(mask_img, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    local = canvas[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    fill = _fill(rng, h, w, local)
    canvas[:] = canvas * (1 - mask[..., None]) + fill * mask[..., None]
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _iou_xywh(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    """(intersection / area of a, intersection / area of b)."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3]), inter / (b[2] * b[3])


def _distractors(canvas: np.ndarray, rng: np.random.Generator) -> None:
    # Pillow (~40 ms): this module loads with `--help`, Pillow only when images are read
    from PIL import Image, ImageDraw

    h, w = canvas.shape[:2]
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    side = max(h, w)
    for _ in range(rng.integers(0, 7)):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(0, 3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:  # irregular blob: a polygon with random radii (no class has this)
            n = int(rng.integers(7, 14))
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = side * rng.uniform(0.02, 0.15) * rng.uniform(0.4, 1.0, n)
            pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
            draw.polygon([tuple(p) for p in pts], fill=colour)
        elif kind == 1:  # stroke
            n = int(rng.integers(2, 5))
            pts = np.cumsum(rng.normal(0, side * 0.1, size=(n, 2)), axis=0) + np.array([cx, cy])
            draw.line([tuple(p) for p in pts], fill=colour, width=int(rng.integers(1, 5)))
        else:  # specks
            for _ in range(rng.integers(5, 30)):
                x, y = rng.uniform(0, w), rng.uniform(0, h)
                s = rng.uniform(1, 3)
                draw.ellipse([x - s, y - s, x + s, y + s], fill=colour)
    canvas[:] = np.asarray(img, dtype=np.float32)


def render_image(spec: SynthSpec, split: str, index: int) -> tuple[np.ndarray, list[SynthObject]]:
    """Image `index` of `split`: uint8 [H, W, 3] and its labelled objects."""
    rng = image_rng(spec.seed, split, index)
    long_side, short_side = spec.size, round(spec.size * rng.uniform(0.6, 1.0))
    h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _background(rng, h, w)
    _distractors(canvas, rng)
    names = list(SHAPES)[: spec.classes]
    objects: list[SynthObject] = []
    lo, hi = np.log(spec.min_object_frac * spec.size), np.log(spec.max_object_frac * spec.size)
    for _ in range(rng.integers(spec.min_objects, spec.max_objects + 1)):
        for _attempt in range(10):
            cat = int(rng.integers(0, len(names)))
            diameter = float(np.exp(rng.uniform(lo, hi)))
            r = diameter / 2
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            angle = rng.uniform(0, 2 * np.pi)
            outlines = [_transform(o, cx, cy, r, angle) for o in SHAPES[names[cat]]]
            xs, ys = outlines[0][:, 0], outlines[0][:, 1]
            est = (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())
            # The new object is drawn on top: it may hide at most half of any earlier one.
            if all(_iou_xywh(o.bbox, est)[0] < 0.5 for o in objects):
                box = _paint(canvas, outlines, rng)
                if box is not None and box[2] >= 2 and box[3] >= 2:
                    objects.append(SynthObject(category=cat + 1, bbox=box))
                break
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def check_target(out: Path | str, force: bool) -> None:
    """Refuse a file, or a non-empty folder without `force`."""
    out = Path(out)
    check_output_dir(out)  # a file, or a folder under a file: one line naming it
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out} is not empty; choose another --out or pass --force")


def _prepare(out: Path, force: bool, splits: list[str]) -> None:
    check_target(out, force)
    if out.exists():
        for split in splits:  # only what this command writes; anything else stays
            annotation_path(out, split).unlink(missing_ok=True)
            if (out / split).is_symlink():  # a `data split` link: the link, not its target
                (out / split).unlink()
            elif (out / split).exists():
                shutil.rmtree(out / split)
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic(
    out: Path | str,
    spec: SynthSpec,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write `spec`'s images and COCO annotations under `out`; return boxes per split.
    The annotation files are written last, so an interrupted run leaves no usable-looking
    half set. `progress(n)` is called after every n images."""
    # Pillow (~40 ms): this module loads with `--help`, Pillow only when images are read
    from PIL import Image

    spec.check()
    out = Path(out)
    splits = [(s, n) for s, n in (("train", spec.train), ("val", spec.val)) if n > 0]
    _prepare(out, force, [s for s, _ in splits])
    cats = categories(spec.classes)
    counts: dict[str, int] = {}
    for split, n in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            pixels, objects = render_image(spec, split, i)
            name = f"{i:06d}.jpg"
            Image.fromarray(pixels).save(out / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": pixels.shape[1],
                           "height": pixels.shape[0]})  # fmt: skip
            for obj in objects:
                x, y, w, h = obj.bbox
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": obj.category,
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            if progress:
                progress(1)
        doc = {
            "info": {"description": "mnasfpn synthetic shapes", "spec": asdict(spec)},
            "images": images,
            "annotations": anns,
            "categories": cats,
        }
        write_atomic(annotation_path(out, split), json.dumps(doc))
        counts[split] = len(anns)
    write_atomic(out / "synth.json", json.dumps(asdict(spec), indent=2) + "\n")
    return counts
