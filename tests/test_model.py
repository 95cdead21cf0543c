"""The Keras builder and TFLite export against the IR (the invariant of docs/design.md §4)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import BackboneConfig, PredictorConfig
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.ir.ops import TFLITE_OP, parse_key
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES, get_space, sample_genotypes

keras = pytest.importorskip("keras")

from mnasfpn.model.export import export_tflite  # noqa: E402
from mnasfpn.model.keras_builder import build_keras_model  # noqa: E402
from mnasfpn.model.tflite_ops import ir_op_signatures, tflite_op_signatures  # noqa: E402
from mnasfpn.profiler.micromodel import cache_path, micromodel_paths  # noqa: E402

# 128 keeps level 6 at 2x2: at 1x1 the converter rewrites convs into other ops.
SIZE = 128


def _assert_same_ops(graph, path: Path) -> None:
    got, want = tflite_op_signatures(path), ir_op_signatures(graph)
    assert got == want, f"only in .tflite: {dict(got - want)}; only in IR: {dict(want - got)}"


@pytest.mark.parametrize("space", sorted(SPACES))
def test_tflite_ops_equal_live_ir_ops(space: str, tmp_path: Path) -> None:
    # A seed per space, so each run checks the same genotypes and failures reproduce.
    genotype = sample_genotypes(space, 1, seed=sorted(SPACES).index(space) + 11)[0]
    graph = build_opgraph(genotype.with_repeats(2), input_size=SIZE, num_classes=3)
    path = export_tflite(graph, tmp_path / "m.tflite")
    _assert_same_ops(graph, path)


def test_pruned_genotype_exports_only_live_ops(tmp_path: Path) -> None:
    rng, space = random.Random(3), get_space("mnasfpn")
    while True:  # sampled cells often leave blocks unread; find one with two or more
        genotype = space.sample(rng).with_repeats(1)
        graph = build_opgraph(genotype, input_size=SIZE, num_classes=3)
        if len(graph.meta["live_blocks"][0]) <= len(genotype.blocks) - 2:
            break
    assert graph.dead_ops()
    _assert_same_ops(graph, export_tflite(graph, tmp_path / "m.tflite"))


def test_paper_nosdo_tflite_ops_equal_ir(tmp_path: Path) -> None:
    graph = build_opgraph(get_architecture("paper-mnasfpn-nosdo", 3), input_size=SIZE)
    _assert_same_ops(graph, export_tflite(graph, tmp_path / "m.tflite"))


@pytest.mark.slow
def test_paper_mnasfpn_full_size_tflite(tmp_path: Path) -> None:
    graph = build_opgraph(get_architecture("paper-mnasfpn"))
    path = export_tflite(graph, tmp_path / "paper.tflite")
    _assert_same_ops(graph, path)
    from ai_edge_litert.interpreter import Interpreter

    outs = Interpreter(model_path=str(path)).get_output_details()
    assert [tuple(o["shape"]) for o in outs] == [(1, 19125, 4), (1, 19125, 90)]


@pytest.mark.parametrize(
    "name, alpha, depth",
    [("paper-mnasfpn", 1.0, 64), ("nasfpnlite", 1.0, 64), ("paper-mnasfpn", 0.5, 32)],
)
def test_keras_param_count_equals_ir(name: str, alpha: float, depth: int) -> None:
    graph = build_opgraph(
        get_architecture(name),
        backbone=BackboneConfig(alpha=alpha),
        predictor=PredictorConfig(depth=depth),
        input_size=SIZE,
    )
    assert build_keras_model(graph).count_params() == graph.keras_params()


def test_keras_param_count_equals_ir_on_sampled_genotypes() -> None:
    for space in ("mnasfpn", "conn-search", "no-expand"):
        for genotype in sample_genotypes(space, 2, seed=5):
            graph = build_opgraph(genotype.with_repeats(2), input_size=SIZE, num_classes=5)
            assert build_keras_model(graph).count_params() == graph.keras_params()


def test_detector_outputs_are_boxes_then_logits(tmp_path: Path) -> None:
    graph = build_opgraph(get_architecture("paper-mnasfpn", 3), input_size=SIZE, num_classes=7)
    path = export_tflite(graph, tmp_path / "m.tflite")
    from ai_edge_litert.interpreter import Interpreter

    outs = Interpreter(model_path=str(path)).get_output_details()
    anchors = graph.num_anchors
    assert anchors == 9 * sum((SIZE // 2**lv) ** 2 for lv in (3, 4, 5, 6))
    assert sorted(tuple(o["shape"]) for o in outs) == [(1, anchors, 4), (1, anchors, 7)]
    assert tuple(outs[0]["shape"]) == (1, anchors, 4)


def _one_key_per_op_type() -> list[str]:
    keys = space_keys(get_space("mnasfpn"), input_size=SIZE) | space_keys(
        get_space("conn-search"), input_size=SIZE
    )
    chosen: dict[tuple[str, str], str] = {}
    for key in sorted(keys):
        f = parse_key(key)
        chosen.setdefault((str(f["type"]), str(f["act"])), key)
    return sorted(chosen.values())


def test_micromodels_hold_exactly_their_op_and_are_cached(tmp_path: Path) -> None:
    keys = _one_key_per_op_type()
    assert {parse_key(k)["type"] for k in keys} == set(TFLITE_OP)
    seen: list[int] = []
    paths = micromodel_paths(keys, tmp_path, jobs=1, progress=seen.append, converter="tf")
    assert sum(seen) == len(keys)
    for key, path in paths.items():
        f = parse_key(key)
        want = (
            TFLITE_OP[str(f["type"])],
            tuple((1, *s) for s in f["in_shapes"]),  # type: ignore[union-attr]
            (1, *f["out_shape"]),  # type: ignore[misc]
        )
        assert dict(tflite_op_signatures(path)) == {want: 1}, key
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = micromodel_paths(keys, tmp_path, jobs=1, converter="tf")
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps
    assert all(p == cache_path(k, tmp_path, "tf") for k, p in again.items())
    # Each converter has its own cache: the direct writer's files are not the converter's.
    direct = micromodel_paths(keys, tmp_path, jobs=1)
    assert all(direct[k] != p and direct[k].exists() for k, p in again.items())
