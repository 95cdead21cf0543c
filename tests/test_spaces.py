"""Search spaces: sampling, validation and the decision sequence, as properties."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.searchspace.genotype import LEVELS, Genotype, GenotypeError
from mnasfpn.searchspace.genotype_json import genotype_from_json
from mnasfpn.searchspace.named import get_architecture, paper_mnasfpn
from mnasfpn.searchspace.spaces import (
    CHANNELS,
    EXPANSIONS,
    SPACES,
    Decision,
    SearchSpace,
    get_space,
    pruned,
    sample_genotypes,
)

SPACE_NAMES = list(SPACES)
PROPERTY = settings(max_examples=100, deadline=None)


class DrawnChoices:
    """Stands in for `random.Random` in `SearchSpace.sample`, drawing each decision's
    index from hypothesis within that decision's range and recording it."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.indices: list[int] = []

    def choice(self, seq: Sequence[object]) -> object:
        i = self.data.draw(st.integers(0, len(seq) - 1))
        self.indices.append(i)
        return seq[i]


def _check_space_rules(space: SearchSpace, g: Genotype) -> None:
    """The space's constraints, restated independently of `validate`."""
    assert g.space == space.name
    if space.fixed is not None:
        assert g == space.fixed
        return
    assert g.channels in space.channels
    assert g.sdo == space.sdo
    assert g.num_intermediate == space.num_intermediate
    for b, block in enumerate(g.blocks):
        node = 4 + b
        assert space.min_inputs <= len(block.inputs) <= space.max_inputs
        assert len(set(block.inputs)) == len(block.inputs)
        assert all(0 <= i < node for i in block.inputs)
        if b >= space.num_intermediate:
            assert block.level == LEVELS[b - space.num_intermediate]
        else:
            assert block.level in LEVELS
        if space.expansions is None:
            assert block.expansion == g.channels
        else:
            assert block.expansion in space.expansions
        assert block.kernel in space.kernels
        assert block.merge in space.merges


def _decisions(space: SearchSpace, g: Genotype) -> list[Decision]:
    """The decisions `g` walks through."""
    return space.decode_decisions(space.encode(g))


@pytest.mark.parametrize("name", SPACE_NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1))
def test_sampled_genotype_properties(name: str, seed: int) -> None:
    space = get_space(name)
    g = space.sample(random.Random(seed))
    space.validate(g)
    _check_space_rules(space, g)
    assert genotype_from_json(g.to_json()) == g
    assert genotype_from_json(json.dumps(g.to_dict(), separators=(",", ":"))) == g
    indices = space.encode(g)
    decisions = space.decode_decisions(indices)
    assert len(indices) == len(decisions)
    assert space.decode(indices) == g
    assert space.decode(indices, repeats=2) == g.with_repeats(2)


@pytest.mark.parametrize("name", SPACE_NAMES)
@PROPERTY
@given(data=st.data())
def test_decoded_random_indices_are_valid(name: str, data: st.DataObject) -> None:
    space = get_space(name)
    drawn = DrawnChoices(data)
    sampled = space.sample(drawn)  # type: ignore[arg-type]
    g = space.decode(drawn.indices)
    assert g == sampled
    space.validate(g)
    _check_space_rules(space, g)
    assert space.encode(g) == drawn.indices
    assert genotype_from_json(g.to_json()) == g


@pytest.mark.parametrize("name", [n for n in SPACE_NAMES if SPACES[n].fixed is None])
def test_decode_rejects_bad_sequences(name: str) -> None:
    space = get_space(name)
    indices = space.encode(sample_genotypes(space, 1, seed=1)[0])
    with pytest.raises(GenotypeError, match="ends before"):
        space.decode(indices[:-1])
    with pytest.raises(GenotypeError, match="longer"):
        space.decode([*indices, 0])
    with pytest.raises(GenotypeError, match=r"channels: index 99 out of range"):
        space.decode([99, *indices[1:]])
    with pytest.raises(GenotypeError, match="out of range"):
        space.decode([-1, *indices[1:]])


