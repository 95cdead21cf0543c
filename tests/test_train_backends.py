"""The SSD target assignment and loss (mnasfpn.train.boxes, in keras.ops) against an
independent numpy reference, on TensorFlow's backend here and on JAX's in a subprocess
(where jax is installed); the JAX training step of benchmarks/train_throughput.py against
the TensorFlow trainer's step from the same weights (slow)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 64, 5
needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed (mnasfpn[jax])"
)


def _iou(box: np.ndarray) -> np.ndarray:
    """IoU of one corner box with every anchor, in float64."""
    corners = anchor_corners(SIZE).astype(np.float64)
    y0, x0, y1, x1 = box
    ih = np.clip(np.minimum(corners[:, 2], y1) - np.maximum(corners[:, 0], y0), 0, None)
    iw = np.clip(np.minimum(corners[:, 3], x1) - np.maximum(corners[:, 1], x0), 0, None)
    inter = ih * iw
    area = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    return inter / ((y1 - y0) * (x1 - x0) + area - inter)


def _box(rng: np.random.Generator, h: tuple[float, float], w: tuple[float, float],
         best: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:  # fmt: skip
    """A random box whose best anchor stands clear of the next best (a box inside, or
    around, two anchors of equal area has equal IoU with both: rounding, not the rule,
    would pick one) and whose best IoU lies in `best`."""
    while True:
        hw = np.array([rng.uniform(*h), rng.uniform(*w)])
        yx = rng.uniform(0, 1 - hw)
        box = np.concatenate([yx, yx + hw]).astype(np.float32)
        top2 = np.sort(_iou(box.astype(np.float64)))[-2:]
        if top2[1] - top2[0] > 1e-3 and best[0] <= top2[1] < best[1]:
            return box


def _inputs() -> dict[str, np.ndarray]:
    """Three images: random boxes, a box equal to an anchor, a duplicate pair (the later
    box wins the anchor both claim, the earlier one the other anchors over IoU 0.5), a
    thin box that reaches IoU 0.5 with no anchor, and padding (class -1)."""
    rng = np.random.default_rng(7)
    b, m, a = 3, 6, len(anchor_corners(SIZE))
    boxes = np.zeros((b, m, 4), np.float32)
    for i, j in np.ndindex(b, m):
        boxes[i, j] = _box(rng, (0.1, 0.6), (0.1, 0.6))
    classes = rng.integers(0, CLASSES, (b, m)).astype(np.int32)
    boxes[0, 1] = anchor_corners(SIZE)[40]
    boxes[0, 2] = boxes[0, 3] = _box(rng, (0.3, 0.6), (0.3, 0.6), best=(0.55, 0.9))
    boxes[1, 0] = _box(rng, (0.01, 0.03), (0.3, 0.6), best=(0.05, 0.5))
    classes[1, 4:] = -1
    classes[2, 2:] = -1
    return {
        "boxes": boxes,
        "classes": classes,
        "codes": rng.normal(0, 1, (b, a, 4)).astype(np.float32),
        "logits": rng.normal(-2, 2, (b, a, CLASSES)).astype(np.float32),
    }


def _reference(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Matching, encoding and the loss written out per image and per box in float64."""
    anchors = anchor_centers_sizes(SIZE).astype(np.float64)
    boxes, classes = x["boxes"].astype(np.float64), x["classes"]
    b, m = classes.shape
    a = len(anchors)
    index, best_iou = np.full((b, a), -1), np.zeros((b, a))
    box_t, onehot, positive = np.zeros((b, a, 4)), np.zeros((b, a, CLASSES)), np.zeros((b, a), bool)
    for i in range(b):
        iou = np.stack([_iou(bx) if c >= 0 else np.full(a, -1.0)
                        for bx, c in zip(boxes[i], classes[i], strict=True)], 1)  # fmt: skip
        matched = np.where(iou.max(1) >= 0.5, iou.argmax(1), -1)
        for j in range(m):  # each box takes its best anchor; a later box wins a tie
            if classes[i, j] >= 0:
                matched[iou[:, j].argmax()] = j
        index[i], best_iou[i] = matched, iou.max(1)
        for k in np.flatnonzero(matched >= 0):
            y0, x0, y1, x1 = boxes[i, matched[k]]
            cy, cx, ah, aw = anchors[k]
            box_t[i, k] = [10 * ((y0 + y1) / 2 - cy) / ah, 10 * ((x0 + x1) / 2 - cx) / aw,
                           5 * np.log((y1 - y0) / ah), 5 * np.log((x1 - x0) / aw)]  # fmt: skip
            onehot[i, k, classes[i, matched[k]]] = 1
            positive[i, k] = True
    logits = x["logits"].astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    p_t = np.where(onehot == 1, p, 1 - p)
    alpha_t = np.where(onehot == 1, 0.25, 0.75)
    ce = np.where(onehot == 1, np.logaddexp(0, -logits), np.logaddexp(0, logits))
    diff = np.abs(x["codes"] - box_t)
    huber = np.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum(-1)
    n = positive.sum()
    return {
        "box_targets": box_t,
        "onehot": onehot,
        "positive": positive,
        "cls_loss": (alpha_t * (1 - p_t) ** 2 * ce).sum() / max(n, 1),
        "box_loss": huber[positive].sum() / max(n, 1),
        "matched": n,
        "index": index,
        "iou": best_iou,
    }


