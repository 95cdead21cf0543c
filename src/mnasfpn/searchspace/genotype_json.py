"""Reading genotype documents (JSON): strict parsing, every field checked, and the
genotype checked against the rules of the space it names; any failure is one
`GenotypeError` line."""

from __future__ import annotations

import difflib
import json
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.searchspace.genotype import (
    FORMAT,
    FORMAT_VERSION,
    MERGES,
    Block,
    Genotype,
    GenotypeError,
)
from mnasfpn.searchspace.spaces import SPACES

# The fields a document may hold; anything else is a typo ("merg", "repeat", "SDO") that
# would otherwise leave a default silently in force.
DOC_FIELDS = ("format", "version", "space", "channels", "repeats", "sdo", "blocks", "name")
BLOCK_FIELDS = ("inputs", "level", "expansion", "kernel", "merge")
# Integers a genotype can sensibly hold; larger ones are refused before any message prints
# a number thousands of digits long.
_INT_LIMIT = 1 << 31
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 40


def _show(value: Any) -> str:
    """A short, single-line repr for messages (deep, long or huge values are abbreviated)."""
    try:
        return _SHOW.repr(value).replace("\n", " ")
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: list[str]


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj and key not in obj.duplicates:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_keys(doc: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in getattr(doc, "duplicates", ()):
        raise GenotypeError(f"{where}: field {key!r} is given more than once; keep one")
    for key in doc:
        if key not in allowed:
            close = difflib.get_close_matches(str(key).lower(), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
            raise GenotypeError(f"{where}: unknown field {_show(key)} ({hint})")


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise GenotypeError(f"{where}: missing field '{key}'")
    value = doc[key]
    # bool is an int subclass: a JSON true must not pass as a channel count.
    if isinstance(value, bool) and kind is not bool:
        raise GenotypeError(f"{where}: field '{key}' must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise GenotypeError(
            f"{where}: field '{key}' must be {_kind_name(kind)}, got {_show(value)}"
        )
    if isinstance(value, int) and not -_INT_LIMIT < value < _INT_LIMIT:
        raise GenotypeError(f"{where}: field '{key}' is {_show(value)}, far out of range")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", str: "a string", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _block_from_dict(raw: Any, where: str) -> Block:
    if not isinstance(raw, Mapping):
        raise GenotypeError(f"{where}: expected an object, got {type(raw).__name__}")
    _check_keys(raw, BLOCK_FIELDS, where)
    inputs = _require(raw, "inputs", list, where)
    if not all(
        isinstance(i, int) and not isinstance(i, bool) and -_INT_LIMIT < i < _INT_LIMIT
        for i in inputs
    ):
        raise GenotypeError(f"{where}: field 'inputs' must list node indices, got {_show(inputs)}")
    merge = raw.get("merge", "add")
    if not isinstance(merge, str):
        raise GenotypeError(f"{where}: field 'merge' must be a string, got {_show(merge)}")
    if merge not in MERGES:
        raise GenotypeError(f"{where}: field 'merge' is {_show(merge)}, allowed {list(MERGES)}")
    return Block(
        inputs=tuple(inputs),
        level=_require(raw, "level", int, where),
        expansion=_require(raw, "expansion", int, where),
        kernel=_require(raw, "kernel", int, where),
        merge=merge,
    )


def genotype_from_dict(doc: Any, *, source: str = "genotype") -> Genotype:
    """Parse and validate a genotype document (structure and the rules of its space).
    Unknown and repeated fields are refused: a typo must not leave a default in force."""
    if not isinstance(doc, Mapping):
        raise GenotypeError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    _check_keys(doc, DOC_FIELDS, source)
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise GenotypeError(f"{source}: 'format' is {_show(fmt)}, expected {FORMAT!r}")
    version = doc.get("version", FORMAT_VERSION)
    # JSON true (and 1.0) compare equal to 1 in Python; only the integer 1 is version 1.
    if type(version) is not int or version != FORMAT_VERSION:
        raise GenotypeError(
            f"{source}: genotype format version {_show(version)} is not supported "
            f"(this mnasfpn reads version {FORMAT_VERSION})"
        )
    space_name = _require(doc, "space", str, source)
    try:
        space = SPACES.get(space_name)
    except MnasfpnError as exc:
        raise GenotypeError(f"{source}: {exc}") from None
    channels = _require(doc, "channels", int, source)
    repeats = doc.get("repeats", 4)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 8:
        raise GenotypeError(f"{source}: 'repeats' must be an integer in 1..8, got {_show(repeats)}")
    sdo = doc.get("sdo", space.sdo)
    if not isinstance(sdo, bool):
        raise GenotypeError(f"{source}: 'sdo' must be true or false, got {_show(sdo)}")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise GenotypeError(f"{source}: 'name' must be a string, got {_show(name)}")
    raw_blocks = _require(doc, "blocks", list, source)
    blocks = tuple(
        _block_from_dict(raw, f"{source}: block {b}") for b, raw in enumerate(raw_blocks)
    )
    genotype = Genotype(
        space=space_name,
        channels=channels,
        blocks=blocks,
        repeats=repeats,
        sdo=sdo,
        name=name,
    )
    space.validate(genotype, source=source)
    return genotype


def parse_json(text: str, *, source: str) -> Any:
    """Strict JSON: NaN/Infinity refused, repeated keys remembered for `_check_keys`, and
    every failure (bad syntax, deep nesting, huge numbers) one GenotypeError line."""
    try:
        return json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise GenotypeError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise GenotypeError(f"{source}: not a genotype (JSON nested too deeply)") from None
    except ValueError as exc:  # NaN/Infinity, or an integer past Python's digit limit
        raise GenotypeError(f"{source}: not valid JSON ({_show(str(exc))})") from None


def genotype_from_json(text: str, *, source: str = "genotype") -> Genotype:
    return genotype_from_dict(parse_json(text, source=source), source=source)


def decode_text(data: bytes, *, source: str) -> str:
    """UTF-8 text of a genotype file; a byte-order mark (as some editors save) is dropped."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GenotypeError(
            f"{source}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); "
            "save the genotype as UTF-8 JSON"
        ) from None


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_text(data, source=str(path))


def genotype_from_bytes(data: bytes, *, source: str = "genotype") -> Genotype:
    """Any bytes → a Genotype or one GenotypeError line."""
    return genotype_from_json(decode_text(data, source=source), source=source)


def load_genotype(path: str | Path) -> Genotype:
    path = Path(path)
    return genotype_from_json(read_text(path), source=str(path))
