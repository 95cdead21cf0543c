"""SSD anchors (docs/design.md §4): levels 3..6, anchor scale 3.0, aspect ratios {1, 2, 0.5},
3 scales per octave → 9 anchors per feature-map cell.

The order is the predictor's output order: level by level, then the cell's row, then its
column (row-major, as the reshape of an [H, W, 9·4] map lays them out), then the anchor
index a = 3·octave_scale + aspect (the conv channel block a·4 .. a·4+3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnasfpn.searchspace.genotype import LEVELS

# The box coder's scale factors on (ty, tx, th, tw) against these anchors (boxes.py encodes,
# TFLite's detection post-process op decodes with the same values).
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class AnchorConfig:
    levels: tuple[int, ...] = LEVELS
    anchor_scale: float = 3.0
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
    scales_per_octave: int = 3

    @property
    def per_location(self) -> int:
        return len(self.aspect_ratios) * self.scales_per_octave


def anchor_shapes(stride: int, cfg: AnchorConfig) -> np.ndarray:
    """[per_location, 2] anchor (height, width) in pixels for a level of `stride`."""
    shapes = []
    for octave in range(cfg.scales_per_octave):
        base = cfg.anchor_scale * stride * 2.0 ** (octave / cfg.scales_per_octave)
        for aspect in cfg.aspect_ratios:  # aspect = width / height
            shapes.append((base / np.sqrt(aspect), base * np.sqrt(aspect)))
    return np.asarray(shapes, dtype=np.float64)


def anchor_centers_sizes(input_size: int, cfg: AnchorConfig | None = None) -> np.ndarray:
    """[A, 4] anchors as (ycenter, xcenter, height, width), normalized to the input side."""
    cfg = cfg or AnchorConfig()
    out = []
    for level in cfg.levels:
        stride = 2**level
        cells = input_size // stride
        centers = (np.arange(cells, dtype=np.float64) + 0.5) * stride
        cy, cx = np.meshgrid(centers, centers, indexing="ij")  # row-major: y outer
        hw = anchor_shapes(stride, cfg)
        grid = np.empty((cells, cells, len(hw), 4))
        grid[..., 0] = cy[..., None]
        grid[..., 1] = cx[..., None]
        grid[..., 2] = hw[:, 0]
        grid[..., 3] = hw[:, 1]
        out.append(grid.reshape(-1, 4))
    return (np.concatenate(out) / input_size).astype(np.float32)


def anchor_corners(input_size: int, cfg: AnchorConfig | None = None) -> np.ndarray:
    """[A, 4] anchors as normalized (ymin, xmin, ymax, xmax) (not clipped to the image)."""
    c = anchor_centers_sizes(input_size, cfg)
    half = c[:, 2:] / 2
    return np.concatenate([c[:, :2] - half, c[:, :2] + half], axis=1)


def num_anchors(input_size: int, cfg: AnchorConfig | None = None) -> int:
    cfg = cfg or AnchorConfig()
    return sum((input_size // 2**level) ** 2 for level in cfg.levels) * cfg.per_location
