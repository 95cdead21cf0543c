"""Genotype: what a search samples for the head, as plain data with JSON load/save.

A genotype describes one cell (stacked `repeats` times). Its blocks are listed in
node order: intermediate blocks first, then the four output blocks at levels 3, 4, 5, 6.
Node indices: 0..3 are the cell inputs (levels 3..6), 4 + b is block b.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        Path(path).write_text(self.to_json() + "\n")


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise GenotypeError(f"{where}: missing field '{key}'")
    value = doc[key]
    # bool is an int subclass: a JSON true must not pass as a channel count.
    if isinstance(value, bool) and kind is not bool:
        raise GenotypeError(f"{where}: field '{key}' must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise GenotypeError(f"{where}: field '{key}' must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", str: "a string", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def genotype_from_dict(doc: Any, *, source: str = "genotype") -> Genotype:
    """Parse and validate a genotype document (structure and the rules of its space)."""
    from mnasfpn.searchspace.spaces import get_space

    if not isinstance(doc, Mapping):
        raise GenotypeError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise GenotypeError(f"{source}: 'format' is {fmt!r}, expected {FORMAT!r}")
    version = doc.get("version", FORMAT_VERSION)
    # JSON true (and 1.0) compare equal to 1 in Python; only the integer 1 is version 1.
    if type(version) is not int or version != FORMAT_VERSION:
        raise GenotypeError(
            f"{source}: genotype format version {version!r} is not supported "
            f"(this mnasfpn reads version {FORMAT_VERSION})"
        )
    space_name = _require(doc, "space", str, source)
    try:
        space = get_space(space_name)
    except KeyError as exc:
        raise GenotypeError(f"{source}: {exc.args[0]}") from None
    channels = _require(doc, "channels", int, source)
    repeats = doc.get("repeats", 4)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 8:
        raise GenotypeError(f"{source}: 'repeats' must be an integer in 1..8, got {repeats!r}")
    sdo = doc.get("sdo", space.sdo)
    if not isinstance(sdo, bool):
        raise GenotypeError(f"{source}: 'sdo' must be true or false, got {sdo!r}")
    raw_blocks = _require(doc, "blocks", list, source)
    blocks = []
    for b, raw in enumerate(raw_blocks):
        where = f"{source}: block {b}"
        if not isinstance(raw, Mapping):
            raise GenotypeError(f"{where}: expected an object, got {type(raw).__name__}")
        inputs = _require(raw, "inputs", list, where)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in inputs):
            raise GenotypeError(f"{where}: field 'inputs' must list node indices, got {inputs!r}")
        merge = raw.get("merge", "add")
        if not isinstance(merge, str):
            raise GenotypeError(f"{where}: field 'merge' must be a string, got {merge!r}")
        blocks.append(
            Block(
                inputs=tuple(inputs),
                level=_require(raw, "level", int, where),
                expansion=_require(raw, "expansion", int, where),
                kernel=_require(raw, "kernel", int, where),
                merge=merge,
            )
        )
    name = doc.get("name")
    genotype = Genotype(
        space=space_name,
        channels=channels,
        blocks=tuple(blocks),
        repeats=repeats,
        sdo=sdo,
        name=name if isinstance(name, str) else None,
    )
    space.validate(genotype, source=source)
    return genotype


def genotype_from_json(text: str, *, source: str = "genotype") -> Genotype:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenotypeError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    return genotype_from_dict(doc, source=source)


def load_genotype(path: str | Path) -> Genotype:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read ({exc.strerror})") from None
    return genotype_from_json(text, source=str(path))
