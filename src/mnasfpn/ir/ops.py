"""One TFLite-level op of a detector, with its shapes, edges and canonical key.

An op is what the TFLite converter leaves after its own fusions: batch norm and a
ReLU6 that follow a conv (or an add) are part of that op, not ops of their own.
Shapes leave out the batch dimension (always 1).
"""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]

# The op types the IR emits, with the TFLite builtin each becomes.
TFLITE_OP: dict[str, str] = {
    "conv2d": "CONV_2D",
    "dwconv2d": "DEPTHWISE_CONV_2D",
    "maxpool": "MAX_POOL_2D",
    "resize_nearest": "RESIZE_NEAREST_NEIGHBOR",
    "add": "ADD",
    "mul": "MUL",
    "mean": "MEAN",
    "sigmoid": "LOGISTIC",
    "reshape": "RESHAPE",
    "concat": "CONCATENATION",
}
PARTS: tuple[str, ...] = ("backbone", "head", "predictor")
WEIGHTED_OPS = frozenset({"conv2d", "dwconv2d"})
MODEL_INPUT = -1


INPUT_ROLE = "input"
BLOCK_ROLES = ("merge", "dw", "project", "residual")


def input_role(slot: int) -> str:
    return f"{INPUT_ROLE}{slot}"


def op_type_of(key: str) -> str:
    """The op type a table key starts with (`conv2d/in…` → `conv2d`)."""
    return key.split("/", 1)[0]


def dims(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class Op:
    id: int
    type: str
    inputs: tuple[int, ...]  # op ids; MODEL_INPUT for the image
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    part: str
    name: str
    kernel: int = 1
    stride: int = 1
    act: str = "none"
    batchnorm: bool = False  # conv/dwconv followed by BN (folded into the op by the converter)
    bias: bool = False  # conv/dwconv with its own bias (no BN)
    # Ops that reuse one Keras layer (the weight-shared predictor) name the same group:
    # their weights count once.
    weight_group: str | None = None
    # Where a head op sits, so that liveness and block inputs are found without parsing
    # names: its cell and block, and its role in the block: "input0", "input1", ... (bringing
    # that input to the block's level and width), "merge", "dw", "project" or "residual".
    # A weightless op that several blocks share (the builder merges them) keeps the first.
    cell: int | None = None
    block: int | None = None
    role: str | None = None

    @property
    def is_block_input(self) -> bool:
        """Part of resampling one input of a block (an `input<j>` role)."""
        return self.role is not None and self.role.startswith(INPUT_ROLE)

    @property
    def key(self) -> str:
        return op_key(self.type, self.in_shapes, self.out_shape, self.kernel, self.stride, self.act)

    @property
    def tflite_type(self) -> str:
        return TFLITE_OP[self.type]

    @property
    def madds(self) -> int:
        """Multiply-adds, counting convolutions only (the usual MobileNet convention)."""
        if self.type == "conv2d":
            h, w, cout = self.out_shape
            return h * w * self.kernel * self.kernel * self.in_shapes[0][2] * cout
        if self.type == "dwconv2d":
            h, w, c = self.out_shape
            return h * w * self.kernel * self.kernel * c
        return 0

    @property
    def keras_params(self) -> int:
        """Parameters as Keras counts them (BN: gamma, beta, moving mean and variance)."""
        if self.type == "conv2d":
            cin, cout = self.in_shapes[0][2], self.out_shape[2]
            weights = self.kernel * self.kernel * cin * cout
        elif self.type == "dwconv2d":
            cout = self.out_shape[2]
            weights = self.kernel * self.kernel * cout
        else:
            return 0
        return weights + (4 * cout if self.batchnorm else 0) + (cout if self.bias else 0)

    @property
    def deployed_params(self) -> int:
        """Parameters after the converter folds BN into the conv (weights + one bias)."""
        if self.type not in ("conv2d", "dwconv2d"):
            return 0
        cout = self.out_shape[2]
        extra = (4 * cout if self.batchnorm else 0) + (cout if self.bias else 0)
        weights = self.keras_params - extra
        return weights + (cout if (self.batchnorm or self.bias) else 0)


def op_key(
    op_type: str,
    in_shapes: tuple[Shape, ...],
    out_shape: Shape,
    kernel: int = 1,
    stride: int = 1,
    act: str = "none",
) -> str:
    """Canonical table key: everything that decides an op's latency, nothing else."""
    a = dims(in_shapes[0])
    if op_type == "conv2d":
        return f"conv2d/in{a}/out{dims(out_shape)}/k{kernel}s{stride}/act={act}"
    if op_type == "dwconv2d":
        return f"dwconv2d/in{a}/k{kernel}s{stride}/act={act}"
    if op_type == "maxpool":
        return f"maxpool/in{a}/k{kernel}s{stride}"
    if op_type in ("resize_nearest", "mean", "reshape"):
        return f"{op_type}/in{a}/out{dims(out_shape)}"
    if op_type == "add":
        return f"add/{a}/act={act}"
    if op_type == "mul":
        return f"mul/{a}/by{dims(in_shapes[1])}"
    if op_type == "sigmoid":
        return f"sigmoid/{a}"
    if op_type == "concat":
        return f"concat/in{'+'.join(dims(s) for s in in_shapes)}/out{dims(out_shape)}"
    raise ValueError(f"unknown op type {op_type!r}")


def parse_key(key: str) -> dict[str, object]:
    """Key → {type, in_shapes, out_shape, kernel, stride, act}: enough to rebuild the op alone."""
    parts = key.split("/")
    op_type = op_type_of(key)

    def shape(text: str) -> Shape:
        return tuple(int(d) for d in text.split("x"))

    fields: dict[str, str] = {}
    for p in parts[1:]:
        if p.startswith("act="):
            fields["act"] = p[4:]
        elif p.startswith("in"):
            fields["in"] = p[2:]
        elif p.startswith("out"):
            fields["out"] = p[3:]
        elif p.startswith("by"):
            fields["by"] = p[2:]
        elif p.startswith("k") and "s" in p:
            k, s = p[1:].split("s")
            fields["k"], fields["s"] = k, s
        else:
            fields["in"] = p  # add/sigmoid: the shape alone
    if op_type not in TFLITE_OP or "in" not in fields:
        raise ValueError(f"not an op key: {key!r}")
    in_shapes = tuple(shape(s) for s in fields["in"].split("+"))
    if "by" in fields:
        in_shapes = (*in_shapes, shape(fields["by"]))
    kernel, stride = int(fields.get("k", 1)), int(fields.get("s", 1))
    if "out" in fields:
        out_shape = shape(fields["out"])
    elif op_type == "dwconv2d" or op_type == "maxpool":
        h, w, c = in_shapes[0]
        out_shape = (-(-h // stride), -(-w // stride), c)
    elif op_type == "add":
        in_shapes = (in_shapes[0], in_shapes[0])
        out_shape = in_shapes[0]
    else:
        out_shape = in_shapes[0]
    return {
        "type": op_type,
        "in_shapes": in_shapes,
        "out_shape": out_shape,
        "kernel": kernel,
        "stride": stride,
        "act": fields.get("act", "none"),
    }
