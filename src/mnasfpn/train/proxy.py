"""The proxy task the search ranks children with: `proxy_evaluate(genotype, data, budget)`.

Importing this module does not import TensorFlow (the search's parent process imports it);
each evaluation runs in a spawned child process, so a crash or an out-of-memory kill there
raises `ProxyError` here and the caller carries on.

What a child costs, and why it stays honest (settings are `ProxyBudget`'s defaults):

* **Backbone trained once, then frozen.** The paper's proxy fine-tunes an ImageNet
  backbone for every child; ImageNet weights cannot be downloaded here and a CPU cannot
  afford it per child. So once per (data, backbone settings) a MobileNetV2 (α 0.35) is
  trained from scratch as part of a fixed hand-made detector (the NAS-FPN-lite cell, one
  repeat: not any candidate, so no child gets features co-adapted to it), then frozen.
* **Features cached.** Its C3, C4, C5 maps of every train and val image (plus the
  mirrored train images: flip augmentation survives the cache) are stored once on disk
  (float16) under a lock, so concurrent children never compute them twice or race.
* **Only what the genotype decides is trained per child**: C6 (its width is C), the
  cells and the SSD predictor, from a seeded initialization, with the project's real SSD
  loss (IoU-0.5 matching, focal + smooth-L1), momentum SGD, the paper's schedule shape
  (warm-up, ×0.1 at 80% and 93%), gradient clipping 10, for a fixed number of steps.
* **At a reduced input size** (128: the four levels are 16, 8, 4, 2 cells), so small
  objects are hard and the head's multi-scale design shows in the score.
* **mAP is measured, not estimated**: detections on the val split go through the same
  decode, NMS and pycocotools COCO evaluation as `mnasfpn eval`, in original pixels.

Latency is not the proxy's business: the search reads it from the table at the deployment
size. `benchmarks/proxy_task.py` measures a child's wall time and whether the proxy tells a
strong head from a weak one by more than its seed-to-seed spread.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnasfpn.searchspace.genotype import Block, Genotype
from mnasfpn.train.proxy_config import (
    ProxyBudget,
    ProxyError,
    data_fingerprint,
    default_cache_dir,
)
from mnasfpn.train.spawn import run_spawned


@dataclass
class ProxyResult:
    map: float  # COCO mAP@[.5:.95] on the val split
    map50: float
    map75: float
    metrics: dict[str, float]  # every COCO figure (mAP, mAP50, mAP75, small, medium, large)
    train_seconds: float  # this child's head training
    eval_seconds: float
    total_seconds: float  # wall time in the caller, process start to result
    steps: int
    backbone_seconds: float = 0.0  # training the shared backbone + caching features (0: cached)
    final_loss: float = float("nan")
    head_params: int = 0
    val_images: int = 0
    budget: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weak_head() -> Genotype:
    """A deliberately weak head of the `mnasfpn` space, the proxy's sanity check against
    `paper-mnasfpn`: C = F = 16, one repeat, no expansion, and every block built from the
    coarsest features only (one intermediate block on C5 + C6 at level 6; each output block
    reads it or the previous output), so finer levels get nothing but upsampled coarse
    features (plus a cell input as residual where its width happens to match C)."""
    return Genotype(
        space="mnasfpn",
        channels=16,
        blocks=(
            Block((2, 3), 6, 16, 3),  # node 4: C5 + C6 → level 6
            Block((3, 4), 3, 16, 3),  # outputs, levels 3..6, from coarse nodes only
            Block((4, 5), 4, 16, 3),
            Block((4, 6), 5, 16, 3),
            Block((4, 7), 6, 16, 3),
        ),
        repeats=1,
        name="weak-c16",
    )


def proxy_evaluate(
    genotype: Genotype,
    data: Path | str,
    budget: ProxyBudget,
    *,
    cache_dir: Path | str | None = None,
) -> ProxyResult:
    """Proxy-train `genotype`'s head on `data` (a folder with train and val splits, as
    `mnasfpn data synth` writes) under `budget`, in a spawned process; return its COCO
    figures on the val split. The first call for a (data, backbone settings) pair also
    trains and caches the shared backbone and its features (minutes); later ones reuse them.

    Raises DataError for unusable data, ProxyError when the child fails."""

    data = Path(data)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_fingerprint(data)  # missing annotation files: fail here, before spawning
    t0 = time.perf_counter()
    payload = run_spawned(
        "mnasfpn.train.proxy_worker:run_proxy_child",
        {"genotype_doc": genotype.to_dict(), "data": str(data), "budget_doc": budget.to_dict(),
         "cache": str(cache)},
        what=f"proxy child for {_label(genotype)}", error=ProxyError,
        timeout_s=budget.timeout_s, name=f"proxy-{genotype.name or 'child'}",
    )  # fmt: skip
    payload["total_seconds"] = time.perf_counter() - t0
    return ProxyResult(**payload)


def _label(genotype: Genotype) -> str:
    return genotype.name or f"a C={genotype.channels} genotype"
