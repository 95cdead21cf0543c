"""Genotype + backbone/predictor configs → OpGraph of the whole detector (no TensorFlow)."""

from __future__ import annotations

from dataclasses import asdict

from mnasfpn.ir.config import (
    MIN_LEVEL,
    BackboneConfig,
    DetectorConfig,
    PredictorConfig,
    check_input_size,
)
from mnasfpn.ir.graph import GraphBuilder, OpGraph, Tensor
from mnasfpn.ir.ops import input_role
from mnasfpn.searchspace.genotype import LEVELS, Block, Genotype

# MobileNetV2 inverted-residual stages: (expansion t, channels c, repeats n, stride s).
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Block ids (Keras numbering, block 0 = expanded_conv) whose outputs feed levels 3, 4, 5.
TAP_BLOCKS: dict[int, int] = {5: 3, 12: 4, 16: 5}


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: nearest multiple of `divisor`, never 10% below value."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def level_size(input_size: int, level: int) -> int:
    return input_size // (2**level)


def build_opgraph(
    genotype: Genotype,
    config: DetectorConfig | None = None,
    *,
    backbone: BackboneConfig | None = None,
    predictor: PredictorConfig | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
) -> OpGraph:
    """The whole detector as ops. `config` (default: the paper's) decides everything
    around the head; the keyword arguments override one piece of it."""
    config = config or DetectorConfig()
    backbone = backbone or config.backbone
    predictor = predictor or config.predictor
    input_size = config.input_size if input_size is None else input_size
    num_classes = config.num_classes if num_classes is None else num_classes
    check_input_size(input_size)
    g = GraphBuilder((input_size, input_size, 3))
    taps = mobilenet_v2(g, g.input, backbone.alpha)
    c6 = g.maxpool(taps[5], stride=2, part="backbone", name="backbone/c6/maxpool")
    c6 = g.conv(c6, genotype.channels, part="backbone", name="backbone/c6/conv1x1")
    features = [taps[3], taps[4], taps[5], c6]
    for r in range(genotype.repeats):
        features = mnasfpn_cell(g, genotype, features, prefix=f"head/cell{r}", cell=r)
    box, cls = ssd_predictor(g, features, predictor, num_classes)
    graph = OpGraph(
        g.ops,
        g.input.shape,
        (box.op, cls.op),
        meta={
            "name": genotype.name,
            "space": genotype.space,
            "repeats": genotype.repeats,
            "channels": genotype.channels,
            "input_size": input_size,
            "num_classes": num_classes,
            "backbone": asdict(backbone),
            "predictor": asdict(predictor),
        },
    )
    graph.meta["live_blocks"] = live_blocks(graph, genotype)
    return graph


def live_blocks(graph: OpGraph, genotype: Genotype) -> list[list[int]]:
    """Per cell, the indices of blocks that reach an output (the rest are pruned)."""
    alive: set[tuple[int | None, int | None]] = set()
    for op, is_live in zip(graph.ops, graph.live, strict=True):
        # A weightless op shared between blocks carries the first block's tags, so it can
        # be live when that block is not; a block's own project conv is never shared.
        if is_live and op.role == "project" and op.cell is not None:
            alive.add((op.cell, op.block))
    return [
        [b for b in range(len(genotype.blocks)) if (r, b) in alive] for r in range(genotype.repeats)
    ]


def mobilenet_v2(g: GraphBuilder, image: Tensor, alpha: float) -> dict[int, Tensor]:
    """MobileNetV2 up to its last 320·α-channel block; returns the level 3, 4, 5 taps."""
    part = "backbone"
    x = g.conv(image, make_divisible(32 * alpha), kernel=3, stride=2, act="relu6",
               part=part, name="backbone/stem")  # fmt: skip
    taps: dict[int, Tensor] = {}
    block_id = 0
    for t, c, n, s in MOBILENET_V2_STAGES:
        out_ch = make_divisible(int(c * alpha))
        for i in range(n):
            stride = s if i == 0 else 1
            name = f"backbone/block{block_id}"
            inp = x
            if block_id:  # block 0 has no expansion conv (t = 1)
                x = g.conv(x, inp.shape[2] * t, act="relu6", part=part, name=f"{name}/expand")
            x = g.dwconv(x, kernel=3, stride=stride, act="relu6", batchnorm=True,
                         part=part, name=f"{name}/depthwise")  # fmt: skip
            x = g.conv(x, out_ch, part=part, name=f"{name}/project")
            if stride == 1 and inp.shape == x.shape:
                x = g.add(inp, x, part=part, name=f"{name}/add")
            if block_id in TAP_BLOCKS:
                taps[TAP_BLOCKS[block_id]] = x
            block_id += 1
    return taps


def resample(
    g: GraphBuilder,
    x: Tensor,
    from_level: int,
    to_level: int,
    filters: int,
    *,
    sdo: bool,
    name: str,
) -> Tensor:
    """Bring a feature to (level, F). SDO pools before the 1×1 conv when downsampling and
    convolves before upsampling, so the conv always runs at the coarser resolution."""
    part = "head"
    delta = to_level - from_level
    if delta > 0 and sdo:
        x = g.maxpool(x, stride=2**delta, part=part, name=f"{name}/maxpool")
        return g.conv(x, filters, part=part, name=f"{name}/conv1x1")
    x = g.conv(x, filters, part=part, name=f"{name}/conv1x1")
    if delta > 0:
        return g.maxpool(x, stride=2**delta, part=part, name=f"{name}/maxpool")
    if delta < 0:
        return g.resize(x, scale=2**-delta, part=part, name=f"{name}/resize")
    return x


