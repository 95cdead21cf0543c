"""OpGraph: every TFLite-level op of a detector, with live-op pruning and counts."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mnasfpn.ir.ops import MODEL_INPUT, PARTS, WEIGHTED_OPS, Op, Shape


@dataclass(frozen=True)
class Tensor:
    """A value in the graph under construction: the op that makes it and its shape."""

    op: int
    shape: Shape


class GraphBuilder:
    """Appends ops in execution order and hands back their output tensors."""

    def __init__(self, input_shape: Shape) -> None:
        self.input = Tensor(MODEL_INPUT, input_shape)
        self.ops: list[Op] = []
        self._weightless: dict[tuple[Any, ...], Tensor] = {}
        self._tags: dict[str, Any] = {}

    @contextlib.contextmanager
    def tagged(self, **tags: Any) -> Iterator[None]:
        """Ops emitted inside get these structured fields (cell, block, role) on top of
        the enclosing ones. Tags say where an op sits, not what it computes, so they take
        no part in merging identical weightless ops."""
        outer = self._tags
        self._tags = {**outer, **tags}
        try:
            yield
        finally:
            self._tags = outer

    def emit(
        self,
        op_type: str,
        inputs: Iterable[Tensor],
        out_shape: Shape,
        *,
        part: str,
        name: str,
        **attrs: Any,
    ) -> Tensor:
        ins = tuple(inputs)
        # The TFLite converter merges identical weightless ops on the same inputs (common
        # subexpressions, e.g. two blocks max-pooling one feature by the same stride), so
        # the IR does too; ops with weights are always distinct.
        cse_key = None
        if op_type not in WEIGHTED_OPS:
            cse_key = (op_type, ins, out_shape, tuple(sorted(attrs.items())))
            if cse_key in self._weightless:
                return self._weightless[cse_key]
        op = Op(
            id=len(self.ops),
            type=op_type,
            inputs=tuple(t.op for t in ins),
            in_shapes=tuple(t.shape for t in ins),
            out_shape=out_shape,
            part=part,
            name=name,
            **attrs,
            **self._tags,
        )
        self.ops.append(op)
        out = Tensor(op.id, out_shape)
        if cse_key is not None:
            self._weightless[cse_key] = out
        return out

    # Shape-aware helpers, so callers never compute an output shape by hand.

    def conv(
        self,
        x: Tensor,
        filters: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        act: str = "none",
        batchnorm: bool = True,
        bias: bool = False,
        part: str,
        name: str,
        weight_group: str | None = None,
    ) -> Tensor:
        h, w, _ = x.shape
        out = (_ceil_div(h, stride), _ceil_div(w, stride), filters)
        return self.emit(
            "conv2d", [x], out, part=part, name=name, kernel=kernel, stride=stride, act=act,
            batchnorm=batchnorm, bias=bias, weight_group=weight_group,
        )  # fmt: skip

    def dwconv(
        self,
        x: Tensor,
        *,
        kernel: int,
        stride: int = 1,
        act: str = "none",
        batchnorm: bool = False,
        part: str,
        name: str,
        weight_group: str | None = None,
    ) -> Tensor:
        h, w, c = x.shape
        out = (_ceil_div(h, stride), _ceil_div(w, stride), c)
        return self.emit(
            "dwconv2d", [x], out, part=part, name=name, kernel=kernel, stride=stride, act=act,
            batchnorm=batchnorm, weight_group=weight_group,
        )  # fmt: skip

    def maxpool(self, x: Tensor, *, stride: int, part: str, name: str) -> Tensor:
        h, w, c = x.shape
        out = (_ceil_div(h, stride), _ceil_div(w, stride), c)
        return self.emit("maxpool", [x], out, part=part, name=name, kernel=3, stride=stride)

    def resize(self, x: Tensor, *, scale: int, part: str, name: str) -> Tensor:
        h, w, c = x.shape
        return self.emit("resize_nearest", [x], (h * scale, w * scale, c), part=part, name=name)

    def add(self, a: Tensor, b: Tensor, *, act: str = "none", part: str, name: str) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(f"{name}: add of {a.shape} and {b.shape}")
        return self.emit("add", [a, b], a.shape, part=part, name=name, act=act)

    def mean(self, x: Tensor, *, part: str, name: str) -> Tensor:
        return self.emit("mean", [x], (1, 1, x.shape[2]), part=part, name=name)

    def sigmoid(self, x: Tensor, *, part: str, name: str) -> Tensor:
        return self.emit("sigmoid", [x], x.shape, part=part, name=name)

    def mul(self, x: Tensor, gate: Tensor, *, part: str, name: str) -> Tensor:
        return self.emit("mul", [x, gate], x.shape, part=part, name=name)

    def reshape(self, x: Tensor, shape: Shape, *, part: str, name: str) -> Tensor:
        return self.emit("reshape", [x], shape, part=part, name=name)

    def concat(self, xs: list[Tensor], *, part: str, name: str) -> Tensor:
        rows = sum(t.shape[0] for t in xs)
        return self.emit("concat", xs, (rows, xs[0].shape[1]), part=part, name=name)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class OpGraph:
    """A whole detector as ops. `live` marks the ops that some model output depends on."""

    ops: list[Op]
    input_shape: Shape
    outputs: tuple[int, ...]  # op ids: box encodings, class logits
    meta: dict[str, Any] = field(default_factory=dict)
    live: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        # Connectivity (paper §3.4): walk back from the outputs; unreached blocks are pruned.
        live = [False] * len(self.ops)
        stack = list(self.outputs)
        while stack:
            i = stack.pop()
            if i == MODEL_INPUT or live[i]:
                continue
            live[i] = True
            stack.extend(self.ops[i].inputs)
        self.live = live

    def live_ops(self) -> list[Op]:
        return [op for op, alive in zip(self.ops, self.live, strict=True) if alive]

    def dead_ops(self) -> list[Op]:
        return [op for op, alive in zip(self.ops, self.live, strict=True) if not alive]

    def keys(self, *, live_only: bool = True) -> list[str]:
        """One key per op instance (repeats kept): what the table sums over."""
        ops = self.live_ops() if live_only else self.ops
        return [op.key for op in ops]

    def key_counts(self, *, live_only: bool = True) -> Counter[str]:
        return Counter(self.keys(live_only=live_only))

    def madds(self, part: str | None = None) -> int:
        return sum(op.madds for op in self.live_ops() if part is None or op.part == part)

    def _params(self, attr: str, part: str | None) -> int:
        seen: set[str] = set()
        total = 0
        for op in self.live_ops():
            if part is not None and op.part != part:
                continue
            if op.weight_group is not None:
                if op.weight_group in seen:
                    continue
                seen.add(op.weight_group)
            total += getattr(op, attr)
        return total

    def keras_params(self, part: str | None = None) -> int:
        return self._params("keras_params", part)

    def deployed_params(self, part: str | None = None) -> int:
        return self._params("deployed_params", part)

    @property
    def num_anchors(self) -> int:
        return int(self.ops[self.outputs[0]].out_shape[0])

    def summary(self) -> dict[str, Any]:
        live = self.live_ops()
        per_part = {
            part: {
                "ops": sum(1 for op in live if op.part == part),
                "madds": self.madds(part),
                "params": self.keras_params(part),
                "deployed_params": self.deployed_params(part),
            }
            for part in PARTS
        }
        return {
            **self.meta,
            "input_shape": list(self.input_shape),
            "ops": len(live),
            "pruned_ops": len(self.ops) - len(live),
            "unique_keys": len(set(op.key for op in live)),
            "madds": self.madds(),
            "params": self.keras_params(),
            "deployed_params": self.deployed_params(),
            "anchors": self.num_anchors,
            "parts": per_part,
        }
