"""Structured fields on ops (cell, block, role), the one op_type_of, and DetectorConfig
as the one source of the detector's defaults."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mnasfpn.ir.build import build_opgraph, live_blocks
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.ir.ops import BLOCK_ROLES, op_type_of
from mnasfpn.searchspace.named import paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes

SIZE = 64
_HEAD_NAME = re.compile(r"head/cell(\d+)/block(\d+)/(.+)")


def _role_from_name(rest: str) -> str:
    step = rest.split("/")[0]
    if step.startswith("in"):
        return "input" + step[2:]
    return {"depthwise": "dw", "project": "project", "residual": "residual"}.get(step, "merge")


@pytest.mark.parametrize("space", sorted(SPACES))
def test_every_head_op_says_where_it_sits(space: str) -> None:
    for g in sample_genotypes(space, 6, seed=5):
        graph = build_opgraph(g.with_repeats(2), DetectorConfig(input_size=SIZE))
        for op in graph.ops:
            m = _HEAD_NAME.fullmatch(op.name)
            if m is None:
                assert (op.cell, op.block, op.role) == (None, None, None), op
                continue
            assert (op.cell, op.block) == (int(m[1]), int(m[2])), op
            assert op.role == _role_from_name(m[3]), op
            assert op.role in BLOCK_ROLES or op.is_block_input
            assert op.is_block_input == op.role.startswith("input")


def test_live_blocks_come_from_the_fields() -> None:
    g = paper_mnasfpn()
    graph = build_opgraph(g, DetectorConfig(input_size=SIZE))
    # The names still say the same; a renamed op must not change liveness.
    by_name = {
        (int(m[1]), int(m[2]))
        for op, live in zip(graph.ops, graph.live, strict=True)
        if live and (m := _HEAD_NAME.fullmatch(op.name)) and m[3] == "project"
    }
    renamed = dataclasses.replace(
        graph, ops=[dataclasses.replace(op, name=f"op{op.id}") for op in graph.ops]
    )
    assert live_blocks(renamed, g) == live_blocks(graph, g)
    assert {(r, b) for r, blocks in enumerate(live_blocks(graph, g)) for b in blocks} == by_name


def test_op_type_of_every_key() -> None:
    graph = build_opgraph(paper_mnasfpn(), DetectorConfig(input_size=SIZE))
    assert all(op_type_of(op.key) == op.type for op in graph.ops)


def test_detector_config_is_the_one_set_of_defaults() -> None:
    g = sample_genotypes("mnasfpn", 1, seed=2)[0]
    default = build_opgraph(g)
    assert default.keys(live_only=False) == build_opgraph(g, DetectorConfig()).keys(live_only=False)
    meta = default.meta
    d = DetectorConfig()
    assert (meta["input_size"], meta["num_classes"]) == (d.input_size, d.num_classes)
    assert (meta["backbone"]["alpha"], meta["predictor"]["depth"]) == (d.alpha, d.depth)
    small = DetectorConfig(input_size=128, num_classes=3, alpha=0.5, depth=16)
    graph = build_opgraph(g, small)
    assert graph.meta["input_size"] == 128 and graph.meta["num_classes"] == 3
    assert graph.meta["backbone"]["alpha"] == 0.5 and graph.meta["predictor"]["depth"] == 16
    assert graph.keys() == build_opgraph(g, small).keys()
    space = SPACES["nasfpnlite-s"]
    assert space_keys(space, small) == space_keys(
        space, input_size=128, backbone=small.backbone, predictor=small.predictor,
        num_classes=3,
    )  # fmt: skip