def test_decision_schema_of_mnasfpn() -> None:
    space = get_space("mnasfpn")
    g = sample_genotypes(space, 1, seed=0)[0]
    names = [d.name for d in _decisions(space, g)]
    # C, then per intermediate block: 2 inputs, level, F, k, merge; output blocks skip level.
    assert len(names) == 1 + 5 * 6 + 4 * 5
    assert names[:7] == [
        "channels",
        "block0.input0",
        "block0.input1",
        "block0.level",
        "block0.expansion",
        "block0.kernel",
        "block0.merge",
    ]
    decisions = {d.name: d for d in _decisions(space, g)}
    assert decisions["channels"].choices == CHANNELS
    assert decisions["block8.expansion"].choices == EXPANSIONS
    assert "block8.level" not in decisions
    # The second input of a block may not repeat the first.
    first = g.blocks[3].inputs[0]
    assert first not in decisions["block3.input1"].choices
    assert len(decisions["block3.input1"].choices) == 4 + 3 - 1


def test_conn_search_input_counts_vary() -> None:
    counts = {len(b.inputs) for g in sample_genotypes("conn-search", 50, seed=0) for b in g.blocks}
    assert counts == {2, 3, 4}


def test_space_variants() -> None:
    for g in sample_genotypes("no-expand", 20, seed=2):
        assert all(b.expansion == g.channels for b in g.blocks)
    for g in sample_genotypes("nasfpnlite-s", 20, seed=2):
        assert g.channels == 64 and not g.sdo
        assert all(b.kernel == 3 and b.expansion == 64 for b in g.blocks)
    fixed = sample_genotypes("nasfpnlite", 3, seed=2)
    assert fixed[0] == fixed[1] == fixed[2] == SPACES["nasfpnlite"].fixed
    assert get_space("nasfpnlite").encode(fixed[0]) == []


def test_sampling_is_deterministic_per_seed() -> None:
    assert sample_genotypes("mnasfpn", 5, seed=11) == sample_genotypes("mnasfpn", 5, seed=11)
    assert sample_genotypes("mnasfpn", 5, seed=11) != sample_genotypes("mnasfpn", 5, seed=12)


def test_paper_cell_round_trips_through_the_decisions() -> None:
    # The paper cell has one intermediate block; the decisions decide five. Its sequence
    # places four filler blocks that no block reads, and pruning gives the cell back.
    paper = paper_mnasfpn()
    for name in ("mnasfpn", "conn-search"):
        space = get_space(name)
        g = replace(paper, space=name)
        space.validate(g)
        indices = space.encode(g)
        assert len(indices) == len(_decisions(space, g))
        decoded = space.decode(indices)
        assert decoded.num_intermediate == 5
        assert pruned(decoded) == g
        assert space.canonical(indices) == g
        # The canonical sequence is a fixed point: encoding the decoded cell gives it again.
        assert space.encode(decoded) == indices


def test_nasfpnlite_round_trips_through_nasfpnlite_s() -> None:
    cell = get_architecture("nasfpnlite")
    space = get_space("nasfpnlite-s")
    g = replace(cell, space="nasfpnlite-s")
    space.validate(g)
    assert space.canonical(space.encode(g), repeats=6) == g


def _live_keys(g: Genotype) -> list[str]:
    return sorted(build_opgraph(g, input_size=64).keys())


@pytest.mark.parametrize("name", [n for n in SPACE_NAMES if SPACES[n].fixed is None])
def test_pruning_keeps_the_live_ops_and_round_trips(name: str) -> None:
    space = get_space(name)
    pruned_any = False
    for g in sample_genotypes(space, 20, seed=3):
        p = pruned(g)
        space.validate(p)
        assert pruned(p) == p
        pruned_any |= p != g
        assert all(len(b.inputs) for b in p.blocks)
        assert _live_keys(p) == _live_keys(g)
        assert space.canonical(space.encode(p)) == p
    assert pruned_any  # random cells often leave blocks unread


