"""`mnasfpn data synth | split | show`: make and inspect detection data folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from mnasfpn.data.coco import load_coco
from mnasfpn.data.split import split_coco
from mnasfpn.data.synth import SynthSpec, check_target, write_synthetic


@click.group("data")
def data_group() -> None:
    """Detection data in COCO format: a synthetic set, search splits, a summary."""


@data_group.command("synth")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--train", "n_train", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--size", type=int, default=320, show_default=True, help="Longer image side.")
@click.option("--classes", type=int, default=6, show_default=True, help="Shape classes (1..10).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the splits in a non-empty --out.")
def synth_cmd(
    out: Path, n_train: int, n_val: int, size: int, classes: int, seed: int, force: bool
) -> None:
    """Write a synthetic shapes detection set (COCO format, splits train and val)."""
    # tqdm (~30 ms): this module loads with `--help`, tqdm only when a bar shows
    from tqdm import tqdm

    spec = SynthSpec(train=n_train, val=n_val, size=size, classes=classes, seed=seed)
    spec.check()
    check_target(out, force)
    with tqdm(total=n_train + n_val, unit="img", desc="synth") as bar:
        counts = write_synthetic(out, spec, force=force, progress=bar.update)
    boxes = ", ".join(f"{split}: {n} boxes" for split, n in counts.items())
    click.echo(f"wrote {out} ({n_train} train / {n_val} val images; {boxes})")


@data_group.command("split")
@click.option("--data", "root", type=click.Path(path_type=Path), required=True)
@click.option("--split", default="train2017", show_default=True, help="Split to carve up.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--val-count", type=click.IntRange(min=1), default=None, help="e.g. 7000 (paper).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing train/val splits in --out.")
def split_cmd(
    root: Path,
    split: str,
    out: Path,
    val_count: int | None,
    val_fraction: float | None,
    seed: int,
    force: bool,
) -> None:
    """Carve search-train / search-val splits (named train, val) out of one split."""
    counts = split_coco(
        root, split, out, val_count=val_count, val_fraction=val_fraction, seed=seed,
        force=force,
    )  # fmt: skip
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))


@data_group.command("show")
@click.option("--data", "root", type=click.Path(path_type=Path), required=True)
@click.option("--split", default="val", show_default=True)
def show_cmd(root: Path, split: str) -> None:
    """Check one split and summarize it (images, boxes, classes, skipped annotations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary reports the skipped counts
        coco = load_coco(root, split)
    click.echo(coco.summary())
    click.echo("classes: " + ", ".join(f"{i}={n}" for i, n in coco.categories))


def register(group: click.Group) -> None:
    group.add_command(data_group)
