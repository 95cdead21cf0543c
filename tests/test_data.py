"""COCO reader, synthetic set, split helper and tf.data pipeline (mnasfpn.data)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mnasfpn.cli import main
from mnasfpn.data import DataError, DataWarning, SynthSpec, load_coco, split_coco, write_synthetic
from mnasfpn.data.synth import render_image

TINY = SynthSpec(train=12, val=6, size=96, classes=4, seed=3)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, TINY, force=True)
    return out


def _write_set(
    root: Path,
    images: list[dict[str, Any]],
    anns: list[dict[str, Any]],
    categories: list[dict[str, Any]] | None = None,
    split: str = "train",
) -> Path:
    """A hand-made COCO folder: images given as {id, size: (w, h), rects: [(x,y,w,h)]}
    are drawn as white rectangles on black (lossless PNG)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for im in images:
        w, h = im["size"]
        px = np.zeros((h, w, 3), np.uint8)
        for x, y, rw, rh in im.get("rects", []):
            px[y : y + rh, x : x + rw] = 255
        name = f"{im['id']}.png"
        Image.fromarray(px).save(root / split / name)
        entries.append({"id": im["id"], "file_name": name, "width": w, "height": h})
    doc = {
        "images": entries,
        "annotations": anns,
        "categories": categories if categories is not None else [{"id": 7, "name": "box"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def _ann(i: int, image_id: int, bbox: list[float], cat: int = 7, crowd: int = 0) -> dict[str, Any]:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


# ---- synthetic set and reader ---------------------------------------------------------


def test_synth_round_trip(synth_dir: Path) -> None:
    doc = json.loads((synth_dir / "annotations" / "instances_train.json").read_text())
    coco = load_coco(synth_dir, "train")
    assert len(coco.images) == TINY.train and coco.num_boxes == len(doc["annotations"])
    assert coco.skipped == {}
    assert [n for _, n in coco.categories] == ["circle", "square", "triangle", "star"]
    assert coco.class_index.num_classes == 4
    for cid, _ in coco.categories:
        assert coco.class_index.to_coco(coco.class_index.to_contiguous(cid)) == cid
    for im, ann in zip(coco.images, coco.annotations, strict=True):
        assert im.path.is_file() and max(im.width, im.height) == TINY.size
        assert Image.open(im.path).size == (im.width, im.height)
        b = ann.boxes
        assert (b[:, 2:] > 0).all() and (b[:, 0] + b[:, 2] <= im.width).all()
        assert (b[:, 1] + b[:, 3] <= im.height).all()
    # Several objects per image, small and large ones.
    sides = np.concatenate([np.maximum(a.boxes[:, 2], a.boxes[:, 3]) for a in coco.annotations])
    assert coco.num_boxes > 2 * len(coco.images)
    assert sides.min() < 0.1 * TINY.size < 0.35 * TINY.size < sides.max()
    assert len(load_coco(synth_dir, "val").images) == TINY.val


def test_synth_deterministic(tmp_path: Path) -> None:
    spec = SynthSpec(train=3, val=2, size=64, classes=3, seed=11)
    write_synthetic(tmp_path / "a", spec)
    write_synthetic(tmp_path / "b", spec)
    write_synthetic(tmp_path / "c", SynthSpec(train=3, val=2, size=64, classes=3, seed=12))
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 3 + 2 + 2 + 1
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ann = Path("annotations/instances_train.json")
    assert (tmp_path / "a" / ann).read_bytes() != (tmp_path / "c" / ann).read_bytes()
    # Image i does not depend on how many images the split has.
    px, objs = render_image(SynthSpec(train=50, size=64, classes=3, seed=11), "train", 2)
    px2, objs2 = render_image(spec, "train", 2)
    assert np.array_equal(px, px2) and objs == objs2


def test_synth_class_is_shape_not_colour() -> None:
    """Mean object colour must not predict the class: per-class mean colours stay close."""
    spec = SynthSpec(train=60, size=96, classes=3, seed=5)
    colours: dict[int, list[np.ndarray]] = {1: [], 2: [], 3: []}
    for i in range(60):
        px, objs = render_image(spec, "train", i)
        for o in objs:
            x, y, w, h = (int(v) for v in o.bbox)
            cx, cy = x + w // 2, y + h // 2
            colours[o.category].append(px[cy, cx].astype(float))
    means = np.array([np.mean(c, axis=0) for c in colours.values()])
    spread = np.mean([np.std(c, axis=0).mean() for c in colours.values()])
    assert np.abs(means[:, None] - means[None]).max() < spread


def test_synth_cli_refuses_nonempty_and_force(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "64"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    (out / "notes.txt").write_text("keep me")
    res = runner.invoke(main, [*args[:4], "--train", "3", "--val", "1", "--size", "64", "--force"])
    assert res.exit_code == 0, res.output
    assert len(load_coco(out, "train").images) == 3 and (out / "notes.txt").exists()
    res = runner.invoke(main, ["data", "synth", "--out", str(tmp_path / "t"), "--classes", "11"])
    assert res.exit_code == 1 and "--classes" in res.output


# ---- bad input ----------------------------------------------------------------------------


def _one_image(tmp_path: Path, anns: list[dict[str, Any]], **kw: Any) -> Path:
    return _write_set(
        tmp_path, [{"id": 1, "size": (40, 30), "rects": [(5, 5, 10, 10)]}], anns, **kw
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: p, "no annotation file"),
        (lambda p: (p / "annotations").mkdir() or p, "no annotation file"),
        (lambda p: _one_image(p, [_ann(1, 1, [5, 5, 10, 10])], categories=[]), "empty category"),
        (
            lambda p: _one_image(
                p,
                [],
            ),
            "lists no annotations",
        ),
        (
            lambda p: _one_image(
                p,
                [_ann(1, 1, [5, 5, 10, 10])],
                categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}],
            ),
            "appears twice",
        ),
        (lambda p: _one_image(p, [_ann(1, 1, [30, 5, 40, 10])]), "out of bounds"),
        (lambda p: _one_image(p, [_ann(1, 1, [5, 5, 0, 10])]), "zero area"),
        (lambda p: _one_image(p, [_ann(1, 1, [5, 5, 10, 10], cat=3)]), "unknown category"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path: Path, make: Any, message: str) -> None:
    root = make(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        load_coco(root, "train")
    assert "\n" not in str(err.value)


def test_missing_and_unreadable_images(tmp_path: Path) -> None:
    root = _one_image(tmp_path, [_ann(1, 1, [5, 5, 10, 10])])
    (root / "train" / "1.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="unreadable"):
        load_coco(root, "train")
    (root / "train" / "1.png").unlink()
    with pytest.raises(DataError, match="does not exist"):
        load_coco(root, "train")
    Image.new("RGB", (41, 30)).save(root / "train" / "1.png")
    with pytest.raises(DataError, match="41x30 on disk"):
        load_coco(root, "train")
    (root / "annotations" / "instances_train.json").write_text("{bad json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(root, "train")


def test_bad_single_annotations_skipped_with_count(tmp_path: Path) -> None:
    good = [_ann(i, 1, [5, 5, 10, 10]) for i in range(40)]
    bad = [_ann(100, 1, [5, 5, 0, 3]), _ann(101, 1, [35, 5, 30, 4])]
    root = _one_image(tmp_path, good + bad + [_ann(102, 1, [39.5, 0, 1.5, 30])])
    with pytest.warns(DataWarning, match="skipped 2 of 43"):
        coco = load_coco(root, "train")
    assert coco.skipped == {"zero area": 1, "out of bounds": 1}
    assert len(coco.annotations[0]) == 41
    gt = coco.ground_truth()  # what COCO eval reads: the kept annotations, clipped
    assert [a["id"] for a in gt["annotations"]] == [*range(40), 102]
    assert gt["annotations"][-1]["bbox"] == pytest.approx([39.5, 0, 0.5, 30])
    # Within the tolerance a box is clipped to the image, not dropped.
    assert coco.annotations[0].boxes[-1].tolist() == pytest.approx([39.5, 0, 0.5, 30])


# ---- split --------------------------------------------------------------------------------


def test_split_disjoint_complete_deterministic(synth_dir: Path, tmp_path: Path) -> None:
    a = split_coco(synth_dir, "train", tmp_path / "a", val_count=4, seed=1)
    split_coco(synth_dir, "train", tmp_path / "b", val_count=4, seed=1)
    split_coco(synth_dir, "train", tmp_path / "c", val_fraction=0.34, seed=2)
    assert a == {"train": TINY.train - 4, "val": 4}
    tr, va = load_coco(tmp_path / "a", "train"), load_coco(tmp_path / "a", "val")
    ids_tr, ids_va = {i.id for i in tr.images}, {i.id for i in va.images}
    assert not ids_tr & ids_va and len(ids_tr | ids_va) == TINY.train
    assert tr.num_boxes + va.num_boxes == load_coco(synth_dir, "train").num_boxes
    assert {i.id for i in load_coco(tmp_path / "b", "val").images} == ids_va
    assert {i.id for i in load_coco(tmp_path / "c", "val").images} != ids_va
    with pytest.raises(DataError, match="--force"):
        split_coco(synth_dir, "train", tmp_path / "a", val_count=4, seed=1)
    with pytest.raises(DataError, match="count must be"):
        split_coco(synth_dir, "train", tmp_path / "d", val_count=TINY.train)


# ---- pipeline -----------------------------------------------------------------------------


def _batches(ds: Any, n: int | None = None) -> list[dict[str, np.ndarray]]:
    out = []
    for i, b in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append({k: v.numpy() for k, v in b.items()})
    return out


def test_pipeline_shapes_ranges_determinism(synth_dir: Path) -> None:
    from mnasfpn.data import make_dataset

    coco = load_coco(synth_dir, "train")
    train = _batches(make_dataset(coco, 64, 4, training=True, seed=7, max_boxes=12), 4)
    again = _batches(make_dataset(coco, 64, 4, training=True, seed=7, max_boxes=12), 4)
    other = _batches(make_dataset(coco, 64, 4, training=True, seed=8, max_boxes=12), 4)
    for b, b2 in zip(train, again, strict=True):
        assert all(np.array_equal(b[k], b2[k]) for k in b)
    assert not all(
        np.array_equal(b["image"], o["image"]) for b, o in zip(train, other, strict=True)
    )
    for b in train:
        assert b["image"].shape == (4, 64, 64, 3) and b["image"].dtype == np.float32
        assert b["boxes"].shape == (4, 12, 4) and b["classes"].shape == (4, 12)
        assert b["classes"].dtype == np.int32 and b["num_boxes"].dtype == np.int32
        assert b["image_id"].dtype == np.int64 and b["scale"].dtype == np.float32
        assert b["image"].min() >= 0 and b["image"].max() <= 255
        for i, n in enumerate(b["num_boxes"]):
            assert (b["classes"][i, :n] >= 0).all() and (b["classes"][i, n:] == -1).all()
            assert (b["classes"][i, :n] < 4).all() and (b["boxes"][i, n:] == 0).all()
            boxes = b["boxes"][i, :n]
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # Repeats without end: more batches than one epoch holds.
    assert len(_batches(make_dataset(coco, 64, 4, training=True), 10)) == 10


def test_pipeline_eval_exact_and_maps_back(synth_dir: Path) -> None:
    from mnasfpn.data import make_dataset

    coco = load_coco(synth_dir, "val")
    batches = _batches(make_dataset(coco, 64, 4, training=False))
    assert [len(b["image_id"]) for b in batches] == [4, 2]
    by_id = {im.id: (im, ann) for im, ann in zip(coco.images, coco.annotations, strict=True)}
    assert [i for b in batches for i in b["image_id"]] == [im.id for im in coco.images]
    for b in batches:
        for i, image_id in enumerate(b["image_id"]):
            im, ann = by_id[int(image_id)]
            scale = b["scale"][i]
            assert scale == pytest.approx(64 / max(im.width, im.height))
            n = b["num_boxes"][i]
            assert n == len(ann)
            yxyx = b["boxes"][i, :n] * 64 / scale  # back to original pixels
            xywh = np.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3] - yxyx[:, 1],
                             yxyx[:, 2] - yxyx[:, 0]], 1)  # fmt: skip
            np.testing.assert_allclose(xywh, ann.boxes, atol=0.05)
            # Padding (bottom / right) is black.
            h, w = round(im.height * scale), round(im.width * scale)
            assert (
                b["image"][i, h:].max(initial=0) == 0 and b["image"][i, :, w:].max(initial=0) == 0
            )


def test_augmentation_moves_boxes_with_pixels(tmp_path: Path) -> None:
    """White rectangles on black: after flip / scale / crop, each box still frames white."""
    from mnasfpn.data import make_dataset

    rects = [(3, 4, 20, 12), (40, 30, 14, 22), (60, 2, 16, 16)]
    images = [{"id": k + 1, "size": (80, 56), "rects": [rects[k % 3]]} for k in range(6)]
    anns = [_ann(k + 1, k + 1, list(map(float, rects[k % 3]))) for k in range(6)]
    root = _write_set(tmp_path, images, anns)
    coco = load_coco(root, "train")
    S = 64
    for b in _batches(make_dataset(coco, S, 6, training=True, seed=0), 6):
        for i in range(6):
            white = b["image"][i].min(axis=-1) > 200
            n = b["num_boxes"][i]
            if n == 0:
                assert white.sum() < 0.7 * 240  # dropped only when mostly cut away
                continue
            ys, xs = np.nonzero(white)
            y0, x0, y1, x1 = b["boxes"][i, 0] * S
            assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
            assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5


def test_flip_mirrors_half_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mnasfpn.data import make_dataset, pipeline

    monkeypatch.setattr(pipeline, "SCALE_JITTER", (1.0, 1.0))  # flip only, no crop
    rect = (3, 4, 20, 12)
    root = _write_set(tmp_path, [{"id": 1, "size": (80, 56), "rects": [rect]}],
                      [_ann(1, 1, list(map(float, rect)))])  # fmt: skip
    S, scale = 64, 64 / 80
    plain = np.array([4, 3, 16, 23]) * scale / S  # yxyx normalized, as stored
    mirrored = np.array([4, 80 - 23, 16, 80 - 3]) * scale / S
    seen = []
    for b in _batches(make_dataset(load_coco(root, "train"), S, 1, training=True), 40):
        box = b["boxes"][0, 0]
        seen.append(np.allclose(box, mirrored, atol=1e-5))
        assert seen[-1] or np.allclose(box, plain, atol=1e-5)
        white = np.nonzero(b["image"][0].min(axis=-1) > 200)[1]
        assert abs(white.min() - box[1] * S) <= 1 and abs(white.max() + 1 - box[3] * S) <= 1
    assert 8 < sum(seen) < 32


def test_split_and_pipeline_reject_bad_arguments(synth_dir: Path) -> None:
    from mnasfpn.data import make_dataset

    coco = load_coco(synth_dir, "val")
    with pytest.raises(DataError, match="fewer than one batch"):
        make_dataset(coco, 64, 100, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_coco(synth_dir, "val")  # a clean set warns about nothing
