"""The training side of the dataset contract (mnasfpn.data): batches per epoch for the
trainer, ordered categories for the run, the ground truth COCO document for evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnasfpn.data import load_coco, make_dataset
from mnasfpn.train.trainer import BatchesFn


def open_split(data_dir: Path, split: str) -> Any:
    """The CocoSet of `split` (errors are the data module's one-line MnasfpnErrors)."""
    return load_coco(data_dir, split)


def categories(coco: Any) -> list[dict[str, Any]]:
    """[{id, name}] in contiguous class order (class k is the k-th entry)."""
    index = coco.class_index
    return [
        {"id": int(i), "name": str(n)} for i, n in zip(index.coco_ids, index.names, strict=True)
    ]


def train_batches(coco: Any, input_size: int, batch_size: int, seed: int) -> BatchesFn:
    """The training stream repeats without end (reshuffled every pass), so the trainer
    stays in its epoch 0; `epoch` only seeds a fresh stream if one ever ends."""

    def make(epoch: int) -> Any:
        return make_dataset(coco, input_size, batch_size, training=True, seed=seed + epoch)

    return make


def eval_batches(coco: Any, input_size: int, batch_size: int) -> Any:
    return make_dataset(coco, input_size, batch_size, training=False)


def ground_truth(coco: Any) -> dict[str, Any]:
    """The COCO instances document the set was read from (skipped annotations left out)."""
    return coco.ground_truth()
