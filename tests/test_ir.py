"""The op-graph IR: SDO ordering, connectivity pruning, key enumeration, counts."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from mnasfpn.ir.build import build_opgraph, make_divisible
from mnasfpn.ir.config import BackboneConfig, PredictorConfig, check_input_size
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import PARTS, TFLITE_OP, Op, op_key, parse_key
from mnasfpn.searchspace.genotype import Block, Genotype
from mnasfpn.searchspace.named import get_architecture, paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes

C = 48
OUTPUTS_READING_4_5 = tuple(Block((4, 5), level, 64, 3) for level in (3, 4, 5, 6))


def _sdo_genotype(sdo: bool) -> Genotype:
    """b0 (level 4) reads a finer and a coarser tap; b1 (level 4) reads the same-level tap
    and C6, two levels coarser; b2 (level 6) reads the level-3 tap, three levels finer."""
    blocks = (
        Block((0, 2), 4, 64, 3),
        Block((1, 3), 4, 64, 5),
        Block((0, 5), 6, 32, 7),  # level 3 → 6: pool by 8
        *OUTPUTS_READING_4_5,
    )
    return Genotype("mnasfpn", C, blocks, repeats=2, sdo=sdo)


def _block_ops(graph: OpGraph, cell: int, block: int, slot: int) -> list[Op]:
    prefix = f"head/cell{cell}/block{block}/in{slot}/"
    return [op for op in graph.ops if op.name.startswith(prefix)]


def _kinds(ops: list[Op]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    return [(op.type, op.in_shapes[0], op.out_shape) for op in ops]


def test_sdo_order() -> None:
    graph = build_opgraph(_sdo_genotype(True))
    # Finer input: pool first, then the 1×1 conv sees the pooled shape.
    assert _kinds(_block_ops(graph, 0, 0, 0)) == [
        ("maxpool", (40, 40, 32), (20, 20, 32)),
        ("conv2d", (20, 20, 32), (20, 20, 64)),
    ]
    pool = _block_ops(graph, 0, 0, 0)[0]
    assert (pool.kernel, pool.stride) == (3, 2)
    # Coarser input: conv at the input resolution, then nearest upsampling.
    assert _kinds(_block_ops(graph, 0, 0, 1)) == [
        ("conv2d", (10, 10, 320), (10, 10, 64)),
        ("resize_nearest", (10, 10, 64), (20, 20, 64)),
    ]
    # Same level: the conv alone.
    assert _kinds(_block_ops(graph, 0, 1, 0)) == [("conv2d", (20, 20, 96), (20, 20, 64))]
    # C6 (5×5×C) up two levels: ×4.
    assert _kinds(_block_ops(graph, 0, 1, 1)) == [
        ("conv2d", (5, 5, C), (5, 5, 64)),
        ("resize_nearest", (5, 5, 64), (20, 20, 64)),
    ]
    # Three levels down: one pool of stride 8.
    ops = _block_ops(graph, 0, 2, 0)
    assert _kinds(ops) == [
        ("maxpool", (40, 40, 32), (5, 5, 32)),
        ("conv2d", (5, 5, 32), (5, 5, 32)),
    ]
    assert ops[0].stride == 8
    # In the second cell every node has C channels.
    assert _kinds(_block_ops(graph, 1, 0, 0)) == [
        ("maxpool", (40, 40, C), (20, 20, C)),
        ("conv2d", (20, 20, C), (20, 20, 64)),
    ]
    # The conv's input edge is the pool.
    conv = _block_ops(graph, 0, 0, 0)[1]
    assert conv.inputs == (pool.id,)


def test_no_sdo_always_convolves_first() -> None:
    graph = build_opgraph(_sdo_genotype(False))
    assert _kinds(_block_ops(graph, 0, 0, 0)) == [
        ("conv2d", (40, 40, 32), (40, 40, 64)),
        ("maxpool", (40, 40, 64), (20, 20, 64)),
    ]
    assert _kinds(_block_ops(graph, 0, 0, 1)) == [
        ("conv2d", (10, 10, 320), (10, 10, 64)),
        ("resize_nearest", (10, 10, 64), (20, 20, 64)),
    ]
    assert _kinds(_block_ops(graph, 0, 1, 0)) == [("conv2d", (20, 20, 96), (20, 20, 64))]
    assert _kinds(_block_ops(graph, 0, 2, 0)) == [
        ("conv2d", (40, 40, 32), (40, 40, 32)),
        ("maxpool", (40, 40, 32), (5, 5, 32)),
    ]
    # SDO exists to save MAdds: the no-SDO graph does strictly more work.
    assert graph.madds() > build_opgraph(_sdo_genotype(True)).madds()
    sdo, nosdo = build_opgraph(paper_mnasfpn()), build_opgraph(paper_mnasfpn(sdo=False))
    assert nosdo.madds("head") > sdo.madds("head")
    assert nosdo.madds("backbone") == sdo.madds("backbone")
    assert nosdo.keras_params() == sdo.keras_params()


def test_block_structure() -> None:
    graph = build_opgraph(_sdo_genotype(True))
    names = [op.name.removeprefix("head/cell0/block1/") for op in graph.ops
             if op.name.startswith("head/cell0/block1/")]  # fmt: skip
    assert names == [
        "in0/conv1x1",
        "in1/conv1x1",
        "in1/resize",
        "add",
        "depthwise",
        "project",
    ]
    by_name = {op.name: op for op in graph.ops}
    add = by_name["head/cell0/block1/add"]
    assert add.act == "relu6" and add.out_shape == (20, 20, 64)
    dw = by_name["head/cell0/block1/depthwise"]
    assert (dw.type, dw.kernel, dw.act) == ("dwconv2d", 5, "none")
    project = by_name["head/cell0/block1/project"]
    assert project.out_shape == (20, 20, C) and project.act == "none" and project.batchnorm
    # Output blocks add the cell input of their level when shapes match: in cell 0 only the
    # C6 input has C channels; from cell 1 on, all of them.
    assert "head/cell0/block6/residual" in by_name
    assert not any(f"head/cell0/block{b}/residual" in by_name for b in (3, 4, 5))
    assert all(f"head/cell1/block{b}/residual" in by_name for b in (3, 4, 5, 6))


def test_se_merge_ops() -> None:
    blocks = (Block((1, 2), 5, 96, 3, "se"), *(Block((4, 3), lv, 64, 3) for lv in (3, 4, 5, 6)))
    graph = build_opgraph(Genotype("mnasfpn", C, blocks, repeats=1))
    ops = [op for op in graph.ops if op.name.startswith("head/cell0/block0/se_")]
    assert [(op.type, op.in_shapes, op.out_shape) for op in ops] == [
        ("mean", ((10, 10, 96),), (1, 1, 96)),
        ("conv2d", ((1, 1, 96),), (1, 1, 96)),
        ("sigmoid", ((1, 1, 96),), (1, 1, 96)),
        ("mul", ((10, 10, 96), (1, 1, 96)), (10, 10, 96)),
    ]
    assert ops[1].bias and not ops[1].batchnorm


def _pruned_genotype() -> tuple[Genotype, Genotype]:
    """A cell whose block 0 nobody reads, and the same cell written without it."""
    with_dead = (
        Block((0, 1), 5, 128, 5),  # dead
        Block((2, 3), 4, 64, 3),
        Block((0, 5), 3, 64, 3),
        Block((5, 6), 4, 96, 3),
        Block((5, 7), 5, 32, 5),
        Block((8, 3), 6, 64, 7),
    )
    without = (
        Block((2, 3), 4, 64, 3),
        Block((0, 4), 3, 64, 3),
        Block((4, 5), 4, 96, 3),
        Block((4, 6), 5, 32, 5),
        Block((7, 3), 6, 64, 7),
    )
    return (
        Genotype("mnasfpn", C, with_dead, repeats=3),
        Genotype("mnasfpn", C, without, repeats=3),
    )


def test_pruning_dead_block() -> None:
    dead_g, clean_g = _pruned_genotype()
    graph = build_opgraph(dead_g)
    clean = build_opgraph(clean_g)
    dead = graph.dead_ops()
    assert dead
    assert all(op.part == "head" and "/block0/" in op.name for op in dead)
    # Every op of block 0, in every cell, is dead; nothing else is.
    block0 = [op for op in graph.ops if op.name.startswith("head/") and "/block0/" in op.name]
    assert {op.id for op in dead} == {op.id for op in block0}
    assert {op.cell for op in dead} == {0, 1, 2} and {op.block for op in dead} == {0}
    assert graph.meta["live_blocks"] == [[1, 2, 3, 4, 5]] * 3
    assert graph.summary()["pruned_ops"] == len(dead)
    # Live counts equal those of the cell written without the dead block.
    assert graph.key_counts() == clean.key_counts()
    assert graph.madds() == clean.madds()
    assert graph.keras_params() == clean.keras_params()
    assert graph.deployed_params() == clean.deployed_params()
    assert len(graph.live_ops()) == len(clean.ops)
    # Dead keys are left out of the live counts, but present in the naive ones.
    dead_counts = Counter(op.key for op in dead)
    assert graph.key_counts(live_only=False) - graph.key_counts() == dead_counts
    assert graph.key_counts(live_only=False) == clean.key_counts() + dead_counts
    # Unique to the dead block: the 5×5 depthwise on 10×10×128.
    dw = "dwconv2d/in10x10x128/k5s1/act=none"
    assert dw not in graph.key_counts() and graph.key_counts(live_only=False)[dw] == 3


def test_pruning_follows_chains() -> None:
    # b1 reads only b0 and nobody reads b1: both die, though b0 is read.
    blocks = (
        Block((0, 1), 4, 64, 3),
        Block((4, 2), 5, 64, 3),
        *(Block((1, 2), lv, 64, 3) for lv in (3, 4, 5, 6)),
    )
    graph = build_opgraph(Genotype("mnasfpn", C, blocks, repeats=2))
    assert graph.meta["live_blocks"] == [[2, 3, 4, 5]] * 2
    assert {op.block for op in graph.dead_ops()} == {0, 1}


def test_pruned_block_sharing_a_pool_with_a_live_one() -> None:
    # Nobody reads b0, but its pools of node 0 (by 4) and node 1 (by 2) are the very pools
    # that b1 and the level-5 output need: the IR keeps one of each, named after b0, as the
    # converter does. b0 itself is still pruned.
    blocks = (
        Block((0, 1), 5, 64, 3),
        Block((0, 2), 5, 64, 3),
        *(Block((1, 5), lv, 64, 3) for lv in (3, 4, 5, 6)),
    )
    graph = build_opgraph(Genotype("mnasfpn", C, blocks, repeats=2))
    assert graph.meta["live_blocks"] == [[1, 2, 3, 4, 5]] * 2
    shared = [op for op in graph.live_ops() if op.name.startswith("head/cell0/block0/")]
    assert [op.type for op in shared] == ["maxpool", "maxpool"]
    assert [op.role for op in shared] == ["input0", "input1"]
    assert {op.block for op in graph.dead_ops()} == {0}
    assert "project" in {op.role for op in graph.dead_ops()}


def test_paper_cell_has_nothing_to_prune() -> None:
    graph = build_opgraph(paper_mnasfpn())
    assert graph.dead_ops() == []
    assert graph.meta["live_blocks"] == [[0, 1, 2, 3, 4]] * 4


@pytest.mark.parametrize("name", list(SPACES))
def test_live_keys_are_enumerated(name: str) -> None:
    space = SPACES[name]
    keys = space_keys(space)
    for g in sample_genotypes(space, 8, seed=3):
        for repeats in (1, g.repeats):
            live = set(build_opgraph(g.with_repeats(repeats)).keys())
            assert live <= keys, sorted(live - keys)[:5]


def test_live_keys_are_enumerated_other_config() -> None:
    cfg = {
        "input_size": 256,
        "num_classes": 10,
        "backbone": BackboneConfig(alpha=0.75),
        "predictor": PredictorConfig(depth=32),
    }
    for name in ("mnasfpn", "conn-search", "nasfpnlite"):
        keys = space_keys(SPACES[name], **cfg)  # type: ignore[arg-type]
        for g in sample_genotypes(name, 5, seed=9):
            assert set(build_opgraph(g, **cfg).keys()) <= keys  # type: ignore[arg-type]


def test_named_architectures_keys_are_enumerated() -> None:
    for name in ("paper-mnasfpn", "paper-mnasfpn-nosdo"):
        g = get_architecture(name)
        space = dataclasses.replace(SPACES["mnasfpn"], sdo=g.sdo)
        assert set(build_opgraph(g).keys()) <= space_keys(space)


def _all_space_keys() -> list[str]:
    keys: set[str] = set()
    for space in SPACES.values():
        keys |= space_keys(space)
    return sorted(keys)


def test_key_round_trip_every_space_key() -> None:
    keys = _all_space_keys()
    assert len(keys) > 500
    seen_types = set()
    for key in keys:
        f = parse_key(key)
        seen_types.add(f["type"])
        rebuilt = op_key(f["type"], f["in_shapes"], f["out_shape"], f["kernel"],  # type: ignore[arg-type]
                         f["stride"], f["act"])  # type: ignore[arg-type]  # fmt: skip
        assert rebuilt == key
    assert seen_types == set(TFLITE_OP)


def test_parse_key_recovers_the_op() -> None:
    # Not just a key round trip: parsing gives back the op's real shapes and attributes.
    for g in [paper_mnasfpn(), *sample_genotypes("mnasfpn", 3, seed=1)]:
        for op in build_opgraph(g, input_size=192).ops:
            f = parse_key(op.key)
            assert f["type"] == op.type
            assert f["in_shapes"] == op.in_shapes, op.name
            assert f["out_shape"] == op.out_shape, op.name
            if op.type in ("conv2d", "dwconv2d", "maxpool"):
                assert (f["kernel"], f["stride"]) == (op.kernel, op.stride)
            if op.type in ("conv2d", "dwconv2d", "add"):
                assert f["act"] == op.act


def test_parse_key_rejects_garbage() -> None:
    for bad in ("", "conv3d/in1x1x1", "conv2d", "nonsense/in2x2x2"):
        with pytest.raises(ValueError):
            parse_key(bad)


def test_counts_of_paper_cell() -> None:
    graph = build_opgraph(paper_mnasfpn())
    s = graph.summary()
    assert s["madds"] > 0 and s["params"] > 0 and s["deployed_params"] > 0
    assert s["params"] > s["deployed_params"]
    assert sum(s["parts"][p]["ops"] for p in PARTS) == s["ops"]
    assert sum(s["parts"][p]["madds"] for p in PARTS) == s["madds"]
    assert sum(s["parts"][p]["params"] for p in PARTS) == s["params"]
    assert all(s["parts"][p]["madds"] > 0 and s["parts"][p]["params"] > 0 for p in PARTS)
    # 320: 40² + 20² + 10² + 5² locations × 9 anchors.
    assert s["anchors"] == (1600 + 400 + 100 + 25) * 9
    box, cls = (graph.ops[o] for o in graph.outputs)
    assert box.out_shape == (s["anchors"], 4) and cls.out_shape == (s["anchors"], 90)
    # Design note: about 2.48M Keras parameters for the paper cell.
    assert 2.4e6 < s["params"] < 2.6e6
    # More repeats: more head, same backbone and predictor.
    five = build_opgraph(paper_mnasfpn(5)).summary()
    assert five["parts"]["head"]["params"] > s["parts"]["head"]["params"]
    assert five["parts"]["backbone"] == s["parts"]["backbone"]
    assert five["parts"]["predictor"] == s["parts"]["predictor"]


def test_predictor_weights_shared_across_levels() -> None:
    graph = build_opgraph(paper_mnasfpn(), predictor=PredictorConfig(depth=64))
    d, a, k = 64, 9, 90
    # Tower layer 0 sees C channels; layers 1..3 see D. Each: dw 3×3 (no BN) + 1×1 conv + BN.
    tower = (9 * C + C * d + 4 * d) + 3 * (9 * d + d * d + 4 * d)
    heads = (9 * d + d * a * 4 + a * 4) + (9 * d + d * a * k + a * k)
    assert graph.keras_params("predictor") == tower + heads


def test_input_size_rules() -> None:
    for bad in (0, -64, 100, 320 + 32):
        with pytest.raises(ValueError, match="multiple of 64"):
            check_input_size(bad)
    with pytest.raises(ValueError, match="multiple of 64"):
        build_opgraph(paper_mnasfpn(), input_size=96)
    small = build_opgraph(paper_mnasfpn(), input_size=64).summary()
    assert small["anchors"] == (64 + 16 + 4 + 1) * 9


def test_alpha_scales_backbone() -> None:
    full = build_opgraph(paper_mnasfpn())
    half = build_opgraph(paper_mnasfpn(), backbone=BackboneConfig(alpha=0.5))
    assert half.keras_params("backbone") < full.keras_params("backbone")
    assert make_divisible(32 * 0.5) == 16 and make_divisible(96 * 0.35) == 32


def test_backbone_matches_keras_mobilenet_v2() -> None:
    import keras  # the one test here that needs it: a few seconds

    m = keras.applications.MobileNetV2(input_shape=(320, 320, 3), weights=None, include_top=False)
    truncated = keras.Model(m.inputs, m.get_layer("block_16_project_BN").output)
    graph = build_opgraph(paper_mnasfpn())
    c6_conv = 320 * C + 4 * C
    assert truncated.count_params() == graph.keras_params("backbone") - c6_conv
    # Taps line up with the Keras layers docs/design.md §4 names.
    shapes = {
        name: tuple(m.get_layer(name).output.shape[1:])
        for name in ("block_5_add", "block_12_add", "block_16_project_BN")
    }
    assert shapes == {
        "block_5_add": (40, 40, 32),
        "block_12_add": (20, 20, 96),
        "block_16_project_BN": (10, 10, 320),
    }
