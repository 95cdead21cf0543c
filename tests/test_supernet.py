"""The one-shot supernet's children against stand-alone Keras heads: a child run from the
supernet's weights computes what the Keras head of its genotype (the proxy's, built by
the IR builder) computes with the same weights copied in, on random genotypes of every
search space; BN re-estimation; the sampling rules."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture, nasfpnlite
from mnasfpn.searchspace.spaces import SPACES, get_space
from mnasfpn.train.oneshot_config import OneShotError, check_child
from mnasfpn.train.proxy import weak_head

tf = pytest.importorskip("tensorflow")

from mnasfpn.train.detector import set_bn_momentum  # noqa: E402
from mnasfpn.train.head import build_head  # noqa: E402
from mnasfpn.train.supernet import (  # noqa: E402
    BnStats,
    Child,
    SupernetShape,
    child_layer_weights,
    init_weights,
    load_into_keras,
    weight_specs,
)

DETECTOR = DetectorConfig(input_size=64, num_classes=3, alpha=0.35, depth=16)
SEARCH_SPACES = [n for n, s in SPACES.items() if s.fixed is None]
REPEATS = 2


def _weights(shape: SupernetShape, seed: int = 0) -> dict[str, object]:
    """Initial weights with every BN scale and offset and every bias made random, so a
    wrong slice of them shows."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in init_weights(shape, seed).items():
        if not name.endswith("/kernel"):
            value = value + rng.normal(0, 0.3, value.shape).astype(np.float32)
        out[name] = tf.constant(value)
    return out


def _genotypes(space: str) -> list:
    rng = random.Random(space)
    out = [get_space(space).sample(rng).with_repeats(1 + i % REPEATS) for i in range(2)]
    named = {"mnasfpn": [get_architecture("paper-mnasfpn", REPEATS), weak_head()],
             "conn-search": [get_architecture("paper-mnasfpn", 1)],
             "nasfpnlite-s": [nasfpnlite(REPEATS)]}  # fmt: skip
    return out + named.get(space, [])


def _features(child: Child, batch: int, seed: int) -> list[object]:
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(0, 1, (batch, *child.graph.ops[t].out_shape)), tf.float32)
            for t in child.inputs]  # fmt: skip


@pytest.fixture(scope="module", params=SEARCH_SPACES)
def supernet(request: pytest.FixtureRequest) -> tuple[SupernetShape, dict[str, object]]:
    shape = SupernetShape(request.param, REPEATS, DETECTOR)
    return shape, _weights(shape)


def test_child_computes_what_the_standalone_head_computes(supernet: tuple) -> None:
    shape, weights = supernet
    for i, genotype in enumerate(_genotypes(shape.space)):
        child = Child(shape, genotype)
        feats = _features(child, 4, i)
        stats = BnStats()
        child.forward(weights, feats, "collect", stats)
        head, levels = build_head(child.graph)
        assert levels == child.levels
        load_into_keras(head, child_layer_weights(child, weights, stats))
        for mode, training, tol in (("infer", False, 1e-5), ("train", True, 1e-4)):
            codes, logits, _ = child.forward(weights, feats, mode, stats)
            want_codes, want_logits = head(feats, training=training)
            scale = float(tf.reduce_max(tf.abs(want_logits)))
            assert scale > 0.1
            np.testing.assert_allclose(codes, want_codes, atol=tol * scale, rtol=0)
            np.testing.assert_allclose(logits, want_logits, atol=tol * scale, rtol=0)


def test_a_wrong_crop_or_slice_would_show(supernet: tuple) -> None:
    """The comparison above can fail: the same head with one copied kernel taken from the
    corner instead of the centre (or from the last channels) computes something else."""
    shape, weights = supernet
    small = [g for g in _genotypes(shape.space) if any(b.kernel < shape.k_max for b in g.blocks)]
    genotype = (small or _genotypes(shape.space))[0]
    child = Child(shape, genotype)
    feats = _features(child, 4, 9)
    stats = BnStats()
    child.forward(weights, feats, "collect", stats)
    codes, _, _ = child.forward(weights, feats, "infer", stats)
    layers = child_layer_weights(child, weights, stats)
    step = next(s for s in child.steps if s.key and s.key.endswith("/dw"))
    full = np.asarray(weights[f"{step.key}/kernel"])
    k, c = step.op.kernel, step.op.out_shape[2]
    wrong = full[:k, :k, -c:] if (k < full.shape[0] or c < full.shape[2]) else -full
    layers[step.layer]["kernel"] = wrong
    head, _ = build_head(child.graph)
    load_into_keras(head, layers)
    got, _ = head(feats, training=False)
    assert float(tf.reduce_max(tf.abs(got - codes))) > 1e-3


def test_bn_reestimation_sets_the_statistics_and_nothing_else() -> None:
    """Collecting statistics leaves every supernet weight as it was; each BN layer's
    statistics are its inputs' batch moments (those Keras' BN takes at momentum 0), and a
    layer the predictor shares across its four levels averages four calls per batch."""
    shape = SupernetShape("mnasfpn", REPEATS, DETECTOR)
    variables = {k: tf.Variable(v) for k, v in _weights(shape).items()}
    before = {k: v.numpy().copy() for k, v in variables.items()}
    child = Child(shape, get_architecture("paper-mnasfpn", REPEATS))
    feats = _features(child, 6, 3)
    stats = BnStats()
    child.forward(variables, feats, "collect", stats)
    for k, v in variables.items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    head, _ = build_head(child.graph)
    load_into_keras(head, child_layer_weights(child, variables))
    set_bn_momentum(head, 0.0)
    head(feats, training=True)  # moving statistics := this batch's moments
    shared = {s.layer for s in child.steps if s.op.weight_group}
    checked = 0
    for layer in stats.layers():
        mean, var = stats.get(layer, 0)
        bn = head.get_layer(layer).bn
        if layer in shared:
            assert stats.sums[layer][2] == 4  # one call per level
            continue
        np.testing.assert_allclose(mean, bn.moving_mean.numpy(), atol=1e-5, err_msg=layer)
        np.testing.assert_allclose(var, bn.moving_variance.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=layer)  # fmt: skip
        checked += 1
    assert checked > 10 and shared
    with pytest.raises(KeyError, match="re-estimate"):
        BnStats().get("head_cell0_block0_project", 8)


def test_every_supernet_weight_is_named_once() -> None:
    for space in SEARCH_SPACES:
        names = [s.name for s in weight_specs(SupernetShape(space, REPEATS, DETECTOR))]
        assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("space", "genotype", "message"),
    [
        ("mnasfpn", get_architecture("paper-mnasfpn", 6), "6 repeats, more than the supernet"),
        ("no-expand", get_architecture("paper-mnasfpn", 2), "ties it to channels"),
        ("mnasfpn", nasfpnlite(2), "sdo=False"),
        ("mnasfpn", replace(get_architecture("paper-mnasfpn", 2), channels=24),
         "'channels' is 24.*outside the supernet"),
    ],
)
def test_a_child_outside_the_supernet_is_one_line(space: str, genotype: object,
                                                   message: str) -> None:  # fmt: skip
    with pytest.raises(OneShotError, match=message) as info:
        check_child(space, REPEATS, genotype)
    assert "\n" not in str(info.value)
