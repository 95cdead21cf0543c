"""The calibration's structure term (cold weights) through the fast predictor, against
the OpGraph it shortcuts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from conftest import SIZE, make_table
from mnasfpn.ir.build import build_opgraph
from mnasfpn.lut.calibration import STRUCTURE_FEATURES, Calibration
from mnasfpn.lut.store import TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.spaces import sample_genotypes


def _structure(g: Genotype, *, live: bool = True) -> list[float]:
    graph = build_opgraph(g, input_size=SIZE)
    ops = graph.live_ops() if live else graph.ops
    return [sum(op.deployed_params for op in ops) * 4 / 2**20, len(ops)]


@pytest.mark.parametrize("space", ["mnasfpn", "conn-search"])
def test_structure_equals_the_opgraph_and_enters_predict(tmp_path: Path, space: str) -> None:
    make_table(tmp_path / "t.sqlite", (space,))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    rng = random.Random(3)
    gs = [g.with_repeats(rng.choice((1, 2, 3))) for g in sample_genotypes(space, 8, 5)]
    assert STRUCTURE_FEATURES == ("weight_mib", "live_ops")
    for naive in (False, True):
        got = table.structure(gs, naive=naive)
        want = [_structure(g, live=not naive) for g in gs]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # Dead blocks carry weights too: the naive sum is never below the live one.
    assert np.all(table.structure(gs, naive=True) >= table.structure(gs) - 1e-12)
    cal = Calibration(1.0, {"conv2d": 1.2}, "type", {}, {"weight_mib": 0.25, "live_ops": -0.01})
    with TableStore.open(tmp_path / "t.sqlite") as store:
        store.set_calibration_doc(cal.to_dict())
    table = LatencyTable.open(tmp_path / "t.sqlite")
    assert table.calibration == cal
    x, s = table.features(gs), table.structure(gs)
    want = 1.0 + x @ np.asarray(cal.column_scales()) + 0.25 * s[:, 0] - 0.01 * s[:, 1]
    np.testing.assert_allclose(table.predict(gs), want, rtol=1e-12)
    parts = table.breakdown(gs)
    np.testing.assert_allclose(parts["total"], want, rtol=1e-12)


def test_unknown_structure_feature_is_refused_in_one_line() -> None:
    doc = Calibration(1.0, {}, "type", {}, {"weight_mib": 0.1}).to_dict()
    doc["structure"] = {"partitions": 0.3}
    with pytest.raises(ValueError, match="unknown calibration structure feature 'partitions'"):
        Calibration.from_dict(doc)
    doc["structure"] = {"live_ops": -0.5}  # outside its ±0.1 ms bound
    with pytest.raises(ValueError, match="coefficient of 'live_ops'"):
        Calibration.from_dict(doc)
    doc["version"] = 1
    doc.pop("structure")
    assert Calibration.from_dict(doc).structure == {}
