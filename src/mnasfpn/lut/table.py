"""LatencyTable: the read side of a table file, for `predict`, the search and reports.

No TensorFlow: opening a table and predicting thousands of genotypes only needs SQLite,
the IR and numpy.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnasfpn.ir.config import ConfigError, DetectorConfig
from mnasfpn.lut.calibration import Calibration, CalibrationError
from mnasfpn.lut.predictor import CostModel, MissingOpError
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.searchspace.genotype import Genotype


def config_from_meta(meta: dict[str, Any], path: Path) -> DetectorConfig:
    """The detector configuration a table was measured for."""
    try:
        return DetectorConfig(
            input_size=int(meta["input_size"]),
            num_classes=int(meta["num_classes"]),
            alpha=float(meta["alpha"]),
            depth=int(meta["depth"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError):
        raise TableError(
            f"{path} has no complete settings (input size, classes, alpha, depth); "
            "it was never built: run mnasfpn-lut build"
        ) from None


def _override_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class LatencyTable:
    """A measured table held in memory: op latencies, its `DetectorConfig` and calibration."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        latencies: dict[str, float],
        calibration: Calibration | None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.latencies = latencies
        self.calibration = calibration
        self.config = config_from_meta(meta, path)
        self.model = CostModel(latencies, self.config)

    @classmethod
    def open(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        with TableStore.open(path, readonly=True) as store:
            meta = store.meta()
            latencies = store.op_latencies()
            doc = store.calibration_doc()
        calibration = None
        if doc is not None:
            try:
                calibration = Calibration.from_dict(doc)
            except CalibrationError as exc:
                raise TableError(f"{path}: {exc}") from None
        return cls(path, meta, latencies, calibration)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def spaces(self) -> list[str]:
        return list(self.meta.get("spaces", []))

    def _guard(self, fn: Any, genotypes: Sequence[Genotype], **kw: Any) -> Any:
        try:
            return fn(genotypes, **kw)
        except MissingOpError as exc:
            g = exc.genotype
            what = g.name or f"genotype #{exc.genotype_index} (space {g.space})"
            raise TableError(
                f"op {exc.key} of {what} is not in {self.path} (measured at input size "
                f"{self.input_size} for spaces {', '.join(self.spaces) or '-'}); add it with "
                f"{self.build_command(g.space)}"
            ) from None

    def build_command(self, space: str) -> str:
        """The command that adds `space`'s ops to this table, as it must be typed: same
        device, input size and file (device overrides recorded in the table included)."""
        args = [
            "mnasfpn-lut",
            "build",
            "--device",
            str(self.meta.get("profile") or "host"),
            "--space",
            space,
            "--input-size",
            str(self.input_size),
        ]
        for name, value in sorted((self.meta.get("overrides") or {}).items()):
            args += ["--set", f"{name}={_override_text(value)}"]
        args += ["--out", str(self.path)]
        return shlex.join(args)

    def predict(
        self, genotypes: Sequence[Genotype], *, calibrated: bool = True, naive: bool = False
    ) -> np.ndarray:
        """Latency (ms) of each genotype from its live ops (all ops with `naive`);
        through the fitted calibration when the table has one and `calibrated`."""
        cal = self.calibration if calibrated else None
        return self._guard(self.model.predict, genotypes, calibration=cal, naive=naive)

    def breakdown(
        self, genotypes: Sequence[Genotype], *, calibrated: bool = True
    ) -> dict[str, np.ndarray]:
        """{backbone, head, predictor, overhead, total} in ms per genotype (paper Fig. 5)."""
        cal = self.calibration if calibrated else None
        return self._guard(self.model.breakdown, genotypes, calibration=cal)

    def features(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """Summed raw table latency per (op type, part) column, see `feature_columns()`."""
        return self._guard(self.model.features, genotypes, naive=naive)

    def structure(self, genotypes: Sequence[Genotype], *, naive: bool = False) -> np.ndarray:
        """Structural quantities of the live ops per `STRUCTURE_FEATURES` column (the
        calibration's cold-weight term: fp32 weight MiB)."""
        return self._guard(self.model.structure, genotypes, naive=naive)
