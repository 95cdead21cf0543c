"""Run a trained detector on image files and draw its detections (after NMS) as PNGs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.tfenv import load_tensorflow
from mnasfpn.train.detector import build_detector, restore_weights
from mnasfpn.train.evaluate import NmsConfig, detections_to_coco, make_predict_fn
from mnasfpn.train.run import RunInfo

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324")  # fmt: skip


class ImageError(MnasfpnError):
    """An input image that cannot be read."""


def load_image(path: Path) -> Any:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def check_image(path: Path) -> None:
    """A one-line `ImageError` for a file that is not an image Pillow reads (its header
    and structure are checked, the pixels are not decoded): before any model loads."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def output_names(images: list[Path], out_dir: Path) -> list[Path]:
    """The PNG each image is drawn into: its stem + .png; two inputs with one name
    (a/x.jpg, b/x.jpg) keep both outputs (x.png, x_.png)."""
    used: set[str] = set()
    names = []
    for path in images:
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        names.append(out_dir / f"{stem}.png")
    return names


def letterbox(image: Any, size: int) -> tuple[np.ndarray, float]:
    """Aspect-preserving resize so the longer side is `size`, padded bottom/right with 0
    (as the dataset pipeline does); returns the input array and input px per original px."""
    w, h = image.size
    scale = size / max(w, h)
    resized = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                           Image.Resampling.BILINEAR)  # fmt: skip
    canvas = np.zeros((size, size, 3), np.float32)
    arr = np.asarray(resized, dtype=np.float32)
    canvas[: arr.shape[0], : arr.shape[1]] = arr
    return canvas, scale


def draw(image: Any, detections: list[tuple[list[float], str, float, int]]) -> Any:
    """Boxes [x, y, w, h] (original pixels) with 'name score' labels."""
    out = image.copy()
    pen = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 250))
    for (x, y, w, h), name, score, cls in detections:
        color = PALETTE[cls % len(PALETTE)]
        pen.rectangle([x, y, x + w, y + h], outline=color, width=width)
        label = f"{name} {score:.2f}"
        left, top, right, bottom = pen.textbbox((x, y), label)
        ty = max(0.0, y - (bottom - top) - 2)
        pen.rectangle([x, ty, x + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
        pen.text((x + 2, ty), label, fill="white")
    return out


def detect_images(
    info: RunInfo,
    run_dir: Path,
    images: list[Path],
    targets: list[Path],
    min_score: float,
    *,
    replace: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Iterator[tuple[Path, Path, int]]:
    """Yields (image, written PNG, detections drawn) per image; each PNG is written
    atomically to its target (`output_names`), never over an existing file unless
    `replace`."""
    tf = load_tensorflow()

    size = info.detector.input_size
    model = build_detector(info.genotype, info.detector, batch_size=None)
    restore_weights(model, run_dir, echo=echo)
    predict = make_predict_fn(model, size, NmsConfig(score_threshold=min_score))
    names = [c["name"] for c in info.categories]
    for path, dst in zip(images, targets, strict=True):
        image = load_image(path)
        arr, scale = letterbox(image, size)
        boxes, scores, classes, counts = (t.numpy() for t in predict(tf.constant(arr[None])))
        coco = detections_to_coco(boxes, scores, classes, counts, [0], [scale], size,
                                  list(range(len(names))))  # fmt: skip
        drawn = [(d["bbox"], names[d["category_id"]], d["score"], d["category_id"]) for d in coco]
        png = io.BytesIO()
        draw(image, drawn).save(png, format="PNG")
        write_atomic(dst, png.getvalue(), replace=replace)
        yield path, dst, len(drawn)
