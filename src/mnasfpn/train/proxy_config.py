"""What decides a proxy score and where its shared cache lives: `ProxyBudget`, the data
fingerprint and the cache folders. TensorFlow-free; shared by the caller's side
(`mnasfpn.train.proxy`) and the child's (`mnasfpn.train.proxy_worker`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnasfpn.cache import cache_root
from mnasfpn.data.coco import DataError
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import check_input_size

# Bump when a change makes cached backbones / features incompatible.
CACHE_VERSION = 1


class ProxyError(MnasfpnError):
    """A proxy child failed (crashed, was killed, ran out of time or memory)."""


class ProxyBudgetError(MnasfpnError, ValueError):
    """Proxy settings that cannot run (input size not a multiple of 64, a zero step count)."""


@dataclass(frozen=True)
class ProxyBudget:
    """Everything that decides a proxy score. Children are comparable only under one budget;
    `seed` changes the child's initialization and batch order (not the backbone)."""

    input_size: int = 128
    # Measured (README): at 800 steps the paper cell trailed a weak head, at 1600 it led by
    # about its seed range, at 3200 by 0.033 mAP (2x+ that range).
    steps: int = 3200
    batch_size: int = 16
    lr: float = 0.1
    alpha: float = 0.35
    seed: int = 0
    depth: int = 64  # SSD predictor depth D
    warmup_frac: float = 0.05
    weight_decay: float = 4e-5
    # The shared frozen backbone (trained once per data set and these settings).
    backbone_steps: int = 1500
    backbone_batch_size: int = 16
    backbone_lr: float = 0.08
    backbone_seed: int = 0
    backbone_head: str = "nasfpnlite"
    backbone_head_repeats: int = 1
    flip_views: bool = True  # also cache mirrored train images
    # Child process limits: TensorFlow threads (None: its default) and a wall-clock limit
    # for the child's own work; waiting for or building the shared backbone does not count
    # (a limit shorter than that build would otherwise fail every child, forever).
    threads: int | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        try:
            check_input_size(self.input_size)
        except ValueError as exc:
            raise ProxyBudgetError(f"proxy input size: {exc}") from None
        positive = ("steps", "batch_size", "lr", "depth", "backbone_steps",
                    "backbone_batch_size", "backbone_lr")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ProxyBudgetError(f"proxy {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.alpha <= 2:
            raise ProxyBudgetError(f"proxy backbone alpha must be in (0, 2], got {self.alpha}")
        if self.threads is not None and self.threads < 1:
            raise ProxyBudgetError(f"proxy threads must be at least 1, got {self.threads}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ProxyBudgetError(f"proxy timeout must be positive, got {self.timeout_s}")

    def backbone_fields(self) -> dict[str, Any]:
        """The settings the cached backbone and features depend on."""
        keys = (
            "input_size", "alpha", "backbone_steps", "backbone_batch_size", "backbone_lr",
            "backbone_seed", "backbone_head", "backbone_head_repeats", "flip_views",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_fingerprint(data: Path) -> str:
    """A digest of where the train and val annotation files are, their sizes and change
    times (not their content: COCO's train file is 450 MB and every child computes this),
    and the image folders' paths. Rewriting a split makes a new cache entry."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        ann = data / "annotations" / f"instances_{split}.json"
        try:
            st = ann.stat()
            h.update(f"{ann.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError as exc:
            raise DataError(
                f"proxy data {data} needs annotations/instances_{split}.json ({exc.strerror})"
            ) from None
        h.update(str((data / split).resolve()).encode())
    return h.hexdigest()[:16]


def backbone_cache_dir(cache_dir: Path, data: Path, budget: ProxyBudget) -> Path:
    key = json.dumps({"v": CACHE_VERSION, "data": data_fingerprint(data),
                      **budget.backbone_fields()}, sort_keys=True)  # fmt: skip
    return cache_dir / hashlib.sha256(key.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return cache_root() / "proxy"