def test_pruning_drops_blocks_read_only_by_dead_blocks() -> None:
    # block1 is read only by block2, which no output reads: both go, block0 stays.
    base = paper_mnasfpn()
    space = get_space("mnasfpn")
    shift = 2  # two more intermediate blocks before the outputs
    outputs = [
        replace(b, inputs=tuple(i + shift if i >= 5 else i for i in b.inputs))
        for b in base.blocks[1:]
    ]
    b0 = base.blocks[0]
    blocks = (b0, replace(b0, inputs=(4, 1)), replace(b0, inputs=(5, 0)), *outputs)
    g = replace(base, blocks=blocks)
    space.validate(g)
    p = pruned(g)
    assert p.num_intermediate == 1
    assert p.blocks[0] == base.blocks[0]
    assert p == base


@pytest.mark.parametrize("name", [n for n in SPACE_NAMES if SPACES[n].fixed is None])
def test_decision_slots_cover_every_walk(name: str) -> None:
    space = get_space(name)
    slots = space.decision_slots()
    order = {d.name: i for i, d in enumerate(slots)}
    assert len(order) == len(slots)
    for g in sample_genotypes(space, 20, seed=4):
        positions = []
        for d in _decisions(space, g):
            assert set(d.choices) <= set(slots[order[d.name]].choices), d.name
            positions.append(order[d.name])
        assert positions == sorted(positions)


def test_walker_is_the_walk() -> None:
    space = get_space("conn-search")
    g = sample_genotypes(space, 1, seed=9)[0]
    values = [d.choices[i] for d, i in zip(_decisions(space, g), space.encode(g), strict=True)]
    walk = space.walker()
    decision = next(walk)
    with pytest.raises(StopIteration) as done:
        for v in values:
            assert v in decision.choices
            decision = walk.send(v)
    assert done.value.value == g


def test_encode_rejects_other_space() -> None:
    g = sample_genotypes("mnasfpn", 1, seed=0)[0]
    with pytest.raises(GenotypeError, match="space 'mnasfpn', not 'no-expand'"):
        get_space("no-expand").encode(g)


def test_unknown_space() -> None:
    with pytest.raises(MnasfpnError, match="unknown search space 'x'; known: mnasfpn"):
        get_space("x")


@pytest.mark.parametrize("name", ["mnasfpn", "no-expand", "nasfpnlite-s"])
def test_cardinality_is_product_of_choices(name: str) -> None:
    # With exactly two inputs per block every path through the decisions has the same
    # branching, so the count is the product of one path's choice counts.
    space = get_space(name)
    for g in sample_genotypes(space, 3, seed=5):
        assert space.cardinality() == math.prod(len(d.choices) for d in _decisions(space, g))


def test_cardinality_of_conn_search() -> None:
    space = get_space("conn-search")

    def ordered(n: int) -> int:  # ordered picks of 2, 3 or 4 distinct nodes out of n
        return n * (n - 1) * (1 + (n - 2) * (1 + (n - 3)))

    per_block = [ordered(4 + b) * (4 if b < 5 else 1) * 7 * 3 for b in range(9)]
    assert space.cardinality() == 6 * math.prod(per_block)
    assert get_space("nasfpnlite").cardinality() == 1
    assert 1e33 < get_space("mnasfpn").cardinality() < 1e34


def test_a_space_offering_se_with_other_than_two_inputs_is_refused_where_it_is_defined() -> None:
    # the se merge gates x1 by x0: a third input would crash the IR builder of every genotype
    with pytest.raises(MnasfpnError, match="se merge takes exactly 2 inputs"):
        SearchSpace("se-wide", "se with up to 3 inputs", max_inputs=3)
    SearchSpace("add-wide", "add with up to 3 inputs", merges=("add",), max_inputs=3)
