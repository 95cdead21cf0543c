"""The TensorFlow-free .tflite writer against the TensorFlow converter (the reference).

Equivalence: for seeded random genotypes of every space and for sampled micro-model keys
of every op kind, the direct model and the converter's have the same dataflow graph op
for op (builtin, version, options, input and output shapes and types, int32 constants'
values), the same model inputs, outputs, constants and min_runtime_version.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import TFLITE_OP, Op, parse_key
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES, get_space, sample_genotypes
from mnasfpn.tflite.reader import TfliteModel, read_tflite
from mnasfpn.tflite.writer import (
    BUFFER_ALIGNMENT,
    WriterError,
    micromodel_tflite,
    opgraph_tflite,
    write_micromodel,
)

# 128 keeps level 6 at 2x2: at 1x1 the converter simplifies degenerate ops (a mean over
# one pixel becomes a reshape), which the IR does not model.
SIZE = 128
KEYS_PER_KIND = 3


@cache
def _genotype_graphs() -> dict[str, OpGraph]:
    graphs = {}
    for space in sorted(SPACES):
        genotype = sample_genotypes(space, 1, seed=sorted(SPACES).index(space) + 101)[0]
        # Two repeats: cell-to-cell edges; one space at one repeat keeps the test quick.
        graphs[space] = build_opgraph(
            genotype.with_repeats(2 if space in ("mnasfpn", "conn-search") else 1),
            input_size=SIZE,
            num_classes=3,
        )
    return graphs


@cache
def _sampled_keys() -> list[str]:
    """KEYS_PER_KIND seeded keys per (op type, activation) over every space's keys."""
    by_kind: dict[tuple[str, str], list[str]] = {}
    for space in sorted(SPACES):
        for key in space_keys(get_space(space), input_size=SIZE):
            f = parse_key(key)
            by_kind.setdefault((str(f["type"]), str(f["act"])), []).append(key)
    rng = random.Random(7)
    keys: list[str] = []
    for kind in sorted(by_kind):
        pool = sorted(set(by_kind[kind]))
        keys += rng.sample(pool, min(KEYS_PER_KIND, len(pool)))
    return keys


def _run(data: bytes) -> list[tuple[int, ...]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], rng.random(d["shape"], dtype=np.float32))
    interp.invoke()
    outs = []
    for d in interp.get_output_details():
        y = interp.get_tensor(d["index"])
        assert np.isfinite(y).all()
        outs.append(tuple(int(s) for s in y.shape))
    return outs


def _assert_equivalent(direct: TfliteModel, reference: TfliteModel, what: str) -> None:
    flow_d, outs_d = direct.dataflow()
    flow_r, outs_r = reference.dataflow()
    if flow_d != flow_r:
        only_d = Counter(direct.ops) - Counter(reference.ops)
        only_r = Counter(reference.ops) - Counter(direct.ops)
        pytest.fail(
            f"{what}: dataflow differs; ops only direct: {list(only_d)[:3]}; "
            f"only converter: {list(only_r)[:3]}"
        )
    assert outs_d == outs_r, f"{what}: outputs come from different ops"
    assert direct.inputs == reference.inputs, what
    assert direct.outputs == reference.outputs, what
    assert direct.constants == reference.constants, f"{what}: constants (count, bytes)"
    assert direct.min_runtime_version == reference.min_runtime_version, what


# -- without TensorFlow -------------------------------------------------------------------


def test_every_op_kind_writes_and_runs() -> None:
    keys = _sampled_keys()
    assert {parse_key(k)["type"] for k in keys} == set(TFLITE_OP)
    for key in keys:
        f = parse_key(key)
        model = read_tflite(micromodel_tflite(key))
        assert [op.opcode for op in model.ops] == [TFLITE_OP[str(f["type"])]], key
        assert _run(micromodel_tflite(key)) == [(1, *f["out_shape"])], key  # type: ignore[misc]


@pytest.mark.parametrize("space", sorted(SPACES))
def test_detector_runs_with_outputs_of_the_right_shapes(space: str) -> None:
    graph = _genotype_graphs()[space]
    anchors = graph.num_anchors
    assert _run(opgraph_tflite(graph)) == [(1, anchors, 4), (1, anchors, 3)]


@pytest.mark.parametrize("size", [64, 128])
def test_detector_ops_equal_the_live_ir_ops(size: int, tmp_path: Path) -> None:
    """docs/design.md §4's invariant, also at 64 (level 6 at 1x1), where the converter simplifies
    degenerate ops and the direct writer still writes exactly the IR."""
    from mnasfpn.model.tflite_ops import ir_op_signatures, tflite_op_signatures

    for space in sorted(SPACES):
        genotype = sample_genotypes(space, 1, seed=size)[0].with_repeats(2)
        graph = build_opgraph(genotype, input_size=size, num_classes=3)
        path = tmp_path / f"{space}.tflite"
        path.write_bytes(opgraph_tflite(graph))
        assert tflite_op_signatures(path) == ir_op_signatures(graph), space


