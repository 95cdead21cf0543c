"""The fast predictor's dense grids: every space must fit them, and a genotype that does
not is refused rather than aliased onto another table entry."""

from __future__ import annotations

import dataclasses

import pytest

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.predictor import (
    CostModel,
    GridError,
    check_space_fits,
    check_spaces_fit,
)
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.named import paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES

SIZE = 64


def test_every_registered_space_fits() -> None:
    check_spaces_fit()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"merges": ("add", "se", "concat")}, "merges ['concat']"),
        ({"max_inputs": 6}, "6 inputs per block"),
        ({"kernels": (3, 5, 9)}, "kernels [9]"),
        ({"channels": (16, 40)}, "widths [40]"),
        ({"num_intermediate": 20}, "24 blocks"),
    ],
    ids=["merge", "inputs", "kernel", "width", "blocks"],
)
def test_a_space_beyond_the_grids_is_refused(change: dict[str, object], words: str) -> None:
    wider = dataclasses.replace(SPACES["conn-search"], name="wider", **change)  # type: ignore[arg-type]
    with pytest.raises(GridError, match=r"search space 'wider' does not fit") as info:
        check_space_fits(wider)
    assert words in str(info.value)
    assert isinstance(info.value, MnasfpnError)


def test_a_space_registered_later_is_checked_by_the_cost_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wider = dataclasses.replace(SPACES["mnasfpn"], name="wider", merges=("add", "se", "gate"))
    monkeypatch.setitem(SPACES, "wider", wider)
    with pytest.raises(GridError, match="'wider'"):
        CostModel({}, DetectorConfig(input_size=SIZE))


def _paper_with(b: int, **change: object) -> Genotype:
    g = paper_mnasfpn()
    blocks = list(g.blocks)
    blocks[b] = dataclasses.replace(blocks[b], **change)  # type: ignore[arg-type]
    return dataclasses.replace(g, blocks=tuple(blocks))


@pytest.mark.parametrize(
    ("genotype", "words"),
    [
        # A merge no grid knows: it used to be read as "add".
        (_paper_with(2, merge="concat"), "block 2: merge 'concat' is not one of add, se"),
        # Five inputs: the input-count digit would carry into the channel digit.
        (_paper_with(2, inputs=(0, 1, 2, 3, 4)), "block 2: 5 inputs"),
        # Level 7 (not a level): it would carry into the next digit of a pool's code.
        (_paper_with(0, level=7), "block 0: level 7"),
        # A block reading itself or a later node.
        (_paper_with(1, inputs=(0, 5)), "block 1: input node 5"),
        (_paper_with(0, kernel=9), "kernel 9"),
        (_paper_with(3, expansion=100), "block 3: expansion 100"),
        (_paper_with(3, kernel=3.0), "block 3: kernel 3.0 is not an integer"),
        # Inputs as a list (unhashable): refused in one line, not a TypeError.
        (_paper_with(1, inputs=[0, 4]), "block 1: [0, 4] is not a tuple"),
        (_paper_with(1, inputs=(0, -1)), "block 1: input node -1"),
        (dataclasses.replace(paper_mnasfpn(), repeats=0), "repeats must be at least 1, got 0"),
        (dataclasses.replace(paper_mnasfpn(), channels=40), "channels 40"),
        (
            dataclasses.replace(paper_mnasfpn(), blocks=paper_mnasfpn().blocks[:3]),
            "block count must be 4..16, got 3",
        ),
    ],
    ids=[
        "merge",
        "inputs",
        "level",
        "later-node",
        "kernel",
        "expansion",
        "float",
        "list",
        "negative",
        "repeats",
        "channels",
        "blocks",
    ],
)
def test_unencodable_genotypes_are_refused(genotype: Genotype, words: str) -> None:
    model = CostModel({}, DetectorConfig(input_size=SIZE))
    with pytest.raises(GridError) as info:
        model.encode([genotype])
    assert words in str(info.value)


def test_block_body_grid_matches_the_widest_space() -> None:
    model = CostModel({}, DetectorConfig(input_size=SIZE))
    widest = max(sp.max_inputs for sp in SPACES.values())
    g = _paper_with(4, inputs=tuple(range(widest)))
    # The widest block of any space encodes, to exactly the graph's live ops.
    assert model.key_counts(g) == build_opgraph(g, input_size=SIZE).key_counts()


def test_missing_op_is_a_one_line_project_error() -> None:
    from mnasfpn.lut.predictor import MissingOpError

    with pytest.raises(MissingOpError) as info:
        CostModel({}, DetectorConfig(input_size=SIZE)).predict([paper_mnasfpn()])
    message = str(info.value)
    assert isinstance(info.value, MnasfpnError)
    assert message.startswith("the table has no entry for op ") and "\n" not in message
    assert info.value.key in message and "paper-mnasfpn" in message


def test_batches_are_split_into_chunks_with_batch_indices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large batches run in chunks: the same sums, and errors name the batch index."""
    import numpy as np

    from mnasfpn.lut import predictor
    from mnasfpn.searchspace.spaces import sample_genotypes

    model = CostModel({}, DetectorConfig(input_size=SIZE))
    gs = sample_genotypes("mnasfpn", 30, 4) + sample_genotypes("conn-search", 10, 4)
    whole = model.encode(gs)
    monkeypatch.setattr(predictor, "_CHUNK", 7)
    chunked = model.encode(gs)
    key = np.lexsort((whole[1], whole[0]))
    key2 = np.lexsort((chunked[1], chunked[0]))
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a[key], b[key2])
    bad = [*gs[:20], _paper_with(0, kernel=9), *gs[20:]]
    with pytest.raises(GridError, match=r"genotype #20, block 0: kernel 9"):
        model.encode(bad)
    bad = [*gs[:16], dataclasses.replace(paper_mnasfpn(), repeats=0)]
    with pytest.raises(GridError, match=r"genotype #16: repeats"):
        model.encode(bad)
    # An empty table: the first genotype of the batch lacks an op, in the first chunk.
    with pytest.raises(predictor.MissingOpError) as info:
        model.predict(gs)
    assert info.value.genotype_index == 0
    # A table with every op of the first ten: the eleventh (second chunk) is named.
    lat = {k: 1.0 for g in gs[:10] for k in build_opgraph(g, input_size=SIZE).key_counts()}
    extra = next(
        g for g in gs[10:] if set(build_opgraph(g, input_size=SIZE).key_counts()) - set(lat)
    )
    partial = CostModel(lat, DetectorConfig(input_size=SIZE))
    assert partial.predict(gs[:10]).shape == (10,)
    with pytest.raises(predictor.MissingOpError) as info:
        partial.predict([*gs[:10], extra])
    assert info.value.genotype_index == 10 and info.value.genotype is extra
