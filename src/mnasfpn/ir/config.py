"""What a detector is built for, apart from its head: one place for the defaults that the
IR, the table, validation, training and search all share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.searchspace.genotype import LEVELS

MIN_LEVEL, MAX_LEVEL = LEVELS[0], LEVELS[-1]


class ConfigError(MnasfpnError, ValueError):
    """A detector configuration that cannot be built (bad input size, width, ...)."""


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "mobilenet_v2"
    alpha: float = 1.0


@dataclass(frozen=True)
class PredictorConfig:
    depth: int = 64
    num_layers: int = 4
    kernel: int = 3
    # Levels 3..6, aspect ratios {1, 2, 0.5}, 3 scales per octave.
    anchors_per_location: int = 9


def check_input_size(input_size: int) -> None:
    if input_size <= 0 or input_size % (2**MAX_LEVEL):
        raise ValueError(
            f"input size {input_size} must be a positive multiple of {2**MAX_LEVEL} "
            f"(levels {MIN_LEVEL}..{MAX_LEVEL} need exact strides), e.g. 320"
        )


@dataclass(frozen=True)
class DetectorConfig:
    """Input size, classes, backbone width and predictor depth (the paper's defaults)."""

    input_size: int = 320
    num_classes: int = 90
    alpha: float = 1.0
    depth: int = 64

    def __post_init__(self) -> None:
        try:
            check_input_size(self.input_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")
        if not 0 < self.alpha <= 2:
            raise ConfigError(f"backbone alpha must be in (0, 2], got {self.alpha}")
        if self.depth < 1:
            raise ConfigError(f"predictor depth must be at least 1, got {self.depth}")

    @property
    def backbone(self) -> BackboneConfig:
        return BackboneConfig(alpha=self.alpha)

    @property
    def predictor(self) -> PredictorConfig:
        return PredictorConfig(depth=self.depth)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
