"""Batch encoding of genotypes as decision rows, against the one-genotype walk."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from mnasfpn.searchspace.batch import (
    PAD,
    DecodedRows,
    as_code_array,
    decode_batch,
    encode_batch,
)
from mnasfpn.searchspace.genotype import MERGES, Genotype, GenotypeError
from mnasfpn.searchspace.named import paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, get_space, pruned, sample_genotypes

SPACE_NAMES = list(SPACES)


def _random_rows(space_name: str, n: int, seed: int) -> list[list[int]]:
    """Decision indices drawn uniformly at each decision the walk meets."""
    space = get_space(space_name)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row: list[int] = []

        def pick(d, row=row):  # type: ignore[no-untyped-def]
            i = rng.randrange(len(d.choices))
            row.append(i)
            return d.choices[i]

        space.walk(pick)
        rows.append(row)
    return rows


def _genotype_of(rows: DecodedRows, i: int) -> tuple:
    """Row i of decoded rows in the terms of a Genotype (channels, blocks as tuples)."""
    values = rows.values()
    blocks = tuple(
        (
            tuple(int(col[i, b]) for col in rows.inputs if col[i, b] >= 0),
            int(values["level"][i, b]),
            int(values["expansion"][i, b]),
            int(values["kernel"][i, b]),
            MERGES[int(values["merge"][i, b])],
        )
        for b in range(rows.level.shape[1])
    )
    return int(values["channels"][i]), blocks


def _as_tuple(g: Genotype) -> tuple:
    return g.channels, tuple((b.inputs, b.level, b.expansion, b.kernel, b.merge) for b in g.blocks)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_encode_batch_equals_encode_of_each_genotype(name: str) -> None:
    space = get_space(name)
    gs = sample_genotypes(space, 60, 3)
    # Pruned genotypes (fewer intermediate blocks) get the filler blocks `padded` adds.
    gs += [pruned(g) for g in gs[:30]]
    codes = encode_batch(space, gs)
    assert codes.dtype == np.int64 and codes.shape[0] == len(gs)
    for g, row in zip(gs, codes.tolist(), strict=True):
        want = space.encode(g)
        assert row[: len(want)] == want
        assert all(v == PAD for v in row[len(want) :])
    if space.fixed is None:
        assert any(len(pruned(g).blocks) < len(g.blocks) for g in gs)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_decode_batch_equals_decode_of_each_row(name: str) -> None:
    space = get_space(name)
    rows = _random_rows(name, 80, 5)
    values = decode_batch(space, rows)  # ragged lists are padded with PAD
    assert len(values) == len(rows)
    for i, row in enumerate(rows):
        assert _genotype_of(values, i) == _as_tuple(space.decode(row))
    # The same rows as an array (shorter rows end in PAD) decode the same.
    again = decode_batch(space, as_code_array(rows))
    for field in dataclasses.fields(DecodedRows):
        a, b = getattr(values, field.name), getattr(again, field.name)
        if field.name != "space":
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rows_of_conn_search_differ_in_length() -> None:
    space = get_space("conn-search")
    rows = _random_rows("conn-search", 40, 2)
    assert len({len(r) for r in rows}) > 1
    codes = encode_batch(space, [space.decode(r) for r in rows])
    for row, got in zip(rows, codes.tolist(), strict=True):
        assert got[: len(row)] == row and set(got[len(row) :]) <= {PAD}


@pytest.mark.parametrize("name", [n for n in SPACE_NAMES if SPACES[n].fixed is None])
def test_decode_batch_refuses_bad_rows_like_decode(name: str) -> None:
    space = get_space(name)
    good = space.encode(sample_genotypes(space, 1, seed=1)[0])
    rows = _random_rows(name, 5, 9)
    for bad, words in (
        (good[:-1], "ends before"),
        ([*good, 0], "longer"),
        ([99, *good[1:]], r"channels: index 99 out of range"),
        ([*good[:3], 50, *good[4:]], "out of range"),
        ([-1, *good[1:]], "out of range"),
    ):
        with pytest.raises(GenotypeError, match=words) as info:
            decode_batch(space, [*rows, bad], first=100)
        assert str(info.value).startswith("decision sequence #105: ")
        with pytest.raises(GenotypeError, match=words):
            space.decode(bad)


def test_decode_batch_refuses_what_is_not_a_code_array() -> None:
    space = get_space("mnasfpn")
    with pytest.raises(GenotypeError, match="2-D"):
        decode_batch(space, np.zeros(5, dtype=np.int64))
    with pytest.raises(GenotypeError, match="integers"):
        decode_batch(space, np.zeros((2, 5)))
    with pytest.raises(GenotypeError, match="not a decision index"):
        decode_batch(space, [[0, 1, "2"]])
    with pytest.raises(GenotypeError, match="fixed cell"):
        decode_batch(get_space("nasfpnlite"), [[0]])
    assert len(decode_batch(get_space("nasfpnlite"), np.zeros((3, 0), dtype=np.int64))) == 3


def test_encode_batch_refuses_genotypes_like_encode() -> None:
    space = get_space("mnasfpn")
    gs = sample_genotypes(space, 10, 4)
    paper = paper_mnasfpn()
    blocks = list(paper.blocks)
    blocks[2] = dataclasses.replace(blocks[2], kernel=9)
    for bad, words in (
        (dataclasses.replace(paper, blocks=tuple(blocks)), "kernel"),
        (dataclasses.replace(paper, channels=40), "channels"),
        (dataclasses.replace(paper, space="no-expand"), "space 'no-expand'"),
        (dataclasses.replace(paper, blocks=paper.blocks[:3]), "blocks"),
        (dataclasses.replace(paper, blocks=paper.blocks * 3), "blocks"),
    ):
        with pytest.raises(GenotypeError, match=words) as info:
            encode_batch(space, [*gs, bad])
        assert str(info.value).startswith("genotype #10")
    # an output block off its level
    moved = list(paper.blocks)
    moved[-1] = dataclasses.replace(moved[-1], level=5)
    with pytest.raises(GenotypeError, match="level"):
        encode_batch(space, [dataclasses.replace(paper, blocks=tuple(moved))])
    # F tied to C: an expansion other than C is refused
    tied = get_space("no-expand")
    g = sample_genotypes(tied, 1, 2)[0]
    wide = dataclasses.replace(g.blocks[0], expansion=g.channels * 2)
    with pytest.raises(GenotypeError, match="expansion"):
        encode_batch(tied, [dataclasses.replace(g, blocks=(wide, *g.blocks[1:]))])


def test_encode_then_decode_gives_the_padded_cell() -> None:
    for name in SPACE_NAMES:
        space = get_space(name)
        gs = [pruned(g) for g in sample_genotypes(space, 20, 8)]
        values = decode_batch(space, encode_batch(space, gs))
        for i, g in enumerate(gs):
            want = space.decode(space.encode(g))
            assert _genotype_of(values, i) == _as_tuple(want)
            assert pruned(want) == g
