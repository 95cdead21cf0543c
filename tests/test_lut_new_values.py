"""The predictor takes any genotype the IR's emitters build: a space defined later with
values no registered space has (kernel 9, a new width), the widest block; what it cannot
price (an op the table lacks, a block reading a later node) is one line naming it."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import SIZE, make_table
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.predictor import CostModel, MissingOpError
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.genotype import Genotype, GenotypeError
from mnasfpn.searchspace.named import paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, SearchSpace, sample_genotypes

CONFIG = DetectorConfig(input_size=SIZE)
# Values no registered space has: kernel 9, width 40 (as C and as F), a 5-input block
# (add merges only, as in conn-search).
WIDE = SearchSpace(
    "wide-test",
    "kernel 9, width 40, up to 5 inputs",
    channels=(40, 64),
    expansions=(40, 128),
    kernels=(5, 9),
    merges=("add",),
    max_inputs=5,
)


def test_a_new_space_with_new_values_is_predicted_through_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert all(9 not in sp.kernels and 40 not in sp.channels for sp in SPACES.values())
    monkeypatch.setitem(SPACES, WIDE.name, WIDE)
    lat = make_table(tmp_path / "t.sqlite", (WIDE.name,))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    rng = random.Random(5)
    gs = [g.with_repeats(rng.choice((1, 2, 3))) for g in sample_genotypes(WIDE, 12, 6)]
    assert any(b.kernel == 9 for g in gs for b in g.blocks)
    assert any(len(b.inputs) == 5 for g in gs for b in g.blocks)
    want = [sum(lat[op.key] for op in build_opgraph(g, CONFIG).live_ops()) for g in gs]
    np.testing.assert_allclose(table.predict(gs), want, rtol=1e-12)
    model = CostModel(lat, CONFIG)
    for g in gs:
        assert model.key_counts(g) == build_opgraph(g, CONFIG).key_counts()


def test_the_table_imports_with_such_a_space_registered_first() -> None:
    """Nothing in the table code is sized by the spaces registered at its import."""
    code = textwrap.dedent(
        """
        import dataclasses
        from mnasfpn.searchspace.spaces import SPACES, sample_genotypes
        SPACES["k9"] = dataclasses.replace(SPACES["mnasfpn"], name="k9", kernels=(3, 9))
        from mnasfpn.ir.build import build_opgraph
        from mnasfpn.ir.config import DetectorConfig
        from mnasfpn.lut.predictor import CostModel
        config = DetectorConfig(input_size=64)
        gs = sample_genotypes("k9", 5, 1)
        lat = {k: 1.0 for g in gs for k in build_opgraph(g, config).key_counts()}
        got = CostModel(lat, config).predict(gs).tolist()
        assert got == [float(len(build_opgraph(g, config).live_ops())) for g in gs], got
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _paper_with(b: int, **change: object) -> Genotype:
    g = paper_mnasfpn()
    blocks = list(g.blocks)
    blocks[b] = dataclasses.replace(blocks[b], **change)  # type: ignore[arg-type]
    return dataclasses.replace(g, blocks=tuple(blocks))


def test_the_widest_block_of_any_space_gives_the_graphs_live_ops() -> None:
    model = CostModel({}, CONFIG)
    widest = max(sp.max_inputs for sp in SPACES.values())
    g = _paper_with(4, inputs=tuple(range(widest)))
    assert model.key_counts(g) == build_opgraph(g, CONFIG).key_counts()


def test_a_block_reading_a_later_node_is_refused_in_one_line() -> None:
    gs = sample_genotypes("mnasfpn", 3, 4)
    with pytest.raises(GenotypeError, match=r"^genotype #3, block 1: input node 5 is not an"):
        CostModel({}, CONFIG).predict([*gs, _paper_with(1, inputs=(0, 5))])


def test_missing_op_is_a_one_line_project_error() -> None:
    with pytest.raises(MissingOpError) as info:
        CostModel({}, CONFIG).predict([paper_mnasfpn()])
    message = str(info.value)
    assert isinstance(info.value, MnasfpnError)
    assert message.startswith("the table has no entry for op ") and "\n" not in message
    assert info.value.key in message and "paper-mnasfpn" in message


def test_the_first_genotype_lacking_an_op_is_named_by_its_batch_index() -> None:
    gs = sample_genotypes("mnasfpn", 30, 4) + sample_genotypes("conn-search", 10, 4)
    with pytest.raises(MissingOpError) as info:
        CostModel({}, CONFIG).predict(gs)
    assert info.value.genotype_index == 0
    # A table with every op of the first ten: the first other genotype that needs more.
    lat = {k: 1.0 for g in gs[:10] for k in build_opgraph(g, CONFIG).key_counts()}
    extra = next(g for g in gs[10:] if set(build_opgraph(g, CONFIG).key_counts()) - set(lat))
    partial = CostModel(lat, CONFIG)
    assert partial.predict(gs[:10]).shape == (10,)
    with pytest.raises(MissingOpError) as info:
        partial.predict([*gs[:10], extra, *gs[:3]])
    assert info.value.genotype_index == 10 and info.value.genotype is extra
