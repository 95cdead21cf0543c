"""The README's promises for `data`, `train`, `eval`, `export --run` and `detect`: no
command writes over its input or (without --force) over an existing file; a run never
continues on other data; a damaged newest checkpoint falls back to the older one kept
beside it; a failed start leaves nothing the corrected command refuses; each refusal is
one line that says what is wrong. Each test names the promise it checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conftest import error_line as refusal
from mnasfpn.cli import main
from mnasfpn.data import write_synthetic
from mnasfpn.data.coco import annotation_digest
from mnasfpn.data.synth import SynthSpec
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.run import HParams, RunInfo

SMALL = ("--input-size", "64", "--alpha", "0.35", "--depth", "16", "--repeats", "1")


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(*args: object) -> str:
    return refusal(run(*args))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, SynthSpec(train=8, val=4, size=64, classes=2, seed=3))
    return root


def _cats(data: Path) -> list[dict[str, object]]:
    doc = json.loads((data / "annotations" / "instances_train.json").read_text())
    return [{"id": c["id"], "name": c["name"]} for c in doc["categories"]]


def _run_folder(path: Path, data: Path, *, digest: bool = True, checkpoint: bool = False) -> Path:
    """A run.json as `train` writes it (with its data identity unless `digest` is False:
    a run file from before it was recorded); with `checkpoint`, a latest.json too."""
    info = RunInfo(get_architecture("paper-mnasfpn", 1), DetectorConfig(64, 2, 0.35, 16),
                   HParams(steps=4, batch_size=2, lr=0.01, warmup_steps=1), "scratch",
                   str(data.resolve()), _cats(data))  # fmt: skip
    doc = info.to_dict()
    doc["split"] = "train" if digest else ""
    doc["data_digest"] = annotation_digest(data, "train") if digest else ""
    if not digest:
        del doc["split"], doc["data_digest"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps(doc, indent=2))
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "latest.json").write_text(
            json.dumps({"step": 4, "prefix": "ckpt-4/ckpt", "data_state": True})
        )
    return path


def _train(data: Path, out: Path, *extra: object) -> tuple[object, ...]:
    return ("train", "--arch", "paper-mnasfpn", *SMALL, "--data", data, "--out", out, *extra)


# -- never over an input, never over an existing file without --force -------------------


def test_export_run_never_writes_over_its_own_run(tmp_path: Path, data: Path) -> None:
    run_dir = _run_folder(tmp_path / "run", data, checkpoint=True)
    before = (run_dir / "run.json").read_text()
    for target in (run_dir / "run.json", run_dir / "checkpoints" / "latest.json"):
        line = error_line("export", "--run", run_dir, "--out", target, "--force")
        assert "is the input" in line
    assert (run_dir / "run.json").read_text() == before


def test_train_never_replaces_a_users_files_in_out(tmp_path: Path, data: Path) -> None:
    users = tmp_path / "mine"
    users.mkdir()
    (users / "metrics.csv").write_text("my,numbers\n1,2\n")
    line = error_line(*_train(data, users, "--steps", "2"))
    assert "metrics.csv but no run.json" in line
    assert (users / "metrics.csv").read_text() == "my,numbers\n1,2\n"
    (users / "run.json").write_text('{"format": "something else"}')
    line = error_line(*_train(data, users, "--steps", "2"))
    assert "run.json that train did not write" in line and "already holds a run" not in line
    assert (users / "run.json").read_text() == '{"format": "something else"}'


def test_out_naming_a_file_says_so(tmp_path: Path, data: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert "is a file, not a folder" in error_line(*_train(data, a_file, "--steps", "2"))
    assert "is a file, so no folder" in error_line(*_train(data, a_file / "run", "--steps", "2"))
    run_dir = _run_folder(tmp_path / "run", data)
    image = next((data / "val").iterdir())
    assert "is a file, not a folder" in error_line("detect", "--run", run_dir, image,
                                                   "--out", a_file)  # fmt: skip
    assert "is a file, not a folder" in error_line("data", "synth", "--out", a_file)
    assert a_file.read_text() == "x"


def test_detect_checks_every_input_and_output_before_the_model(tmp_path: Path, data: Path) -> None:
    # A run with no checkpoint: each of these must be refused before that is even looked at.
    run_dir = _run_folder(tmp_path / "run", data)
    image = sorted((data / "val").iterdir())[0]
    text = tmp_path / "photo.jpg"
    text.write_text("not an image")
    out = tmp_path / "det"
    assert "not a readable image" in error_line("detect", "--run", run_dir, image, text,
                                                "--out", out)  # fmt: skip
    assert not out.exists()  # no empty --out folder left
    out.mkdir()
    mine = out / f"{image.stem}.png"
    mine.write_bytes(b"my drawing")
    assert "pass --force" in error_line("detect", "--run", run_dir, image, "--out", out)
    assert mine.read_bytes() == b"my drawing"
    # An output that is the input itself is refused even with --force.
    png = tmp_path / "pic.png"
    from PIL import Image

    Image.open(image).save(png)
    assert "is the input" in error_line("detect", "--run", run_dir, png, "--out", tmp_path,
                                        "--force")  # fmt: skip
    # With the inputs and outputs fine, what remains is the missing checkpoint.
    assert "no checkpoint yet" in error_line("detect", "--run", run_dir, image, "--out", out,
                                             "--force")  # fmt: skip


def test_data_split_never_rewrites_its_own_input(tmp_path: Path, data: Path) -> None:
    own = tmp_path / "d"
    shutil.copytree(data, own)
    before = (own / "annotations" / "instances_train.json").read_bytes()
    line = error_line("data", "split", "--data", own, "--split", "train", "--out", own,
                      "--val-count", "2", "--force")  # fmt: skip
    assert "over the input" in line
    assert (own / "annotations" / "instances_train.json").read_bytes() == before
    line = error_line("data", "split", "--data", data, "--split", "train", "--out",
                      tmp_path / "s", "--val-fraction", "0.99")  # fmt: skip
    assert "--val-fraction 0.99" in line and "count" not in line
    assert not (tmp_path / "s").exists()
    result = run("data", "split", "--data", data, "--split", "train", "--out", tmp_path / "s",
                 "--val-count", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pass --force" in error_line("data", "split", "--data", data, "--split", "train",
                                        "--out", tmp_path / "s", "--val-count", "3")  # fmt: skip


def test_synth_force_over_a_split_folder_replaces_its_links_not_their_images(
    tmp_path: Path, data: Path
) -> None:
    before = sorted(p.name for p in (data / "train").iterdir())
    split = tmp_path / "s"
    assert run("data", "split", "--data", data, "--split", "train", "--out", split,
               "--val-count", "2").exit_code == 0  # fmt: skip
    result = run("data", "synth", "--out", split, "--train", "2", "--val", "1", "--size", "64",
                 "--force")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (split / "train").is_symlink() and len(list((split / "train").iterdir())) == 2
    assert sorted(p.name for p in (data / "train").iterdir()) == before


# -- a run never continues on other inputs ------------------------------------------------


def test_resume_refuses_other_data_and_says_class_counts_are_categories(
    tmp_path: Path, data: Path
) -> None:
    run_dir = _run_folder(tmp_path / "run", data, checkpoint=True)
    other = tmp_path / "other"
    write_synthetic(other, SynthSpec(train=8, val=4, size=64, classes=2, seed=4))
    line = error_line(*_train(other, run_dir, "--resume"))
    assert "it is other data" in line
    # The same folder regenerated in place (another seed): its annotations changed.
    regen = tmp_path / "regen"
    shutil.copytree(data, regen)
    run2 = _run_folder(tmp_path / "run2", regen, checkpoint=True)
    write_synthetic(regen, SynthSpec(train=8, val=4, size=64, classes=2, seed=9), force=True)
    assert "annotations changed" in error_line(*_train(regen, run2, "--resume"))
    # A copy of the same set elsewhere is the same data: not refused for that (what remains
    # is that this fake run's checkpoint files are not there).
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert "latest.json names ckpt-4/ckpt" in error_line(*_train(copy, run_dir, "--resume"))
    # Another class count: said as other categories, not another architecture.
    three = tmp_path / "three"
    write_synthetic(three, SynthSpec(train=8, val=4, size=64, classes=3, seed=3))
    old_style = _run_folder(tmp_path / "run3", data, digest=False, checkpoint=True)
    doc = json.loads((old_style / "run.json").read_text())
    doc["data"] = str(three.resolve())
    (old_style / "run.json").write_text(json.dumps(doc))
    line = error_line(*_train(three, old_style, "--resume"))
    assert "other categories" in line and "architecture" not in line


def test_resume_notes_only_settings_that_differ(tmp_path: Path, data: Path) -> None:
    run_dir = _run_folder(tmp_path / "run", data, checkpoint=True)
    same = run(*_train(data, run_dir, "--resume", "--steps", "4", "--batch-size", "2",
                       "--lr", "0.01", "--seed", "0"))  # fmt: skip
    assert "ignoring" not in same.output, same.output
    differ = run(*_train(data, run_dir, "--resume", "--steps", "9", "--batch-size", "2"))
    assert "ignoring --steps" in differ.output and "--batch-size" not in differ.output


# -- a failed start leaves nothing the corrected command refuses ---------------------------


def test_failed_starts_leave_no_run_behind(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    line = error_line(*_train(data, out, "--steps", "2", "--batch-size", "9"))
    assert "--batch-size 9 is more than the 8 images" in line
    assert not out.exists()
    garbage = tmp_path / "weights.h5"
    garbage.write_bytes(b"\x00garbage" * 64)
    line = error_line(*_train(data, out, "--steps", "2", "--batch-size", "2",
                              "--backbone-weights", garbage))  # fmt: skip
    assert "not a Keras MobileNetV2" in line
    assert not (out / "run.json").exists()


def test_a_run_without_checkpoint_is_not_told_to_train_then_refused(
    tmp_path: Path, data: Path
) -> None:
    run_dir = _run_folder(tmp_path / "run", data)
    line = error_line("eval", "--run", run_dir, "--data", data)
    assert "no checkpoint yet" in line and "train the run first" not in line
    # `train` into it (what the message offers) is not refused by the folder guard: the
    # error that remains is this command's own batch size.
    line = error_line(*_train(data, run_dir, "--steps", "2", "--batch-size", "9"))
    assert "--batch-size 9" in line


# -- a damaged newest checkpoint: the older one, said in one line ------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A real run with two checkpoints (steps 2 and 4)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run(*_train(data, out, "--steps", "4", "--batch-size", "2",
                         "--checkpoint-every", "2", "--quiet"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*")) == ["ckpt-2", "ckpt-4"]
    return out


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def _truncate_newest(run_dir: Path) -> None:
    data_file = run_dir / "checkpoints" / "ckpt-4" / "ckpt.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])


def test_truncated_newest_checkpoint_falls_back_everywhere(
    tmp_path: Path, data: Path, trained: Path
) -> None:
    run_dir = _copy(trained, tmp_path / "run")
    _truncate_newest(run_dir)
    result = run("eval", "--run", run_dir, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    note = "checkpoint ckpt-4/ckpt: truncated; using the older one, ckpt-2/ckpt (step 2)"
    assert note in result.output
    assert json.loads(result.output.strip().splitlines()[-1])["step"] == 2
    result = run("export", "--run", run_dir, "--out", tmp_path / "m.tflite")
    assert result.exit_code == 0, result.output
    assert "truncated; using the older one" in result.output and "at step 2" in result.output
    result = run(*_train(data, run_dir, "--resume", "--quiet"))
    assert result.exit_code == 0, result.output
    assert "truncated; using the older one" in result.output
    assert "from step 2" in result.output and "done: step 4 of 4" in result.output
    # The resumed run wrote a whole step-4 checkpoint again: no note any more.
    result = run("eval", "--run", run_dir, "--data", data, "--json")
    assert result.exit_code == 0 and "using the" not in result.output, result.output


def test_latest_naming_a_deleted_folder_falls_back_or_says_so(
    tmp_path: Path, data: Path, trained: Path
) -> None:
    run_dir = _copy(trained, tmp_path / "run")
    latest = run_dir / "checkpoints" / "latest.json"
    good = latest.read_text()
    latest.write_text("{garbage")
    result = run("eval", "--run", run_dir, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    assert "latest.json: unreadable; using the newest intact one, ckpt-4/ckpt" in result.output
    latest.write_text(good)
    shutil.rmtree(run_dir / "checkpoints" / "ckpt-4")
    image = sorted((data / "val").iterdir())[0]
    result = run("detect", "--run", run_dir, image, "--out", tmp_path / "det")
    assert result.exit_code == 0, result.output
    assert "checkpoint ckpt-4/ckpt: missing; using the older one, ckpt-2/ckpt" in result.output
    shutil.rmtree(run_dir / "checkpoints" / "ckpt-2")
    line = error_line("eval", "--run", run_dir, "--data", data)
    assert "names ckpt-4/ckpt, which is not there" in line


def test_a_checkpoint_left_from_before_a_fallback_never_displaces_a_real_one(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorflow")
    from mnasfpn.tfenv import load_tensorflow
    from mnasfpn.train.checkpoint import save_checkpoint

    tf = load_tensorflow()
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, 100, {"m": module}, None)
    junk = run_dir / "checkpoints" / "ckpt-500"  # a damaged newest one, passed over
    junk.mkdir()
    (junk / "ckpt.index").write_bytes(b"truncated")
    save_checkpoint(run_dir, 200, {"m": module}, None)
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*"))
    assert kept == ["ckpt-100", "ckpt-200"]
