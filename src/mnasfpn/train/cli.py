"""`mnasfpn train | eval | detect`: TensorFlow loads only inside the command bodies."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mnasfpn.archs import resolve_archs
from mnasfpn.atomic import check_output, check_output_dir
from mnasfpn.cli_common import model_options, one_line, repeats_option
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.train.checkpoint import has_checkpoint, require_checkpoint
from mnasfpn.train.run import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    RUN_FILE,
    HParams,
    RunError,
    RunInfo,
    checkpoint_dir,
    load_run,
    run_files,
)

F = TypeVar("F", bound=Callable[..., Any])


def require_tensorflow(command: str) -> None:
    """One line instead of an import traceback where the train extra is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        raise MnasfpnError(
            f"mnasfpn {command} needs TensorFlow, which is not installed: "
            "pip install 'mnasfpn[train]'"
        )


def _parameter_given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None,
    )  # fmt: skip


@click.command("train")
@click.option(
    "--arch",
    required=True,
    metavar="NAME|FILE.json",
    help="A named architecture (paper-mnasfpn, ...) or a genotype file.",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="COCO-format folder: annotations/instances_SPLIT.json + SPLIT/ images.",
)
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder: run.json, checkpoints/, metrics.csv.",
)
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps.")
@click.option(
    "--epochs",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Training length in passes over the data (instead of --steps).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate [default: 0.4 × batch / 64, the paper's proxy rate].",
)
@click.option(
    "--backbone-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keras MobileNetV2 .h5/.weights.h5 file (default: scratch).",
)
@repeats_option
@model_options(classes=False)
@click.option(
    "--ema",
    "ema_decay",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Keep an EMA of the weights with this decay (e.g. 0.9998).",
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_command(ctx: click.Context, arch: str, data_dir: Path, run_dir: Path, split: str,
                  steps: int | None, epochs: float | None, batch_size: int, lr: float | None,
                  backbone_weights: Path | None, repeats: int | None, config: DetectorConfig,
                  ema_decay: float | None, checkpoint_every: int, seed: int, resume: bool,
                  quiet: bool) -> None:  # fmt: skip
    """Train an SSD detector with this head on a COCO-format folder."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.schedule import bn_momentum, default_lr, default_warmup

    # Every check runs before TensorFlow loads or anything is written.
    genotypes = resolve_archs(arch, repeats)
    if len(genotypes) != 1:
        raise MnasfpnError(f"--arch {arch!r} holds {len(genotypes)} genotypes; "
                           "train takes exactly one")  # fmt: skip
    genotype = genotypes[0]
    if steps is not None and epochs is not None:
        raise MnasfpnError("give --steps or --epochs, not both")
    if steps is None and epochs is None and not resume:
        raise MnasfpnError("give the training length: --steps N or --epochs E")
    if backbone_weights is not None and not backbone_weights.is_file():
        raise MnasfpnError(f"--backbone-weights {str(backbone_weights)!r}: file not found")
    previous, restart = _check_run_folder(run_dir, resume)

    require_tensorflow("train")
    from mnasfpn.data.coco import annotation_digest
    from mnasfpn.train.data_source import categories, open_split, train_batches

    coco = open_split(data_dir, split)
    cats = categories(coco)
    digest = annotation_digest(data_dir, split)
    detector = dataclasses.replace(config, num_classes=len(cats))
    if previous is not None:
        _check_same_run(previous, run_dir, genotype, config, data_dir, split, digest, cats)
        ignored = _ignored_settings(ctx, previous, len(coco.images))
        if ignored:
            click.echo("note: --resume keeps the run's own settings; ignoring "
                       + ", ".join(ignored), err=True)  # fmt: skip
        if has_checkpoint(run_dir):
            require_checkpoint(run_dir)  # all its checkpoints gone: one line, before TF loads
        info = previous
    else:
        if batch_size > len(coco.images):
            raise MnasfpnError(f"--batch-size {batch_size} is more than the {len(coco.images)} "
                               f"images of {data_dir} ({split}); give at most "
                               f"{len(coco.images)}")  # fmt: skip
        if steps is None:
            steps = _epochs_to_steps(epochs or 0, len(coco.images), batch_size)
        hp = HParams(
            steps=steps, batch_size=batch_size, lr=lr or default_lr(batch_size),
            warmup_steps=default_warmup(steps), bn_momentum=bn_momentum(steps),
            ema_decay=ema_decay, checkpoint_every=checkpoint_every, seed=seed,
        )  # fmt: skip
        weights = str(backbone_weights.resolve()) if backbone_weights else "scratch"
        info = RunInfo(genotype, detector, hp, weights, str(data_dir.resolve()), cats,
                       split=split, data_digest=digest)  # fmt: skip
        if restart:
            # Nothing trained is lost: the folder's run never completed a checkpoint.
            click.echo(f"note: {run_dir} holds a run with no checkpoint yet; starting it "
                       "again with these settings", err=True)  # fmt: skip
            shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)

    from mnasfpn.train.trainer import train

    hp = info.hparams
    click.echo(f"training {_arch_label(info)} on {len(coco.images)} images of {data_dir} "
               f"({split}) for {hp.steps} steps, batch {hp.batch_size}, peak lr {hp.lr:g}, "
               f"backbone {info.backbone_weights}")  # fmt: skip
    result = train(
        run_dir, info,
        train_batches(coco, info.detector.input_size, hp.batch_size, hp.seed),
        resume=resume,
        # run.json is written once the model is built and its backbone weights loaded: a
        # start that fails before leaves the folder as it was.
        write_run=previous is None,
        # Loaded only when the run starts fresh (a resumed one has them in its checkpoint).
        backbone_weights=None if info.backbone_weights == "scratch"
        else Path(info.backbone_weights),
        progress=not quiet,
        images_per_epoch=len(coco.images),
        echo=lambda s: click.echo(s, err=True),
    )  # fmt: skip
    if result.final_step == result.start_step:
        click.echo(f"nothing to train: {run_dir} is at step {result.final_step} of {hp.steps}")
        return
    last = {k: f"{v:.4f}" for k, v in result.last.items()}
    click.echo(
        f"done: step {result.final_step} of {hp.steps} in {result.seconds:.0f} s "
        f"({result.images_per_s:.1f} images/s after the tracing step); last loss "
        f"{last.get('loss', 'n/a')} (class {last.get('cls_loss', 'n/a')}, box "
        f"{last.get('box_loss', 'n/a')}); run in {run_dir}"
    )


def _epochs_to_steps(epochs: float, images: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * max(1, images // batch_size)))


def _check_run_folder(run_dir: Path, resume: bool) -> tuple[RunInfo | None, bool]:
    """The output guard of a run folder: (the run to continue, whether a run with no
    checkpoint is there to be started again). A folder holding files of a run's names
    (run.json, metrics.csv, checkpoints/) that are not a run's is refused, as is a run
    with a checkpoint without --resume; nothing is written here."""
    check_output_dir(run_dir)
    if resume:
        return load_run(run_dir), False
    if not run_dir.exists():
        return None, False
    if (run_dir / RUN_FILE).exists():
        try:
            load_run(run_dir)
        except RunError as exc:
            why = one_line(exc).removeprefix(f"{run_dir / RUN_FILE}: ")
            raise RunError(f"--out {str(run_dir)!r} holds a run.json that train did not "
                           f"write ({why}); choose another folder") from None
        if has_checkpoint(run_dir):
            raise RunError(f"--out {str(run_dir)!r} already holds a run with a checkpoint; "
                           "pass --resume to continue it or choose another folder")  # fmt: skip
        return None, True
    theirs = [n for n in (METRICS_FILE, CHECKPOINT_DIR) if (run_dir / n).exists()]
    if theirs:
        raise RunError(f"--out {str(run_dir)!r} holds {', '.join(theirs)} but no run.json: "
                       "not a run this command made, and a run would replace it; choose "
                       "another folder")  # fmt: skip
    return None, False


def _check_same_run(previous: RunInfo, run_dir: Path, genotype: Any, config: DetectorConfig,
                    data_dir: Path, split: str, digest: str,
                    cats: list[dict[str, Any]]) -> None:  # fmt: skip
    """--resume continues a run only on what it was made with: the architecture, the data
    (the split's annotation digest; a run file without one: the folder's path), the split."""
    wanted = dataclasses.replace(config, num_classes=previous.detector.num_classes)
    mine = RunInfo(genotype, wanted, previous.hparams, "", "", [])
    if not previous.same_architecture(mine):
        raise RunError(f"--resume: {run_dir} was made for another architecture "
                       f"({_arch_label(previous)}); this command asks for "
                       f"{_arch_label(mine)}")  # fmt: skip
    if previous.split and previous.split != split:
        raise RunError(f"--resume: {run_dir} trains on split {previous.split!r}, not "
                       f"{split!r}; pass --split {previous.split}")  # fmt: skip
    same = (digest == previous.data_digest if previous.data_digest
            else str(data_dir.resolve()) == previous.data)  # fmt: skip
    if not same:
        changed = (str(data_dir.resolve()) == previous.data)
        what = ("its annotations changed since the run started (regenerated in place?)"
                if changed else "it is other data")  # fmt: skip
        raise RunError(f"--resume: {run_dir} was trained on {previous.data} "
                       f"({previous.split or 'its split'}); --data {data_dir}: {what}. A run "
                       "continues only on its own data: start a new run in another --out")
    if previous.categories != cats:
        raise RunError(f"--resume: {data_dir} has other categories than the run was "
                       "trained on")  # fmt: skip


def _ignored_settings(ctx: click.Context, run: RunInfo, images: int) -> list[str]:
    """The training options given with --resume whose value differs from the run's own
    (those are the ones a note must name: an equal one changes nothing)."""
    hp, p = run.hparams, ctx.params
    differs = {
        "steps": lambda: p["steps"] != hp.steps,
        "epochs": lambda: _epochs_to_steps(p["epochs"], images, hp.batch_size) != hp.steps,
        "batch_size": lambda: p["batch_size"] != hp.batch_size,
        "lr": lambda: not math.isclose(p["lr"], hp.lr),
        "ema_decay": lambda: p["ema_decay"] != hp.ema_decay,
        "checkpoint_every": lambda: p["checkpoint_every"] != hp.checkpoint_every,
        "seed": lambda: p["seed"] != hp.seed,
        "backbone_weights": lambda: str(p["backbone_weights"].resolve()) != run.backbone_weights,
    }
    return ["--" + n.replace("_", "-") for n, check in differs.items()
            if _parameter_given(ctx, n) and check()]  # fmt: skip


def _arch_label(info: Any) -> str:
    g, d = info.genotype, info.detector
    name = g.name or f"a {g.space} genotype"
    return (f"{name}, C={g.channels}, {g.repeats} repeats, input {d.input_size}, "
            f"{d.num_classes} classes, alpha {d.alpha}, depth {d.depth}")  # fmt: skip


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def eval_command(run_dir: Path, data_dir: Path, split: str, batch_size: int,
                 as_json: bool) -> None:  # fmt: skip
    """COCO mAP (and @0.5, @0.75, small/medium/large) of a trained run on a split."""
    info = load_run(run_dir)
    require_checkpoint(run_dir)
    require_tensorflow("eval")
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.data_source import categories, eval_batches, ground_truth, open_split

    coco = open_split(data_dir, split)
    if categories(coco) != info.categories:
        raise RunError(f"{data_dir} ({split}) has other categories than run {run_dir} was "
                       "trained on")  # fmt: skip
    from mnasfpn.train.coco_metrics import METRIC_NAMES, coco_metrics
    from mnasfpn.train.detector import build_detector, restore_weights
    from mnasfpn.train.evaluate import predict_dataset

    model = build_detector(info.genotype, info.detector, batch_size=None)
    step = restore_weights(model, run_dir, echo=_note)
    size = info.detector.input_size
    ids = [c["id"] for c in info.categories]
    results, seen = predict_dataset(model, eval_batches(coco, size, batch_size), size, ids)
    metrics = coco_metrics(ground_truth(coco), results, seen)
    if as_json:
        click.echo(json.dumps({"run": str(run_dir), "step": step, "split": split,
                               "images": len(seen), "detections": len(results),
                               **{k: (None if math.isnan(v) else v)
                                  for k, v in metrics.items()}}))  # fmt: skip
        return
    click.echo(f"{run_dir} (step {step}) on {data_dir} {split}: {len(seen)} images, "
               f"{len(results)} detections")  # fmt: skip
    for name in METRIC_NAMES:
        v = metrics[name]
        click.echo(f"  {name:<11} {'n/a (no such objects)' if math.isnan(v) else f'{v:.4f}'}")


@click.command("detect")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the annotated PNGs (IMAGE's stem + .png).",
)
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.3, show_default=True)
@click.option("--force", is_flag=True, help="Replace PNGs of the same names in --out.")
def detect_command(run_dir: Path, images: tuple[Path, ...], out_dir: Path,
                   min_score: float, force: bool) -> None:  # fmt: skip
    """Draw a trained run's detections (after NMS) on images, with class names and scores."""
    info = load_run(run_dir)
    # Every input and output is checked before the model loads (tens of seconds), and
    # --out is made only when its first PNG is written.
    check_output_dir(out_dir)
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise MnasfpnError(f"image not found: {', '.join(missing)}")
    from mnasfpn.train.detect import check_image, output_names

    for path in images:
        check_image(path)
    targets = output_names(list(images), out_dir)
    for dst in targets:
        check_output(dst, inputs=[*images, *run_files(run_dir)], force=force)
    require_checkpoint(run_dir)
    require_tensorflow("detect")
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.detect import detect_images

    for src, dst, count in detect_images(info, run_dir, list(images), targets, min_score,
                                         replace=force, echo=_note):  # fmt: skip
        click.echo(f"{src}: {count} detections → {dst}")


def _note(line: str) -> None:
    click.echo(line, err=True)


def register(group: click.Group) -> None:
    for command in (train_command, eval_command, detect_command):
        group.add_command(command)
