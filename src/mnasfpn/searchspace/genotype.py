"""Genotype: what a search samples for the head, as plain data (reading a genotype
document, which checks it against its space, is `genotype_json`).

A genotype describes one cell (stacked `repeats` times). Its blocks are listed in
node order: intermediate blocks first, then the four output blocks at levels 3, 4, 5, 6.
Node indices: 0..3 are the cell inputs (levels 3..6), 4 + b is block b.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError

LEVELS: tuple[int, ...] = (3, 4, 5, 6)
NUM_CELL_INPUTS = len(LEVELS)
MERGES: tuple[str, ...] = ("add", "se")
FORMAT = "mnasfpn-genotype"
FORMAT_VERSION = 1


class GenotypeError(MnasfpnError, ValueError):
    """A genotype document that is not a valid architecture; the message is one line."""


@dataclass(frozen=True)
class Block:
    inputs: tuple[int, ...]
    level: int
    expansion: int
    kernel: int
    merge: str = "add"

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "level": self.level,
            "expansion": self.expansion,
            "kernel": self.kernel,
            "merge": self.merge,
        }


@dataclass(frozen=True)
class Genotype:
    """One MnasFPN-family head: a cell of blocks, its channel width C and repeat count."""

    space: str
    channels: int
    blocks: tuple[Block, ...]
    repeats: int = 4
    sdo: bool = True
    name: str | None = field(default=None, compare=False)

    @property
    def num_intermediate(self) -> int:
        return len(self.blocks) - NUM_CELL_INPUTS

    def is_output(self, block_index: int) -> bool:
        return block_index >= self.num_intermediate

    def live(self) -> list[bool]:
        """Per block, whether an output block reaches it; the others build no live op
        (paper §3.4). Blocks read earlier nodes only, so one sweep from the last block back
        marks them."""
        live = [False] * self.num_intermediate + [True] * NUM_CELL_INPUTS
        for b in range(len(self.blocks) - 1, -1, -1):
            if live[b]:
                for i in self.blocks[b].inputs:
                    if NUM_CELL_INPUTS <= i < NUM_CELL_INPUTS + b:
                        live[i - NUM_CELL_INPUTS] = True
        return live

    def with_repeats(self, repeats: int) -> Genotype:
        return Genotype(self.space, self.channels, self.blocks, repeats, self.sdo, self.name)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "space": self.space,
            "channels": self.channels,
            "repeats": self.repeats,
            "sdo": self.sdo,
            "blocks": [b.to_dict() for b in self.blocks],
        }
        if self.name:
            doc["name"] = self.name
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        write_atomic(path, self.to_json() + "\n")
