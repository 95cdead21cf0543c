"""The one-shot evaluator: a weight-sharing supernet scores thousands of children for the
cost of training one (SPOS, BigNAS, OFA), on the proxy task's own ground.

Importing this module does not import TensorFlow (the search's driver imports it).

* **One supernet per (data, space, repeat count, training budget)**, trained once on the
  proxy's frozen backbone and cached C3..C5 features (`mnasfpn.train.proxy`), then stored
  beside them (`<cache>/supernets/<key>`: under a lock, so concurrent workers never train
  it twice; with checkpoints every `checkpoint_every` steps, so a killed training resumes
  and loses at most one interval; another data set or budget gets its own folder, and a
  folder whose record names another supernet is refused).
* **What it holds** (`mnasfpn.train.supernet`): C6, every cell up to the largest repeat
  count and the SSD predictor, the widest of every choice; a child reads its channels C
  and expansions F as slices, its kernels as centre crops, each block input through its
  own 1×1 conv, its levels through the parameter-free resampling. Each training step
  trains children drawn by the sampling rule (`OneShotBudget.sampling`): `uniform` (one
  random child), `sandwich` (the widest and narrowest of a random topology plus a random
  child) or `distill` (the sandwich with in-place distillation from the widest).
* **A child's score**: its weights inherited (no training), its batch-norm statistics
  re-estimated on `bn_batches` fixed train batches, then the proxy's decode, NMS and
  pycocotools COCO evaluation on the val split (the first `val_images` of it, if set).

`prepare_supernet` trains the supernet in a spawned process (the caller stays free of
TensorFlow); `oneshot_score` scores a child in the calling process, keeping the loaded
supernet for the next call (a Ray worker scores many).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.train.oneshot_config import (
    OneShotError,
    SupernetKey,
    check_child,
)
from mnasfpn.train.proxy_config import data_fingerprint, default_cache_dir
from mnasfpn.train.spawn import run_spawned


@dataclass
class OneShotResult:
    map: float
    map50: float
    map75: float
    metrics: dict[str, float]
    bn_seconds: float  # BN re-estimation
    eval_seconds: float  # forward, NMS and COCO evaluation
    total_seconds: float  # in the caller, with loading the supernet on a first call
    val_images: int = 0
    budget: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cache(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def supernet_ready(key: SupernetKey, cache_dir: Path | str | None = None) -> bool:
    """Whether `key`'s supernet is trained and stored."""
    return (key.folder(_cache(cache_dir)) / "done.json").exists()


def prepare_supernet(
    key: SupernetKey, cache_dir: Path | str | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Train `key`'s supernet if it is not stored yet (resuming a killed training), in a
    spawned process with a progress bar on stderr; returns its record (folder, seconds,
    final loss, parameter count). Raises DataError or OneShotError in one line."""
    data_fingerprint(Path(key.data))  # missing annotation files: fail before spawning
    doc = {"data": key.data, "space": key.space, "repeats": key.repeats,
           "budget": key.budget.to_dict()}  # fmt: skip
    return run_spawned(
        "mnasfpn.train.oneshot_worker:ensure_supernet_child",
        {"key_doc": doc, "cache": str(_cache(cache_dir)), "progress": progress},
        what=f"supernet training of space {key.space!r}", error=OneShotError,
        name="oneshot-supernet",
    )  # fmt: skip


def oneshot_score(
    genotype: Genotype, key: SupernetKey, cache_dir: Path | str | None = None
) -> OneShotResult:
    """Score `genotype` with `key`'s supernet, in this process (TensorFlow loads here; the
    supernet is trained first if missing, and kept loaded for the next call). A genotype
    outside the supernet raises OneShotError (one line)."""
    g = check_child(key.space, key.repeats, genotype)
    # the worker's module: only in the process that scores
    from mnasfpn.train.oneshot_worker import scorer

    t0 = time.perf_counter()
    out = scorer(key, _cache(cache_dir), key.budget.proxy.threads).score(g)
    return OneShotResult(**out, total_seconds=time.perf_counter() - t0,
                         budget=key.budget.to_dict())  # fmt: skip
