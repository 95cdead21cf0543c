"""SSD pieces that run TensorFlow: box coding, matching, loss, backbone weights, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners

tf = pytest.importorskip("tensorflow")

from mnasfpn.train import boxes  # noqa: E402


def test_encode_decode_round_trip() -> None:
    rng = np.random.default_rng(0)
    anchors = tf.constant(anchor_centers_sizes(128))
    n = anchors.shape[0]
    ymin, xmin = rng.uniform(0, 0.7, (2, 3, n))
    h, w = rng.uniform(0.01, 0.3, (2, 3, n))
    gt = tf.constant(np.stack([ymin, xmin, ymin + h, xmin + w], -1), tf.float32)
    codes = boxes.encode(gt, anchors)
    assert np.allclose(boxes.decode(codes, anchors).numpy(), gt.numpy(), atol=1e-5)
    # An anchor encodes to zeros against itself.
    assert np.allclose(boxes.encode(tf.constant(anchor_corners(128)), anchors).numpy(), 0,
                       atol=1e-4)  # fmt: skip


def test_matching_iou_threshold_force_match_and_padding() -> None:
    corners = anchor_corners(128)
    exact = corners[100]  # a box equal to an anchor
    tiny = np.array([0.5, 0.5, 0.51, 0.51], np.float32)  # overlaps no anchor by 0.5
    gt = np.zeros((1, 4, 4), np.float32)
    gt[0, 0], gt[0, 1] = exact, tiny
    classes = np.array([[0, 1, -1, -1]], np.int32)
    matched, _ = boxes.match(tf.constant(corners), tf.constant(gt), tf.constant(classes))
    matched = matched.numpy()[0]
    assert matched[100] == 0
    assert (matched == 1).sum() == 1  # the tiny box still gets its best anchor
    assert not np.isin(matched, [2, 3]).any()  # padding boxes match nothing
    ious = boxes.pairwise_iou(tf.constant(corners), tf.constant(gt[0, :1])).numpy()[:, 0]
    assert set(np.flatnonzero(matched == 0)) == set(np.flatnonzero(ious >= 0.5))


def test_focal_loss_matches_its_formula_and_normalizes_by_matches() -> None:
    logits = np.array([[[2.0, -1.0], [0.0, 3.0]]], np.float32)
    onehot = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    p = 1 / (1 + np.exp(-logits))
    pt = np.where(onehot == 1, p, 1 - p)
    at = np.where(onehot == 1, 0.25, 0.75)
    want = (-at * (1 - pt) ** 2 * np.log(pt)).sum()
    got = boxes.focal_loss(tf.constant(logits), tf.constant(onehot)).numpy()
    assert got[0] == pytest.approx(want, rel=1e-5)
    codes = tf.constant([[[1.5, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]]])
    cls, box, matched = boxes.ssd_loss(
        codes,
        tf.constant(logits),
        tf.zeros_like(codes),
        tf.constant(onehot),
        tf.constant([[True, False]]),
    )
    assert matched.numpy() == 1
    assert box.numpy() == pytest.approx(1.5 - 0.5)  # smooth-L1 past delta 1, positive only
    assert cls.numpy() == pytest.approx(want, rel=1e-5)


def test_detector_trains_with_a_free_batch_and_exports_batch_one() -> None:
    from mnasfpn.train.detector import build_detector

    det = DetectorConfig(input_size=64, num_classes=3, alpha=0.35, depth=16)
    g = get_architecture("paper-mnasfpn", 1)
    model = build_detector(g, det, batch_size=None)
    codes, logits = model(tf.zeros((3, 64, 64, 3)))
    assert codes.shape == (3, 9 * 85, 4) and logits.shape == (3, 9 * 85, 3)
    one = build_detector(g, det, batch_size=1)
    assert one.inputs[0].shape[0] == 1
    assert [w.shape for w in one.weights] == [w.shape for w in model.weights]


def test_backbone_weights_from_a_keras_mobilenetv2_file(tmp_path: Path) -> None:
    import keras

    from mnasfpn.train.backbone_weights import BackboneWeightsError, load_backbone_weights
    from mnasfpn.train.detector import build_detector

    size, alpha = 64, 0.35
    ref = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                         include_top=False, weights=None)  # fmt: skip
    # Random non-trivial BN statistics, so a swapped mean/variance would show.
    for layer in ref.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([g, b, rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2, v.shape)])
    path = tmp_path / "mobilenet_v2.weights.h5"
    ref.save_weights(str(path))
    det = DetectorConfig(input_size=size, num_classes=2, alpha=alpha, depth=16)
    model = build_detector(get_architecture("paper-mnasfpn", 1), det, seed=5)
    assert load_backbone_weights(model, path, alpha=alpha, input_size=size) == 1 + 2 + 16 * 3
    x = np.random.default_rng(1).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    want = keras.Model(ref.input, ref.get_layer("block_16_project_BN").output)(x)
    got = keras.Model(model.input, model.get_layer("backbone_block16_project").output)(x)
    assert np.allclose(got, want, atol=1e-4)
    # The Keras 2 layout of the published ImageNet files (…_no_top.h5) loads too.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    legacy = tmp_path / "mobilenet_v2_no_top.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    for v in model.weights:  # forget the first load
        v.assign(np.zeros(v.shape, v.dtype))
    load_backbone_weights(model, legacy, alpha=alpha, input_size=size)
    got = keras.Model(model.input, model.get_layer("backbone_block16_project").output)(x)
    assert np.allclose(got, want, atol=1e-4)
    with pytest.raises(BackboneWeightsError, match="alpha"):
        load_backbone_weights(model, path, alpha=1.0, input_size=size)
    bad = tmp_path / "x.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(BackboneWeightsError, match="not a Keras MobileNetV2"):
        load_backbone_weights(model, bad, alpha=alpha, input_size=size)


def test_checkpoint_keeps_the_data_position_or_says_it_cannot(tmp_path: Path) -> None:
    from mnasfpn.train.checkpoint import read_latest, restore_checkpoint, save_checkpoint

    v = tf.Variable(1.0)
    it = iter(tf.data.Dataset.range(10).shuffle(10, seed=1))
    seen = [int(next(it)) for _ in range(3)]
    assert save_checkpoint(tmp_path / "a", 3, {"v": v}, it) is True
    rest = [int(x) for x in it]
    again = iter(tf.data.Dataset.range(10).shuffle(10, seed=1))
    v.assign(5.0)
    restore_checkpoint(tmp_path / "a", read_latest(tmp_path / "a"), {"v": v}, again)
    assert float(v) == 1.0 and [int(x) for x in again] == rest and len(seen + rest) == 10
    # A Python function in the pipeline makes the iterator unsaveable: the checkpoint says
    # so, and the trainer replays the position (same seed, skipping the batches used).
    py = tf.data.Dataset.range(4).map(lambda x: tf.py_function(lambda y: y, [x], tf.int64))
    it = iter(py)
    next(it)
    assert save_checkpoint(tmp_path / "b", 1, {"v": v}, it) is False
    assert read_latest(tmp_path / "b").data_state is False
    for step in (2, 3, 4):
        save_checkpoint(tmp_path / "b", step, {"v": v}, None)
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("ckpt-*"))
    assert kept == ["ckpt-3", "ckpt-4"] and read_latest(tmp_path / "b").step == 4