# Runs on whichever Keras backend KERAS_BACKEND names; reads inputs.npz, writes out.npz.
_COMPUTE = f"""
import sys
import numpy as np
from mnasfpn.train import boxes
from mnasfpn.train.anchors import anchor_centers_sizes, anchor_corners

x = np.load(sys.argv[1])
box_t, onehot, positive = boxes.targets(
    anchor_centers_sizes({SIZE}), anchor_corners({SIZE}), x["boxes"], x["classes"], {CLASSES}
)
cls, box, matched = boxes.ssd_loss(x["codes"], x["logits"], box_t, onehot, positive)
np.savez(sys.argv[2], box_targets=box_t, onehot=onehot, positive=positive, cls_loss=cls,
         box_loss=box, matched=matched, tensorflow_loaded="tensorflow" in sys.modules)
"""


def _check(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    pos = want["positive"]
    assert np.array_equal(np.asarray(got["positive"]), pos)
    assert pos.sum(1).min() >= 1 and pos.sum() == want["matched"] == float(got["matched"])
    assert np.array_equal(np.asarray(got["onehot"]), want["onehot"])
    # Box targets count on matched anchors only (the loss masks the rest).
    assert np.allclose(np.asarray(got["box_targets"])[pos], want["box_targets"][pos], atol=2e-4)
    assert float(got["cls_loss"]) == pytest.approx(want["cls_loss"], rel=1e-5)
    assert float(got["box_loss"]) == pytest.approx(want["box_loss"], rel=1e-5)


def test_the_inputs_exercise_force_matching_ties_and_padding() -> None:
    want = _reference(_inputs())
    idx, iou = want["index"], want["iou"]
    assert idx[0, 40] == 1  # the anchor-sized box has its anchor
    # The thin box: one positive, its best anchor, below the IoU threshold.
    assert (idx[1] == 0).sum() == 1 and iou[1][idx[1] == 0].max() < 0.5
    # The duplicate pair: the later box holds only the best anchor both claim.
    assert (idx[0] == 3).sum() == 1 and (idx[0] == 2).sum() >= 1
    assert not np.isin(idx[1], [4, 5]).any() and not np.isin(idx[2], [2, 3, 4, 5]).any()


def test_targets_and_loss_on_tensorflow_match_the_reference() -> None:
    tf = pytest.importorskip("tensorflow")
    from mnasfpn.train import boxes

    x = _inputs()
    anchors, corners = anchor_centers_sizes(SIZE), anchor_corners(SIZE)
    # Traced with free batch and box dimensions, as the trainer's tf.function relaxes them.
    spec = [tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=spec, autograph=False)
    def assign(b: object, c: object) -> object:
        return boxes.targets(anchors, corners, b, c, CLASSES)

    box_t, onehot, positive = assign(x["boxes"], x["classes"])
    cls, box, matched = boxes.ssd_loss(x["codes"], x["logits"], box_t, onehot, positive)
    got = {"box_targets": box_t.numpy(), "onehot": onehot.numpy(), "positive": positive.numpy(),
           "cls_loss": cls, "box_loss": box, "matched": matched}  # fmt: skip
    _check(got, _reference(x))


@needs_jax
def test_targets_and_loss_on_jax_match_the_reference_without_tensorflow(tmp_path: Path) -> None:
    x = _inputs()
    np.savez(tmp_path / "in.npz", **x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", _COMPUTE, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = dict(np.load(tmp_path / "out.npz"))
    assert not got.pop("tensorflow_loaded")  # the JAX path never imports TensorFlow
    _check(got, _reference(x))


# The JAX side of the step comparison: TensorFlow made unimportable first (as on a GPU
# machine without it), then the benchmark's JAX step from the saved initial weights.
_JAX_STEPS = """
import importlib.abc, sys

class _NoTensorflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTensorflow())
import numpy as np
sys.path.insert(0, sys.argv[1])
import train_throughput as bench
from test_train_backends import tiny_run

info = tiny_run()
model, optimizer = bench.build(info)
model.load_weights(sys.argv[2])
step = bench.jax_step(model, optimizer, info)
data = np.load(sys.argv[3])
outs = [step({k: data[f"{k}{i}"] for k in ("image", "boxes", "classes")}) for i in range(3)]
np.savez(sys.argv[4], **{f"{k}{i}": v for i, o in enumerate(outs) for k, v in o.items()})
"""


def tiny_run() -> object:
    from mnasfpn.ir.config import DetectorConfig
    from mnasfpn.searchspace.named import get_architecture
    from mnasfpn.train.run import HParams, RunInfo

    return RunInfo(
        get_architecture("paper-mnasfpn", 1),
        DetectorConfig(input_size=SIZE, num_classes=CLASSES, alpha=0.35, depth=16),
        HParams(steps=3, batch_size=4, lr=0.005, warmup_steps=1),
        "scratch",
        "random",
    )


@pytest.mark.slow
@needs_jax
def test_jax_training_step_equals_the_trainers_step(tmp_path: Path) -> None:
    """Three steps of benchmarks/train_throughput.py's JAX step and of the TensorFlow
    trainer's step from the same weights on the same batches: same targets, loss parts,
    gradient norm and update (momentum SGD after clipping)."""
    pytest.importorskip("tensorflow")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput as bench

    info = tiny_run()
    model, optimizer = bench.build(info)
    model.save_weights(str(tmp_path / "init.weights.h5"))
    rng = np.random.default_rng(3)
    setting = bench.Setting("tiny", "paper-mnasfpn", SIZE, 0.35, 4, CLASSES)
    batches = [bench.random_batch(setting, rng) for _ in range(3)]
    np.savez(tmp_path / "batches.npz",
             **{f"{k}{i}": v for i, b in enumerate(batches) for k, v in b.items()})  # fmt: skip
    step = bench.tensorflow_step(model, optimizer, info)
    want = [{k: float(v) for k, v in step(b).items()} for b in batches]

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"),
                                                       os.environ.get("PYTHONPATH")]))}  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", _JAX_STEPS, str(ROOT / "benchmarks"),
         str(tmp_path / "init.weights.h5"), str(tmp_path / "batches.npz"),
         str(tmp_path / "jax.npz")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = np.load(tmp_path / "jax.npz")
    assert len(got.files) == sum(len(w) for w in want)

    # Step 0 starts from equal weights, and step 1's loss is that of the weights after one
    # update (clipped momentum SGD): both equal up to float rounding. The gradient of this
    # tiny detector (batch norm over 4 images, 1×1 maps at level 6) then amplifies
    # rounding-sized differences ~10³-fold (the gradient norms differ by 3e-6 at step 0,
    # 5e-3 at step 1), so later gradient norms, and the loss after the second update, are
    # compared more loosely.
    def rel(i: int, k: str) -> float:
        return 5e-2 if k == "grad_norm" and i > 0 else 1e-5 if i < 2 else 5e-3

    off = [f"step {i} {k}: tensorflow {v:.7g}, jax {float(got[f'{k}{i}']):.7g}"
           for i, w in enumerate(want) for k, v in w.items()
           if float(got[f"{k}{i}"]) != pytest.approx(v, rel=rel(i, k))]  # fmt: skip
    if off:
        pytest.fail("\n".join(off))
