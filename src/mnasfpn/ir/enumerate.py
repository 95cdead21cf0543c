"""Every op key a search space can produce: what a latency table must measure.

The keys come from the same emitters that build real graphs, applied to every shape a
block input can have, so the enumeration cannot drift from `build_opgraph`.
"""

from __future__ import annotations

import itertools

from mnasfpn.ir.build import build_opgraph, level_size, merge, mobilenet_v2, resample, ssd_predictor
from mnasfpn.ir.config import (
    MIN_LEVEL,
    BackboneConfig,
    DetectorConfig,
    PredictorConfig,
    check_input_size,
)
from mnasfpn.ir.graph import GraphBuilder, Tensor
from mnasfpn.ir.ops import MODEL_INPUT
from mnasfpn.searchspace.genotype import LEVELS
from mnasfpn.searchspace.spaces import SearchSpace

# GraphBuilder merges identical weightless ops on the same input op; stand-in features
# need distinct ids, or e.g. the SE means of two different shapes would collapse into one.
_stand_in_ids = itertools.count(MODEL_INPUT - 1, -1)


def _feature(input_size: int, level: int, channels: int) -> Tensor:
    s = level_size(input_size, level)
    return Tensor(next(_stand_in_ids), (s, s, channels))


def space_keys(
    space: SearchSpace,
    config: DetectorConfig | None = None,
    *,
    input_size: int | None = None,
    backbone: BackboneConfig | None = None,
    predictor: PredictorConfig | None = None,
    num_classes: int | None = None,
) -> set[str]:
    """All keys any genotype of `space` (any repeat count) can put in its graph, under
    `config` (default: the paper's); the keyword arguments override one piece of it."""
    config = config or DetectorConfig()
    backbone = backbone or config.backbone
    predictor = predictor or config.predictor
    input_size = config.input_size if input_size is None else input_size
    num_classes = config.num_classes if num_classes is None else num_classes
    check_input_size(input_size)
    if space.fixed is not None:
        graph = build_opgraph(space.fixed.with_repeats(2), backbone=backbone,
                              predictor=predictor, input_size=input_size,
                              num_classes=num_classes)  # fmt: skip
        return set(graph.keys(live_only=False))

    g = GraphBuilder((input_size, input_size, 3))
    taps = mobilenet_v2(g, g.input, backbone.alpha)
    tap_channels = {level: t.shape[2] for level, t in taps.items()}
    c5 = taps[5]
    for c in space.channels:
        c6 = g.maxpool(c5, stride=2, part="backbone", name="c6")
        g.conv(c6, c, part="backbone", name="c6")
        features = [_feature(input_size, lv, c) for lv in LEVELS]
        ssd_predictor(g, features, predictor, num_classes)
        # A block input is a cell input (a backbone tap in the first cell) or a C-wide node.
        sources = [(lv, c) for lv in LEVELS] + list(tap_channels.items())
        expansions = space.expansions or (c,)
        for level in LEVELS:
            g.add(features[level - MIN_LEVEL], features[level - MIN_LEVEL], part="head",
                  name="residual")  # fmt: skip
            for f in expansions:
                for src_level, ch in sources:
                    x = _feature(input_size, src_level, ch)
                    resample(g, x, src_level, level, f, sdo=space.sdo, name="in")
                xf = _feature(input_size, level, f)
                for n in range(space.min_inputs, space.max_inputs + 1):
                    for how in space.merges:
                        if how == "se" and n != 2:
                            continue
                        merge(g, [xf] * n, how, name="merge")
                for k in space.kernels:
                    g.dwconv(xf, kernel=k, part="head", name="depthwise")
                g.conv(xf, c, part="head", name="project")
    return {op.key for op in g.ops}
