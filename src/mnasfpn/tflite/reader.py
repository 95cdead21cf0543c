"""Read a .tflite file's operators back as comparable records (no TensorFlow).

Two files run the same computation when their dataflow graphs match op for op: the same
builtin, version and options, the same input and output tensors (shape, type; the values
of small int32 constants such as sizes, axes and shapes), fed by matching producers. The
order in which the ops are listed, tensor names and weight values may differ.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as fb

_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}

TensorSig = tuple[str, tuple[int, ...], tuple[int, ...] | None]  # type, shape, int32 values


@dataclass(frozen=True)
class OpRecord:
    """One operator: what it is and what it reads and writes, not where it sits."""

    opcode: str
    version: int
    options: tuple[tuple[str, Any], ...]
    inputs: tuple[TensorSig | None, ...]  # None: an omitted optional input
    outputs: tuple[TensorSig, ...]


@dataclass(frozen=True)
class TfliteModel:
    ops: list[OpRecord]
    # Per op, per input: ("op", index of the producing op) / ("input", model input
    # position) / ("const", -1) / ("none", -1).
    sources: list[tuple[tuple[str, int], ...]]
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    output_ops: tuple[int, ...]
    metadata: dict[str, bytes]
    # Distinct constant tensors the ops read, and their bytes: shared weights count once.
    constants: tuple[int, int]

    @property
    def min_runtime_version(self) -> str | None:
        raw = self.metadata.get("min_runtime_version")
        return None if raw is None else raw.rstrip(b"\0").decode()

    def digests(self) -> list[str]:
        """Per op, a digest of the op and, recursively, of everything it reads."""
        out: list[str] = []
        # Ops are listed producers first (TFLite runs them in that order), so each
        # producer's digest is ready when a reader needs it.
        for i, op in enumerate(self.ops):
            parts = [repr(op)]
            for kind, j in self.sources[i]:
                if kind == "op" and j >= i:
                    raise ValueError(f"op {i} reads the output of a later op {j}")
                parts.append(out[j] if kind == "op" else f"{kind}{j}")
            out.append(hashlib.sha1("|".join(parts).encode()).hexdigest())
        return out

    def dataflow(self) -> tuple[Counter[str], tuple[str, ...]]:
        """(multiset of op digests, the output ops' digests in output order): equal
        values mean equal dataflow graphs, whatever the op order."""
        d = self.digests()
        return Counter(d), tuple(d[i] if i >= 0 else "input" for i in self.output_ops)


def _options(op: Any) -> tuple[tuple[str, Any], ...]:
    opts = op.builtinOptions
    if opts is None:
        return ()
    return tuple(
        sorted((k, v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(opts).items())
    )


def read_tflite(source: bytes | Path | str) -> TfliteModel:
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if len(model.subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(model.subgraphs)}")
    sub = model.subgraphs[0]

    def buffer_of(t: Any) -> Any:
        data = model.buffers[t.buffer].data if 0 <= t.buffer < len(model.buffers) else None
        return None if data is None or len(data) == 0 else data

    def sig(i: int) -> TensorSig:
        t = sub.tensors[i]
        dtype = _TYPE_NAMES[t.type]
        values = None
        raw = buffer_of(t)
        if raw is not None and dtype == "INT32" and len(raw) <= 64:
            values = tuple(int(v) for v in np.frombuffer(bytes(raw), "<i4"))
        return dtype, tuple(int(d) for d in t.shape), values

    producer = {int(o): n for n, op in enumerate(sub.operators) for o in op.outputs}
    model_inputs = {int(t): n for n, t in enumerate(sub.inputs)}
    ops, sources = [], []
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        ins: list[TensorSig | None] = []
        src: list[tuple[str, int]] = []
        for i in (int(x) for x in op.inputs):
            if i < 0:
                ins.append(None)
                src.append(("none", -1))
                continue
            ins.append(sig(i))
            if i in producer:
                src.append(("op", producer[i]))
            elif i in model_inputs:
                src.append(("input", model_inputs[i]))
            else:
                src.append(("const", -1))
        ops.append(
            OpRecord(
                opcode=_OP_NAMES[builtin],
                version=int(code.version),
                options=_options(op),
                inputs=tuple(ins),
                outputs=tuple(sig(int(o)) for o in op.outputs),
            )
        )
        sources.append(tuple(src))
    const_ids = {
        int(i)
        for op in sub.operators
        for i in op.inputs
        if i >= 0 and buffer_of(sub.tensors[i]) is not None
    }
    metadata = {
        (m.name.decode() if isinstance(m.name, bytes) else m.name): bytes(
            model.buffers[m.buffer].data
        )
        for m in model.metadata or []
        if model.buffers[m.buffer].data is not None
    }
    return TfliteModel(
        ops=ops,
        sources=sources,
        inputs=tuple(sig(int(i)) for i in sub.inputs),
        outputs=tuple(sig(int(o)) for o in sub.outputs),
        output_ops=tuple(producer.get(int(o), -1) for o in sub.outputs),
        metadata=metadata,
        constants=(
            len(const_ids),
            sum(len(buffer_of(sub.tensors[i])) for i in const_ids),
        ),
    )
