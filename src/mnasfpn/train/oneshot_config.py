"""What decides a one-shot score: `OneShotBudget` (the supernet's training and a child's
scoring), and where a trained supernet lives. TensorFlow-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.searchspace.genotype import GenotypeError
from mnasfpn.searchspace.spaces import get_space, pruned
from mnasfpn.train.proxy_config import CACHE_VERSION, ProxyBudget, data_fingerprint

# Bump when a change makes trained supernets incompatible (weights, numbering, training).
SUPERNET_VERSION = 1
# uniform: one random child per step (single path, SPOS); sandwich: the widest and the
# narrowest child of one random topology plus a random child (BigNAS' sandwich rule);
# distill: the sandwich, the other two learning from the widest one's outputs (in-place
# distillation).
SAMPLING_RULES = ("uniform", "sandwich", "distill")


class OneShotBudgetError(MnasfpnError, ValueError):
    """One-shot settings that cannot run."""


class OneShotError(MnasfpnError):
    """Supernet training or a one-shot child failed."""


@dataclass(frozen=True)
class OneShotBudget:
    """The supernet's training (once per data set, space, repeat count and these settings)
    and how each child is scored. `proxy` gives the shared frozen backbone, its cached
    features, the input size and the predictor depth (its own step count, batch and rate
    are the stand-alone children's: the finalists')."""

    proxy: ProxyBudget = field(default_factory=ProxyBudget)
    steps: int = 3200
    batch_size: int = 16
    lr: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 4e-5
    sampling: str = "uniform"
    seed: int = 0
    # Scoring: BN statistics re-estimated on this many train batches of this size (the same
    # images for every child), then COCO mAP on the val split (its first `val_images`).
    bn_batches: int = 2
    bn_batch_size: int = 32
    val_images: int | None = None
    # How it runs, not what it computes: checkpoint interval of the supernet's training.
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if isinstance(self.proxy, dict):  # from to_dict()
            object.__setattr__(self, "proxy", ProxyBudget(**self.proxy))
        positive = ("steps", "batch_size", "lr", "bn_batches", "bn_batch_size",
                    "checkpoint_every")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise OneShotBudgetError(
                    f"one-shot {name} must be positive, got {getattr(self, name)}"
                )
        if not 0 <= self.warmup_frac < 1:
            raise OneShotBudgetError(f"one-shot warmup_frac must be in [0, 1), got "
                                     f"{self.warmup_frac}")  # fmt: skip
        if self.weight_decay < 0:
            raise OneShotBudgetError(f"one-shot weight_decay must be >= 0, got {self.weight_decay}")
        if self.sampling not in SAMPLING_RULES:
            raise OneShotBudgetError(
                f"one-shot sampling rule {self.sampling!r} is not one of "
                f"{', '.join(SAMPLING_RULES)}"
            )
        if self.val_images is not None and self.val_images < 1:
            raise OneShotBudgetError(f"one-shot val_images must be positive, got {self.val_images}")

    def training_fields(self) -> dict[str, Any]:
        """What the trained supernet depends on (besides data, space and repeats)."""
        keys = ("steps", "batch_size", "lr", "warmup_frac", "weight_decay", "sampling", "seed")
        return {**{k: getattr(self, k) for k in keys},
                "backbone": self.proxy.backbone_fields(), "depth": self.proxy.depth}  # fmt: skip

    def scoring_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("bn_batches", "bn_batch_size", "val_images")}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["proxy"] = asdict(self.proxy)
        return out

    def with_changes(self, **changes: Any) -> OneShotBudget:
        return replace(self, **changes)


@dataclass(frozen=True)
class SupernetKey:
    """One trained supernet: data, space, repeat count and training settings."""

    data: str  # the data folder (its fingerprint goes in the identity)
    space: str
    repeats: int
    budget: OneShotBudget

    def identity(self) -> dict[str, Any]:
        return {
            "v": [CACHE_VERSION, SUPERNET_VERSION],
            "data": data_fingerprint(Path(self.data)),
            "space": self.space,
            "repeats": self.repeats,
            "training": self.budget.training_fields(),
        }

    def folder(self, cache_dir: Path) -> Path:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode())
        return cache_dir / "supernets" / digest.hexdigest()[:16]


def check_child(space_name: str, repeats: int, genotype: Any) -> Any:
    """`genotype` as a supernet of `space_name` with `repeats` cells holds it (pruned), or a
    one-line OneShotError saying why it is outside."""
    sp = get_space(space_name)
    if genotype.space != sp.name:  # a known cell under another name (paper-mnasfpn) may fit
        genotype = replace(genotype, space=sp.name)
    label = genotype.name or "the genotype"
    where = f"the supernet of space {sp.name!r} ({repeats} repeats)"
    if genotype.repeats > repeats:
        raise OneShotError(f"{label} has {genotype.repeats} repeats, more than {where}")
    if genotype.sdo != sp.sdo:
        raise OneShotError(f"{label} has sdo={genotype.sdo}; {where} has sdo={sp.sdo}")
    try:
        sp.validate(genotype, source=label)
    except GenotypeError as exc:
        raise OneShotError(f"{exc}: outside {where}") from None
    return pruned(genotype)
