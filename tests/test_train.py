"""SSD pieces: anchors, box coding, matching, losses, schedule, COCO metrics, run files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners, num_anchors
from mnasfpn.train.coco_metrics import coco_metrics
from mnasfpn.train.run import HParams, RunError, RunInfo, load_run
from mnasfpn.train.schedule import Schedule, bn_momentum, default_lr, default_warmup
from train_fixtures import coco_ground_truth, shapes_set


@pytest.mark.parametrize("size", [64, 128, 192, 320, 640])
def test_anchor_count_is_nine_per_feature_cell(size: int) -> None:
    cells = sum((size // 2**level) ** 2 for level in (3, 4, 5, 6))
    assert num_anchors(size) == 9 * cells == len(anchor_centers_sizes(size))
    graph = build_opgraph(
        get_architecture("paper-mnasfpn", 1), DetectorConfig(input_size=size, num_classes=3)
    )
    box_out = graph.ops[graph.outputs[0]].out_shape
    assert box_out == (9 * cells, 4)  # the predictor emits one box per anchor


def test_anchor_order_follows_the_predictor_reshape() -> None:
    size = 128
    a = anchor_centers_sizes(size) * size
    # Level 3 first (stride 8): row-major cells, 9 anchors each, same centre.
    assert np.allclose(a[:9, :2], 4.0)
    assert np.allclose(a[9:18, :2], [4.0, 12.0])  # next cell is one column to the right
    assert np.allclose(a[16 * 9, :2], [12.0, 4.0])  # 16 cells per row → next row
    # Per cell: 3 octave scales × aspects (1, 2, 0.5); scale 3 × stride at the first.
    assert np.allclose(a[0, 2:], [24.0, 24.0])
    assert a[1, 3] / a[1, 2] == pytest.approx(2.0)  # aspect = width / height
    assert a[2, 3] / a[2, 2] == pytest.approx(0.5)
    assert a[3, 2] == pytest.approx(24.0 * 2 ** (1 / 3))
    # Level 4 starts after 16×16×9 anchors, with stride 16 and base 48.
    first4 = 16 * 16 * 9
    assert np.allclose(a[first4, :], [8.0, 8.0, 48.0, 48.0])
    corners = anchor_corners(size) * size
    assert np.allclose(corners[0], [-8.0, -8.0, 16.0, 16.0])


def test_schedule_warms_up_then_decays_at_80_and_93_percent() -> None:
    s = Schedule(peak_lr=1.0, total_steps=1000, warmup_steps=50)
    assert s(0) == pytest.approx(0.1)
    assert s(25) == pytest.approx(0.55)
    assert s(50) == s(799) == 1.0
    assert s(800) == pytest.approx(0.1)
    assert s(929) == pytest.approx(0.1)
    assert s(930) == pytest.approx(0.01)
    assert default_warmup(1000) == 50 and default_warmup(10**6) == 1000
    assert default_lr(64) == pytest.approx(0.4)
    assert bn_momentum(10**6) == pytest.approx(0.997) and bn_momentum(100) == pytest.approx(0.9)


def _gt() -> dict:
    return coco_ground_truth(shapes_set(6, 128, seed=3))


def test_ground_truth_as_detections_scores_map_one() -> None:
    gt = _gt()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"]]  # fmt: skip
    m = coco_metrics(gt, dets)
    assert m["mAP"] == pytest.approx(1.0)
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP75"] == pytest.approx(1.0)


def test_shifted_or_mislabelled_detections_score_less() -> None:
    gt = _gt()

    def shifted(frac: float) -> list[dict]:
        out = []
        for a in gt["annotations"]:
            x, y, w, h = a["bbox"]
            out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + frac * w, y + frac * h, w, h], "score": 1.0})  # fmt: skip
        return out

    small, large = coco_metrics(gt, shifted(0.1)), coco_metrics(gt, shifted(0.3))
    assert 0 < small["mAP"] < 1.0 and small["mAP50"] == pytest.approx(1.0)
    assert large["mAP"] < small["mAP"] and large["mAP50"] < 1.0
    wrong = [{**d, "category_id": 3 - d["category_id"]} for d in shifted(0.0)]
    assert coco_metrics(gt, wrong)["mAP"] == pytest.approx(0.0)
    assert coco_metrics(gt, [])["mAP"] == 0.0


def _info(**hp: object) -> RunInfo:
    hparams = HParams(**{"steps": 10, "batch_size": 2, "lr": 0.01, "warmup_steps": 1, **hp})
    return RunInfo(
        get_architecture("paper-mnasfpn", 1),
        DetectorConfig(64, 2, 0.35, 16),
        hparams,
        "scratch",
        "/data",
        [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    )


def test_run_file_round_trips_and_bad_folders_say_so(tmp_path: Path) -> None:
    info = _info(ema_decay=0.99)
    info.save(tmp_path)
    back = load_run(tmp_path)
    assert back.to_dict() == info.to_dict() and back.same_architecture(info)
    with pytest.raises(RunError, match="not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunError, match="not a training run folder"):
        load_run(tmp_path / "..")
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunError, match="unreadable"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text(
        json.dumps({**info.to_dict(), "detector": {"input_size": 65}})
    )
    with pytest.raises(RunError, match="multiple of 64"):
        load_run(tmp_path)


def test_detections_map_back_to_original_pixels() -> None:
    from mnasfpn.train.evaluate import detections_to_coco

    boxes = np.array([[[0.25, 0.5, 0.5, 1.0]]], np.float32)  # normalized to a 128 input
    # The original was 256 wide, 128 high → scale 0.5 input px per original px.
    out = detections_to_coco(boxes, np.array([[0.9]]), np.array([[1.0]]), np.array([1]),
                             np.array([7]), np.array([0.5]), 128, [11, 22])  # fmt: skip
    assert out == [{"image_id": 7, "category_id": 22, "bbox": [128.0, 64.0, 128.0, 64.0],
                    "score": pytest.approx(0.9)}]  # fmt: skip
    assert math.isclose(out[0]["bbox"][2], 128.0)


def test_faster_coco_engine_gives_pycocotools_figures() -> None:
    """The one-shot evaluator's engine (faster-coco-eval) against pycocotools, on random
    detections of every quality, many per image (as an untrained head makes them)."""
    gt = _gt()
    rng = np.random.default_rng(5)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(8):
            jitter = rng.normal(0, 0.25, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(v) for v in np.abs(np.array([x, y, w, h]) + jitter)],
                         "score": float(rng.uniform())})  # fmt: skip
    want, got = coco_metrics(gt, dets), coco_metrics(gt, dets, engine="faster")
    assert want.keys() == got.keys() and 0 < want["mAP"] < 1
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    with pytest.raises(ValueError, match="engine"):
        coco_metrics(gt, dets, engine="nope")
