"""A training run's folder: `run.json` (what was trained and how), checkpoints,
`metrics.csv`. TensorFlow-free, so commands can check a folder before loading it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import ConfigError, DetectorConfig
from mnasfpn.searchspace.genotype import Genotype, GenotypeError
from mnasfpn.searchspace.genotype_json import genotype_from_dict

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
FORMAT = "mnasfpn-run"
FORMAT_VERSION = 1


class RunError(MnasfpnError):
    """A run folder that is missing, unreadable or made for something else."""


@dataclass(frozen=True)
class HParams:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    momentum: float = 0.9
    clip_norm: float = 10.0
    weight_decay: float = 4e-5
    bn_momentum: float = 0.997
    ema_decay: float | None = None
    checkpoint_every: int = 500
    seed: int = 0


@dataclass
class RunInfo:
    genotype: Genotype
    detector: DetectorConfig
    hparams: HParams
    backbone_weights: str  # "scratch" or the weights file it started from
    data: str
    categories: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name"} in class order
    split: str = ""  # the training split ("": a run file from before it was recorded)
    data_digest: str = ""  # mnasfpn.data.coco.annotation_digest of that split ("": as above)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "genotype": self.genotype.to_dict(),
            "detector": self.detector.to_dict(),
            "hparams": asdict(self.hparams),
            "backbone_weights": self.backbone_weights,
            "data": self.data,
            "categories": self.categories,
            "split": self.split,
            "data_digest": self.data_digest,
        }

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / RUN_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    def same_architecture(self, other: RunInfo) -> bool:
        return self.genotype == other.genotype and self.detector == other.detector


def load_run(run_dir: Path | str) -> RunInfo:
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunError(f"run folder {str(run_dir)!r} not found; train one with `mnasfpn train`")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} not found: {str(run_dir)!r} is not a training run folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RunError(f"{path}: not an mnasfpn run file (format {FORMAT!r})")
    try:
        return RunInfo(
            genotype=genotype_from_dict(doc["genotype"], source=str(path)),
            detector=DetectorConfig(**doc["detector"]),
            hparams=HParams(**doc["hparams"]),
            backbone_weights=str(doc["backbone_weights"]),
            data=str(doc["data"]),
            categories=list(doc.get("categories", [])),
            split=str(doc.get("split", "")),
            data_digest=str(doc.get("data_digest", "")),
        )
    except (KeyError, TypeError) as exc:
        raise RunError(f"{path}: missing or bad field ({exc})") from None
    except (GenotypeError, ConfigError) as exc:
        raise RunError(f"{path}: {exc}") from None


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def run_files(run_dir: Path) -> list[Path]:
    """Every file of a run (run.json, metrics.csv, the checkpoints): the inputs of the
    commands that read a run, which their outputs must never replace."""
    files = [run_dir / RUN_FILE, run_dir / METRICS_FILE]
    folder = checkpoint_dir(run_dir)
    if folder.is_dir():
        files += sorted(p for p in folder.rglob("*") if p.is_file())
    return files