def test_output_is_deterministic_per_seed_and_buffers_aligned() -> None:
    graph = build_opgraph(get_architecture("paper-mnasfpn", 3), input_size=SIZE, num_classes=3)
    a, b, c = (opgraph_tflite(graph, seed=s) for s in (0, 0, 1))
    assert a == b and a != c and len(a) == len(c)
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(bytearray(a), 0)
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            # The data's offset in the file: the schema asks for 16-byte alignment.
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % BUFFER_ALIGNMENT == 0


def test_shared_predictor_weights_are_stored_once() -> None:
    from ai_edge_litert import schema_py_generated as fb

    graph = build_opgraph(get_architecture("paper-mnasfpn", 3), input_size=SIZE, num_classes=3)
    model = fb.ModelT.InitFromPackedBuf(bytearray(opgraph_tflite(graph)), 0)
    filters = {int(op.inputs[1]) for op in model.subgraphs[0].operators if len(op.inputs) == 3}
    weighted = [op for op in graph.live_ops() if op.type in ("conv2d", "dwconv2d")]
    groups = {op.weight_group or op.name for op in weighted}
    # The predictor's four levels share one tower: one filter tensor per weight group.
    assert len(filters) == len(groups) < len(weighted)


def test_unknown_op_or_activation_is_one_clear_error() -> None:
    op = Op(0, "conv2d", (-1,), ((8, 8, 4),), (8, 8, 4), "head", "x", act="swish")
    graph_like = type("G", (), {"input_shape": (8, 8, 4), "outputs": (0,)})()
    graph_like.live_ops = lambda: [op]
    with pytest.raises(WriterError, match="unsupported activation 'swish'"):
        opgraph_tflite(graph_like)
    with pytest.raises(ValueError, match="not an op key"):
        micromodel_tflite("softmax/8x8x4")


def test_micromodel_file_is_written_atomically(tmp_path: Path) -> None:
    key = "conv2d/in8x8x4/out8x8x8/k3s1/act=relu6"
    path = write_micromodel(key, tmp_path / "sub" / "m.tflite")
    assert path.read_bytes() == micromodel_tflite(key)
    assert [p.name for p in path.parent.iterdir()] == ["m.tflite"]


def test_dataflow_comparison_sees_a_changed_option() -> None:
    """The equivalence check is not vacuous: one stride or activation apart differs."""
    a = read_tflite(micromodel_tflite("dwconv2d/in16x16x8/k3s1/act=relu6"))
    b = read_tflite(micromodel_tflite("dwconv2d/in16x16x8/k3s1/act=none"))
    c = read_tflite(micromodel_tflite("dwconv2d/in16x16x8/k3s2/act=relu6"))
    assert a.dataflow() != b.dataflow() and a.dataflow() != c.dataflow()
    g1 = build_opgraph(get_architecture("paper-mnasfpn", 3), input_size=SIZE, num_classes=3)
    g2 = build_opgraph(get_architecture("paper-mnasfpn-nosdo", 3), input_size=SIZE, num_classes=3)
    # Same op multiset is not enough: the wiring is compared too.
    assert read_tflite(opgraph_tflite(g1)).dataflow() != read_tflite(opgraph_tflite(g2)).dataflow()


# -- against the TensorFlow converter -----------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Converter outputs for every sampled key and genotype, made once per session."""
    pytest.importorskip("tensorflow")
    from mnasfpn.model.export import export_tflite
    from mnasfpn.profiler.micromodel import convert_key

    root = tmp_path_factory.mktemp("converter")
    out: dict[str, bytes] = {}
    for i, key in enumerate(_sampled_keys()):
        out[key] = Path(convert_key(key, root / f"k{i}.tflite")).read_bytes()
    for space, graph in _genotype_graphs().items():
        out[space] = Path(export_tflite(graph, root / f"{space}.tflite")).read_bytes()
    return out


def test_micromodels_equal_the_converters(converted: dict[str, bytes]) -> None:
    keys = _sampled_keys()
    for key in keys:
        _assert_equivalent(read_tflite(micromodel_tflite(key)), read_tflite(converted[key]), key)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_detectors_equal_the_converters(space: str, converted: dict[str, bytes]) -> None:
    graph = _genotype_graphs()[space]
    direct = read_tflite(opgraph_tflite(graph))
    _assert_equivalent(direct, read_tflite(converted[space]), space)
    # Every op type the space's detector uses is checked at least once.
    assert {op.opcode for op in direct.ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"}
