"""`mnasfpn train | eval | detect | export --run`: bad input ends in one line, before any
training; a tiny end-to-end run through every command (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from conftest import error_line as refusal
from mnasfpn.arch_cli import register as register_arch
from mnasfpn.cli_common import ErrorHandlingGroup
from mnasfpn.data import write_synthetic
from mnasfpn.data.synth import SynthSpec
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.cli import register as register_train
from mnasfpn.train.run import HParams, RunInfo


@click.group(cls=ErrorHandlingGroup)
def cli() -> None:
    """Stand-in for `mnasfpn.cli.main` with the commands under test."""


register_arch(cli)
register_train(cli)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(*args: str) -> str:
    return refusal(run(*args))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, SynthSpec(train=8, val=4, size=128, classes=2, seed=3))
    return root


def _run_folder(path: Path, data: Path, arch: str = "paper-mnasfpn") -> Path:
    info = RunInfo(get_architecture(arch, 1), DetectorConfig(128, 2, 0.35, 16),
                   HParams(steps=4, batch_size=2, lr=0.01, warmup_steps=1), "scratch",
                   str(data), [])  # fmt: skip
    info.save(path)
    return path


TRAIN = ("train", "--input-size", "128", "--alpha", "0.35", "--depth", "16")


def test_bad_training_inputs_each_get_one_line(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    base = (*TRAIN, "--data", data, "--out", out)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in error_line(*base, "--arch", bad, "--steps", "2")
    assert "unknown architecture 'nope'" in error_line(*base, "--arch", "nope", "--steps", "2")
    assert "not both" in error_line(*base, "--arch", "paper-mnasfpn", "--steps", "2",
                                    "--epochs", "1")  # fmt: skip
    assert "--steps N or --epochs E" in error_line(*base, "--arch", "paper-mnasfpn")
    assert "file not found" in error_line(*base, "--arch", "paper-mnasfpn", "--steps", "2",
                                          "--backbone-weights", tmp_path / "none.h5")  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(*TRAIN, "--data", empty, "--out", out, "--arch", "paper-mnasfpn",
                      "--steps", "2")  # fmt: skip
    assert "instances_train.json" in line or "annotation" in line
    assert not out.exists()  # nothing written before the inputs were checked


def test_resume_refuses_another_architecture_and_overwriting(tmp_path: Path, data: Path) -> None:
    out = _run_folder(tmp_path / "run", data)
    base = (*TRAIN, "--data", data, "--out", out)
    line = error_line(*base, "--arch", "paper-mnasfpn-nosdo", "--repeats", "1", "--resume")
    assert "another architecture" in line
    line = error_line(*base, "--arch", "paper-mnasfpn", "--repeats", "2", "--resume")
    assert "another architecture" in line
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest.json").write_text(
        json.dumps({"step": 2, "prefix": "ckpt-2/ckpt", "data_state": True})
    )
    assert "already holds a run" in error_line(*base, "--arch", "paper-mnasfpn", "--steps", "2")
    nothing = tmp_path / "nothing"
    line = error_line(*TRAIN, "--data", data, "--out", nothing, "--arch", "paper-mnasfpn",
                      "--resume")  # fmt: skip
    assert "not found" in line


def test_eval_detect_export_need_a_trained_run(tmp_path: Path, data: Path) -> None:
    assert "not found" in error_line("eval", "--run", tmp_path / "none", "--data", data)
    assert "not a training run" in error_line("eval", "--run", tmp_path, "--data", data)
    run_dir = _run_folder(tmp_path / "run", data)
    image = next((data / "val").iterdir())
    assert "no checkpoint" in error_line("eval", "--run", run_dir, "--data", data)
    assert "image not found" in error_line("detect", "--run", run_dir, tmp_path / "x.png",
                                           "--out", tmp_path / "det")  # fmt: skip
    assert "no checkpoint" in error_line("detect", "--run", run_dir, image,
                                         "--out", tmp_path / "det")  # fmt: skip
    assert "needs --run" in error_line("export", "--out", tmp_path / "m.tflite",
                                       "--with-postprocess")  # fmt: skip
    assert "not both" in error_line("export", "--run", run_dir, "--arch", "paper-mnasfpn",
                                    "--out", tmp_path / "m.tflite")  # fmt: skip
    assert "no checkpoint" in error_line("export", "--run", run_dir, "--out", tmp_path / "m.tflite")


@pytest.mark.slow
def test_train_eval_export_detect_end_to_end(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    result = run(*TRAIN, "--data", data, "--out", out, "--arch", "paper-mnasfpn",
                 "--repeats", "1", "--steps", "4", "--batch-size", "2",
                 "--checkpoint-every", "2", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "done: step 4 of 4" in result.output
    info = json.loads((out / "run.json").read_text())
    assert info["backbone_weights"] == "scratch" and info["genotype"]["repeats"] == 1
    assert [c["name"] for c in info["categories"]] and info["detector"]["num_classes"] == 2
    result = run("eval", "--run", out, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["step"] == 4 and metrics["images"] == 4
    assert {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"} <= metrics.keys()
    tflite = tmp_path / "m.tflite"
    result = run("export", "--run", out, "--out", tflite)
    assert result.exit_code == 0, result.output
    from ai_edge_litert.interpreter import Interpreter

    shapes = sorted(tuple(d["shape"]) for d in Interpreter(str(tflite)).get_output_details())
    assert shapes == sorted([(1, 9 * 340, 4), (1, 9 * 340, 2)])
    _check_postprocess_export(out, tmp_path / "pp.tflite")
    images = sorted((data / "val").iterdir())[:2]
    result = run("detect", "--run", out, *images, "--out", tmp_path / "det", "--min-score", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [
        p.stem + ".png" for p in images
    ]


def _check_postprocess_export(run_dir: Path, path: Path) -> None:
    """The exported NMS op gives the scores and classes of the TensorFlow NMS path."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from mnasfpn.train.detector import build_detector, preprocess, restore_weights
    from mnasfpn.train.evaluate import NmsConfig, make_predict_fn
    from mnasfpn.train.run import load_run

    result = run("export", "--run", run_dir, "--out", path, "--with-postprocess")
    assert result.exit_code == 0, result.output
    info = load_run(run_dir)
    model = build_detector(info.genotype, info.detector)
    restore_weights(model, run_dir)
    x = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    _, scores, classes, _ = make_predict_fn(model, 128, NmsConfig(score_threshold=1e-8))(x)
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    out = runner(**{name: preprocess(x)})
    got = {v.shape: v for v in out.values()}
    assert got[(1, 100, 4)].shape == (1, 100, 4) and got[(1,)][0] == 100
    lite_scores = sorted(out.values(), key=lambda v: v.shape)[1:]  # the two [1, 100] outputs
    lite = next(v for v in lite_scores if not np.allclose(v, np.round(v)))
    assert np.allclose(lite[0, :10], scores.numpy()[0, :10], atol=1e-5)
    assert classes.numpy().shape == (1, 100)
