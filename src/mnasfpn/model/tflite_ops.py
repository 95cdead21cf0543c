"""Read the ops back from a .tflite file, to check it against the IR."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mnasfpn.ir.graph import OpGraph

# How many leading inputs of each op are activations (the rest are weights, sizes, axes).
_DATA_INPUTS = {"ADD": 2, "MUL": 2, "CONCATENATION": None}

Signature = tuple[str, tuple[tuple[int, ...], ...], tuple[int, ...]]


def tflite_op_signatures(path: Path | str) -> Counter[Signature]:
    """Multiset of (TFLite op, activation input shapes, output shape), batch dim included."""
    # LiteRT: only when a model is run
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interp.get_tensor_details()}
    out: Counter[Signature] = Counter()
    for op in interp._get_ops_details():
        name = op["op_name"]
        inputs = [i for i in op["inputs"] if i >= 0]
        n = _DATA_INPUTS.get(name, 1)
        data = inputs if n is None else inputs[:n]
        out[(name, tuple(shapes[i] for i in data), shapes[op["outputs"][0]])] += 1
    return out


def ir_op_signatures(graph: OpGraph) -> Counter[Signature]:
    out: Counter[Signature] = Counter()
    for op in graph.live_ops():
        ins = tuple((1, *s) for s in op.in_shapes)
        out[(op.tflite_type, ins, (1, *op.out_shape))] += 1
    return out
