"""Genotype documents: JSON round trips and one-line rejections of bad files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnasfpn.archs import load_jsonl, resolve_archs
from mnasfpn.errors import MnasfpnError
from mnasfpn.searchspace.genotype import FORMAT, FORMAT_VERSION, Genotype, GenotypeError
from mnasfpn.searchspace.genotype_json import (
    BLOCK_FIELDS,
    DOC_FIELDS,
    genotype_from_bytes,
    genotype_from_dict,
    genotype_from_json,
    load_genotype,
)
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture, paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes


def _same(a: Genotype, b: Genotype) -> None:
    assert a == b
    # `name` is excluded from equality, so check it travels too.
    assert a.name == b.name


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("repeats", [None, 3, 5])
def test_named_architectures_round_trip(name: str, repeats: int | None, tmp_path: Path) -> None:
    g = get_architecture(name, repeats)
    if repeats is not None:
        assert g.repeats == repeats
    _same(genotype_from_json(g.to_json()), g)
    _same(genotype_from_json(g.to_json(indent=None)), g)
    path = tmp_path / f"{name}.json"
    g.save(path)
    _same(load_genotype(path), g)
    _same(resolve_archs(str(path))[0], g)


@pytest.mark.parametrize("space", list(SPACES))
def test_sampled_genotypes_round_trip(space: str, tmp_path: Path) -> None:
    genotypes = sample_genotypes(space, 20, seed=7)
    for g in genotypes:
        _same(genotype_from_dict(json.loads(g.to_json())), g)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(g.to_dict()) + "\n\n" for g in genotypes))
    assert load_jsonl(path) == genotypes
    assert resolve_archs(str(path), repeats=2) == [g.with_repeats(2) for g in genotypes]


def test_document_layout() -> None:
    doc = paper_mnasfpn().to_dict()
    assert doc["format"] == FORMAT and doc["version"] == FORMAT_VERSION
    assert doc["space"] == "mnasfpn" and doc["channels"] == 48 and doc["repeats"] == 4
    assert doc["sdo"] is True and doc["name"] == "paper-mnasfpn"
    assert doc["blocks"][0] == {
        "inputs": [1, 2],
        "level": 4,
        "expansion": 256,
        "kernel": 3,
        "merge": "add",
    }
    # Optional fields take the documented defaults.
    minimal = {k: v for k, v in doc.items() if k not in ("format", "version", "repeats", "sdo")}
    for b in minimal["blocks"]:
        del b["merge"]
    assert genotype_from_dict(minimal) == paper_mnasfpn()


def test_nosdo_flag_survives() -> None:
    g = get_architecture("paper-mnasfpn-nosdo")
    assert not g.sdo
    assert not genotype_from_json(g.to_json()).sdo
    assert genotype_from_json(g.to_json()) != paper_mnasfpn()


Edit = Callable[[dict[str, Any]], Any]


def _set_block(b: int, key: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["blocks"][b][key] = value

    return edit


def _del_block(b: int, key: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        del doc["blocks"][b][key]

    return edit


def _set(key: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc[key] = value

    return edit


# (case, edit of the paper cell's document, words the message must contain)
BAD_DOCS: list[tuple[str, Edit, tuple[str, ...]]] = [
    ("input forward", _set_block(2, "inputs", [5, 7]), ("block 2", "'inputs'", "node 7")),
    ("input self", _set_block(0, "inputs", [1, 4]), ("block 0", "'inputs'", "node 4")),
    ("input negative", _set_block(1, "inputs", [-1, 4]), ("block 1", "'inputs'", "node -1")),
    ("level out of range", _set_block(0, "level", 7), ("block 0", "'level'", "7", "3..6")),
    ("level 2", _set_block(0, "level", 2), ("block 0", "'level'", "2")),
    ("output level", _set_block(1, "level", 4), ("block 1", "'level'", "must be 3")),
    ("last output level", _set_block(4, "level", 5), ("block 4", "'level'", "must be 6")),
    ("F not in space", _set_block(0, "expansion", 100), ("block 0", "'expansion'", "100")),
    ("k not in space", _set_block(3, "kernel", 4), ("block 3", "'kernel'", "4")),
    ("merge unknown", _set_block(2, "merge", "concat"), ("block 2", "'merge'", "concat")),
    ("merge type", _set_block(2, "merge", 1), ("block 2", "'merge'")),
    ("C not in space", _set("channels", 40), ("'channels'", "40")),
    ("one input", _set_block(1, "inputs", [0]), ("block 1", "'inputs'", "1 entries")),
    ("three inputs", _set_block(1, "inputs", [0, 1, 2]), ("block 1", "'inputs'", "3 entries")),
    ("repeated input", _set_block(3, "inputs", [4, 4]), ("block 3", "'inputs'", "repeats")),
    ("missing kernel", _del_block(3, "kernel"), ("block 3", "missing", "'kernel'")),
    ("missing inputs", _del_block(0, "inputs"), ("block 0", "missing", "'inputs'")),
    ("missing channels", lambda d: d.pop("channels"), ("missing", "'channels'")),
    ("missing blocks", lambda d: d.pop("blocks"), ("missing", "'blocks'")),
    ("missing space", lambda d: d.pop("space"), ("missing", "'space'")),
    ("string F", _set_block(0, "expansion", "256"), ("block 0", "'expansion'", "integer")),
    ("bool level", _set_block(0, "level", True), ("block 0", "'level'", "integer", "True")),
    ("float k", _set_block(0, "kernel", 3.0), ("block 0", "'kernel'", "integer")),
    ("bool C", _set("channels", True), ("'channels'", "integer")),
    ("string input", _set_block(0, "inputs", ["1", 2]), ("block 0", "'inputs'")),
    ("bool input", _set_block(0, "inputs", [True, 2]), ("block 0", "'inputs'")),
    ("inputs not list", _set_block(0, "inputs", 1), ("block 0", "'inputs'", "a list")),
    ("block not object", lambda d: d["blocks"].__setitem__(1, [0, 4]), ("block 1", "object")),
    ("blocks not list", _set("blocks", {}), ("'blocks'", "a list")),
    (
        "too few blocks",
        lambda d: d.__setitem__("blocks", d["blocks"][:3]),
        ("3 blocks", "4 output"),
    ),
    ("unknown space", _set("space", "nope"), ("unknown search space", "'nope'", "mnasfpn")),
    ("version 2", _set("version", 2), ("version 2", "not supported")),
    ("version true", _set("version", True), ("version True", "not supported")),
    ("version string", _set("version", "1"), ("version '1'", "not supported")),
    ("wrong format", _set("format", "other"), ("'format'",)),
    ("repeats zero", _set("repeats", 0), ("'repeats'", "1..8")),
    ("repeats string", _set("repeats", "4"), ("'repeats'",)),
    ("sdo string", _set("sdo", "yes"), ("'sdo'", "true or false")),
    ("F in no-expand", _set("space", "no-expand"), ("block 0", "'expansion'", "channels")),
    ("fixed cell changed", _set("space", "nasfpnlite"), ("fixed cell",)),
]


def _check_message(exc: GenotypeError, words: tuple[str, ...]) -> None:
    message = str(exc)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(("edit", "words"), [c[1:] for c in BAD_DOCS], ids=[c[0] for c in BAD_DOCS])
def test_bad_documents_rejected(edit: Edit, words: tuple[str, ...], tmp_path: Path) -> None:
    doc = copy.deepcopy(paper_mnasfpn().to_dict())
    edit(doc)
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(doc, source="bad.json")
    _check_message(info.value, words)
    assert str(info.value).startswith("bad.json")
    # The same through a file, where the source is the path.
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, words)
    assert str(path) in str(info.value)


def test_conn_search_document_checks() -> None:
    g = sample_genotypes("conn-search", 1, seed=3)[0]
    doc = g.to_dict()
    doc["blocks"][0]["merge"] = "se"
    with pytest.raises(GenotypeError, match=r"block 0: field 'merge' is 'se'"):
        genotype_from_dict(doc)
    doc = g.to_dict()
    doc["blocks"][6]["inputs"] = [0, 1, 2, 3, 4]
    with pytest.raises(GenotypeError, match=r"block 6: field 'inputs' has 5 entries.*2\.\.4"):
        genotype_from_dict(doc)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("this is not json", ("not valid JSON", "line 1")),
        ("", ("not valid JSON",)),
        ("   \n", ("not valid JSON",)),
        ("[1, 2]", ("expected a JSON object", "list")),
        ("42", ("expected a JSON object",)),
        ("null", ("expected a JSON object",)),
    ],
    ids=["garbage", "empty", "blank", "array", "number", "null"],
)
def test_not_a_document(text: str, words: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, words)


@pytest.mark.parametrize("indent", [None, 2])
def test_truncated_file(indent: int | None, tmp_path: Path) -> None:
    text = paper_mnasfpn().to_json(indent=indent)
    for cut in (1, len(text) // 3, len(text) // 2, len(text) - 1):
        path = tmp_path / "t.json"
        path.write_text(text[:cut])
        with pytest.raises(GenotypeError) as info:
            load_genotype(path)
        _check_message(info.value, ("not valid JSON",))


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps(paper_mnasfpn().to_dict())
    bad = copy.deepcopy(paper_mnasfpn().to_dict())
    bad["blocks"][2]["kernel"] = 9
    path = tmp_path / "g.jsonl"
    path.write_text(f"{good}\n{good}\n{json.dumps(bad)}\n")
    with pytest.raises(GenotypeError) as info:
        load_jsonl(path)
    _check_message(info.value, (f"{path}:3", "block 2", "'kernel'", "9"))
    path.write_text(f"{good}\n{good[: len(good) // 2]}\n")
    with pytest.raises(GenotypeError) as info:
        load_jsonl(path)
    _check_message(info.value, (f"{path}:2", "not valid JSON"))
    path.write_text("\n\n")
    with pytest.raises(GenotypeError) as info:
        load_jsonl(path)
    _check_message(info.value, ("no genotypes",))


def test_resolve_unknown_arch_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError) as info:
        resolve_archs("paper-mnasfpnn")
    _check_message(info.value, ("paper-mnasfpnn", "paper-mnasfpn", "file"))
    with pytest.raises(GenotypeError) as info:
        resolve_archs(str(tmp_path / "missing.json"))
    _check_message(info.value, ("missing.json",))
    unreadable = tmp_path / "dir.json"
    unreadable.mkdir()
    with pytest.raises(GenotypeError) as info:
        resolve_archs(str(unreadable))
    _check_message(info.value, ("cannot read",))


# --- hardening: typos, repeated keys, odd bytes ------------------------------------------

TYPO_DOCS: list[tuple[str, Edit, tuple[str, ...]]] = [
    ("repeat", _set("repeat", 3), ("unknown field 'repeat'", "did you mean 'repeats'")),
    ("SDO", _set("SDO", False), ("unknown field 'SDO'", "did you mean 'sdo'")),
    ("merg", _set_block(2, "merg", "se"), ("block 2", "unknown field 'merg'", "'merge'")),
    ("stray", _set_block(0, "stride", 2), ("block 0", "unknown field 'stride'")),
    ("name type", _set("name", 3), ("'name'", "string")),
]


@pytest.mark.parametrize(
    ("edit", "words"), [c[1:] for c in TYPO_DOCS], ids=[c[0] for c in TYPO_DOCS]
)
def test_unknown_fields_are_refused(edit: Edit, words: tuple[str, ...], tmp_path: Path) -> None:
    doc = copy.deepcopy(paper_mnasfpn().to_dict())
    edit(doc)
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, (str(path), *words))


def test_repeated_fields_are_refused(tmp_path: Path) -> None:
    text = paper_mnasfpn().to_json(indent=None)
    path = tmp_path / "dup.json"
    path.write_text(text.replace('"repeats": 4', '"repeats": 4, "repeats": 3'))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, (str(path), "'repeats'", "more than once"))
    # In a block: the third block's kernel given twice.
    doc = paper_mnasfpn().to_dict()
    blocks = [json.dumps(b) for b in doc["blocks"]]
    blocks[2] = blocks[2].replace('"kernel": 3', '"kernel": 3, "kernel": 5')
    text = json.dumps({k: v for k, v in doc.items() if k != "blocks"})
    path.write_text(text[:-1] + ', "blocks": [' + ", ".join(blocks) + "]}")
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, (str(path), "block 2", "'kernel'", "more than once"))


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    g = paper_mnasfpn()
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + g.to_json().encode())
    assert load_genotype(path) == g
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + (g.to_json(indent=None) + "\r\n").encode() * 2)
    assert resolve_archs(str(lines)) == [g, g]


@pytest.mark.parametrize("suffix", [".JSONL", ".Jsonl", ".jsonl"])
def test_jsonl_suffix_in_any_case(suffix: str, tmp_path: Path) -> None:
    genotypes = sample_genotypes("mnasfpn", 3, seed=1)
    path = tmp_path / f"many{suffix}"
    path.write_text("".join(g.to_json(indent=None) + "\n" for g in genotypes))
    assert resolve_archs(str(path)) == genotypes


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xfe{}", ("not UTF-8", "byte 0")),
        (b'{"space": "mnasfpn\xc3"}', ("not UTF-8",)),
        (b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
        (b'{"channels": ' + b"9" * 5000 + b"}", ("not valid JSON",)),
        (
            b'{"space": "mnasfpn", "channels": ' + b"9" * 100 + b', "blocks": []}',
            ("'channels'", "out of range"),
        ),
        (b'{"space": "mnasfpn", "channels": NaN, "blocks": []}', ("NaN",)),
        (
            b'{"space": "mnasfpn", "channels": 48, "blocks": [{"inputs": [Infinity, 1]}]}',
            ("Infinity",),
        ),
        (b'{"space": "x' + b"y" * 10_000 + b'"}', ("unknown search space",)),
    ],
    ids=["utf16-bom", "bad-utf8", "deep", "huge-int", "big-int", "nan", "infinity", "long-name"],
)
def test_odd_bytes_are_one_line(data: bytes, words: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_bytes(data)
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    _check_message(info.value, words)
    assert len(str(info.value)) < 300 + len(str(path))


# Documents near the real schema: field names the loader knows (and near-misses), values of
# every JSON type, nested a little. Most are invalid; none may escape as another error.
_keys = st.sampled_from([*DOC_FIELDS, *BLOCK_FIELDS, "repeat", "SDO", "merg", ""])
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.sampled_from([*SPACES, "add", "se", FORMAT])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=30,
)


def _mutated_paper_doc(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(paper_mnasfpn().to_dict())
    for _ in range(draw(st.integers(0, 3))):
        have = doc.get("blocks")  # a mutation may have made it any JSON value
        blocks = [b for b in have if isinstance(b, dict)] if isinstance(have, list) else []
        target = draw(st.sampled_from(blocks)) if blocks and draw(st.booleans()) else doc
        target[draw(_keys)] = draw(_json)
    return doc


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "paper"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    doc = draw(_json) if kind == "json" else _mutated_paper_doc(draw)
    text = json.dumps(doc)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=4)) + text[cut:]
    return text.encode("utf-8", errors="surrogatepass")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_any_bytes_give_a_genotype_or_a_project_error(data: bytes) -> None:
    try:
        g = genotype_from_bytes(data, source="fuzz.json")
    except MnasfpnError as exc:
        message = str(exc)
        assert message.startswith("fuzz.json") and "\n" not in message
        assert len(message) < 400
    else:
        assert isinstance(g, Genotype)
        assert genotype_from_json(g.to_json()) == g
