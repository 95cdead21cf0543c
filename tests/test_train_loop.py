"""The training loop: exact resume, resume after SIGKILL, overfitting a tiny set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.run import HParams, RunInfo
from train_fixtures import batches_fn, coco_ground_truth, shapes_set

tf = pytest.importorskip("tensorflow")

from mnasfpn.train.checkpoint import read_latest  # noqa: E402
from mnasfpn.train.trainer import train  # noqa: E402

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _info(steps: int, *, size: int = 64, every: int = 3, ema: float | None = 0.9,
          lr: float = 0.05, repeats: int = 1) -> RunInfo:  # fmt: skip
    hp = HParams(steps=steps, batch_size=2, lr=lr, warmup_steps=2, checkpoint_every=every,
                 bn_momentum=0.9, ema_decay=ema, weight_decay=0.0)  # fmt: skip
    return RunInfo(get_architecture("paper-mnasfpn", repeats),
                   DetectorConfig(input_size=size, num_classes=2, alpha=0.35, depth=16),
                   hp, "scratch", "memory", [{"id": 1, "name": "square"},
                                             {"id": 2, "name": "plus"}])  # fmt: skip


def _checkpoint_values(run_dir: Path) -> dict[str, np.ndarray]:
    latest = read_latest(run_dir)
    assert latest is not None
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / latest.prefix))
    dtypes = reader.get_variable_to_dtype_map()
    # The data iterator's state is a variant (not readable as an array): its presence is
    # checked by name; what it restores shows in the weights trained after the resume.
    return {n: (reader.get_tensor(n) if dtypes[n] != tf.variant else None)
            for n in dtypes if "save_counter" not in n}  # fmt: skip


@pytest.mark.slow
def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path) -> None:
    data = shapes_set(5, 64)  # 2 batches per epoch, so the run crosses epochs
    info = _info(8)
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        info.save(d)
    train(straight, info, batches_fn(data, 2), progress=False, log_every=2)
    first = train(split, info, batches_fn(data, 2), progress=False, log_every=2, stop_after=5)
    assert first.final_step == 5 and read_latest(split).step == 3
    resumed = train(split, info, batches_fn(data, 2), resume=True, progress=False, log_every=2)
    assert (resumed.start_step, resumed.final_step) == (3, 8)
    a, b = _checkpoint_values(straight), _checkpoint_values(split)
    assert a.keys() == b.keys() and any(k.startswith("ema/") for k in a)
    assert any("optimizer" in k for k in a) and any("data" in k for k in a)
    for name in a:
        if a[name] is None or np.asarray(a[name]).dtype.kind not in "fiub":
            continue
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    rows = (split / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6", "8"]  # no step logged twice


_KILLABLE = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
from pathlib import Path
from train_fixtures import batches_fn, shapes_set
from mnasfpn.train.run import load_run
from mnasfpn.train.trainer import train
run = Path(sys.argv[1])
train(run, load_run(run), batches_fn(shapes_set(4, 64), 2), resume=True, progress=False,
      log_every=1)
"""


@pytest.mark.slow
def test_sigkill_then_resume_ends_at_the_same_step(tmp_path: Path) -> None:
    info = _info(40, every=4, ema=None)
    run = tmp_path / "run"
    info.save(run)
    script = tmp_path / "train.py"
    script.write_text(_KILLABLE.format(src=str(SRC), tests=str(TESTS)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, str(script), str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            latest = read_latest(run) if (run / "checkpoints" / "latest.json").exists() else None
            if (latest is not None and latest.step >= 8) or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = read_latest(run).step
    assert 8 <= killed_at < 40
    result = train(run, info, batches_fn(shapes_set(4, 64), 2), resume=True, progress=False,
                   log_every=1)  # fmt: skip
    assert result.start_step == killed_at and result.final_step == 40
    assert read_latest(run).step == 40
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 41))
    doc = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert doc["step"] == 40
    assert len(list((run / "checkpoints").glob("ckpt-*"))) == 2


@pytest.mark.slow
def test_tiny_set_is_overfitted_to_high_map50(tmp_path: Path) -> None:
    from mnasfpn.train.coco_metrics import coco_metrics
    from mnasfpn.train.detector import build_detector, restore_weights
    from mnasfpn.train.evaluate import predict_dataset

    size, steps = 128, 150
    data = shapes_set(4, size)
    info = _info(steps, size=size, every=steps, ema=None, lr=0.1)
    info = RunInfo(info.genotype, info.detector,
                   HParams(**{**info.hparams.__dict__, "batch_size": 4, "warmup_steps": 8,
                              "bn_momentum": 0.93}),
                   info.backbone_weights, info.data, info.categories)  # fmt: skip
    info.save(tmp_path)
    result = train(tmp_path, info, batches_fn(data, 4), progress=False)
    assert result.final_step == steps
    model = build_detector(info.genotype, info.detector)
    restore_weights(model, tmp_path)
    results, seen = predict_dataset(model, batches_fn(data, 4, shuffle=False)(0), size, [1, 2])
    metrics = coco_metrics(coco_ground_truth(data), results, seen)
    assert metrics["mAP50"] > 0.8, metrics