def merge(g: GraphBuilder, xs: list[Tensor], how: str, *, name: str) -> Tensor:
    """Merge resampled inputs; the block's ReLU6 is fused into the last add."""
    part = "head"
    if how == "se":
        x0, x1 = xs
        squeeze = g.mean(x0, part=part, name=f"{name}/se_mean")
        gate = g.conv(squeeze, x0.shape[2], batchnorm=False, bias=True, part=part,
                      name=f"{name}/se_conv")  # fmt: skip
        gate = g.sigmoid(gate, part=part, name=f"{name}/se_sigmoid")
        return g.add(x0, g.mul(x1, gate, part=part, name=f"{name}/se_mul"), act="relu6",
                     part=part, name=f"{name}/add")  # fmt: skip
    if how != "add":
        raise ValueError(f"unknown merge {how!r}")
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        act = "relu6" if i == len(xs) - 1 else "none"
        acc = g.add(acc, x, act=act, part=part, name=f"{name}/add{i}" if i > 1 else f"{name}/add")
    return acc


def mnasfpn_block(
    g: GraphBuilder,
    block: Block,
    nodes: list[Tensor],
    channels: int,
    *,
    sdo: bool,
    residual: Tensor | None,
    name: str,
) -> Tensor:
    """A generalized inverted residual: resample inputs to (R, F), merge + ReLU6,
    k×k depthwise, 1×1 conv F → C with BN and no activation, optional cell residual."""
    part = "head"
    xs = []
    for j, i in enumerate(block.inputs):
        level = node_level(nodes[i], nodes)
        with g.tagged(role=input_role(j)):
            x = resample(
                g, nodes[i], level, block.level, block.expansion, sdo=sdo, name=f"{name}/in{j}"
            )
        xs.append(x)
    with g.tagged(role="merge"):
        x = merge(g, xs, block.merge, name=name)
    with g.tagged(role="dw"):
        x = g.dwconv(x, kernel=block.kernel, part=part, name=f"{name}/depthwise")
    with g.tagged(role="project"):
        x = g.conv(x, channels, part=part, name=f"{name}/project")
    if residual is not None:
        with g.tagged(role="residual"):
            x = g.add(x, residual, part=part, name=f"{name}/residual")
    return x


def node_level(x: Tensor, nodes: list[Tensor]) -> int:
    """Level of a feature from its height (level 3 is the finest cell input)."""
    finest = nodes[0].shape[0]
    ratio = finest // x.shape[0]
    return MIN_LEVEL + ratio.bit_length() - 1


def mnasfpn_cell(
    g: GraphBuilder,
    genotype: Genotype,
    inputs: list[Tensor],
    *,
    prefix: str,
    cell: int | None = None,
) -> list[Tensor]:
    nodes = list(inputs)
    outputs: list[Tensor] = []
    for b, block in enumerate(genotype.blocks):
        residual = None
        if genotype.is_output(b):
            cell_in = inputs[block.level - MIN_LEVEL]
            if cell_in.shape[2] == genotype.channels:
                residual = cell_in
        with g.tagged(cell=cell, block=b):
            x = mnasfpn_block(g, block, nodes, genotype.channels, sdo=genotype.sdo,
                              residual=residual, name=f"{prefix}/block{b}")  # fmt: skip
        nodes.append(x)
        if genotype.is_output(b):
            outputs.append(x)
    return outputs


def ssd_predictor(
    g: GraphBuilder, features: list[Tensor], cfg: PredictorConfig, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Weight-shared separable tower per level, then separable box and class heads."""
    part = "predictor"
    boxes, classes = [], []
    a = cfg.anchors_per_location
    for level, x in zip(LEVELS, features, strict=True):
        name = f"predictor/level{level}"
        for i in range(cfg.num_layers):
            x = g.dwconv(x, kernel=cfg.kernel, part=part, name=f"{name}/tower{i}/depthwise",
                         weight_group=f"tower{i}/depthwise")  # fmt: skip
            x = g.conv(x, cfg.depth, act="relu6", part=part, name=f"{name}/tower{i}/conv1x1",
                       weight_group=f"tower{i}/conv1x1")  # fmt: skip
        h, w, _ = x.shape
        for head, width, out in (("box", 4, boxes), ("class", num_classes, classes)):
            y = g.dwconv(x, kernel=cfg.kernel, part=part, name=f"{name}/{head}/depthwise",
                         weight_group=f"{head}/depthwise")  # fmt: skip
            y = g.conv(y, a * width, batchnorm=False, bias=True, part=part,
                       name=f"{name}/{head}/conv1x1", weight_group=f"{head}/conv1x1")  # fmt: skip
            out.append(g.reshape(y, (h * w * a, width), part=part, name=f"{name}/{head}/reshape"))
    box = g.concat(boxes, part=part, name="predictor/box_encodings")
    cls = g.concat(classes, part=part, name="predictor/class_logits")
    return box, cls
