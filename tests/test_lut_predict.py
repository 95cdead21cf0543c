"""The table predictor against the OpGraph it shortcuts, on hand-checked tables."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SIZE, make_table
from mnasfpn.cli import lut_main
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.calibration import Calibration, feature_columns
from mnasfpn.lut.predictor import CostModel
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.genotype import Block, Genotype
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes


def manual_sum(lat: dict[str, float], g: Genotype, *, live: bool = True) -> float:
    graph = build_opgraph(g, input_size=SIZE)
    ops = graph.live_ops() if live else graph.ops
    return sum(lat[op.key] for op in ops)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_fast_path_equals_live_ops_of_the_graph(space: str) -> None:
    model = CostModel({}, DetectorConfig(input_size=SIZE))
    rng = random.Random(7)
    gs = [g.with_repeats(rng.choice((1, 2, 3, 4))) for g in sample_genotypes(space, 25, 3)]
    for g in gs:
        graph = build_opgraph(g, input_size=SIZE)
        assert model.key_counts(g) == graph.key_counts(), g
        assert model.key_counts(g, naive=True) == graph.key_counts(live_only=False), g


def test_fast_path_at_320_and_named_architectures() -> None:
    model = CostModel({}, DetectorConfig())
    gs = sample_genotypes("mnasfpn", 15, 11) + sample_genotypes("conn-search", 10, 12)
    gs += [get_architecture(n, r) for n in ("paper-mnasfpn", "paper-mnasfpn-nosdo") for r in (3, 5)]
    for g in gs:
        graph = build_opgraph(g)
        assert model.key_counts(g) == graph.key_counts()
        assert model.key_counts(g, naive=True) == graph.key_counts(live_only=False)


def test_batch_prediction_equals_manual_sum(tmp_path: Path) -> None:
    lat = make_table(tmp_path / "t.sqlite", ("nasfpnlite-s", "mnasfpn"))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    gs = sample_genotypes("mnasfpn", 30, 5) + sample_genotypes("nasfpnlite-s", 10, 6)
    gs = [g.with_repeats(1 + i % 5) for i, g in enumerate(gs)]
    pred = table.predict(gs)
    want = np.array([manual_sum(lat, g) for g in gs])
    np.testing.assert_allclose(pred, want, rtol=1e-12)
    np.testing.assert_allclose(
        table.predict(gs, calibrated=False, naive=True),
        [manual_sum(lat, g, live=False) for g in gs],
        rtol=1e-12,
    )
    # Batch and one-by-one agree; the breakdown adds up to the total.
    np.testing.assert_allclose([table.predict([g])[0] for g in gs[:5]], pred[:5], rtol=1e-12)
    parts = table.breakdown(gs)
    np.testing.assert_allclose(parts["backbone"] + parts["head"] + parts["predictor"], pred)
    backbone = [
        sum(
            lat[o.key] for o in build_opgraph(g, input_size=SIZE).live_ops() if o.part == "backbone"
        )
        for g in gs[:5]
    ]
    np.testing.assert_allclose(parts["backbone"][:5], backbone, rtol=1e-12)
    # Features are the same sums split by (op type, part).
    f = table.features(gs)
    assert f.shape == (len(gs), len(feature_columns()))
    np.testing.assert_allclose(f.sum(axis=1), pred, rtol=1e-12)


def test_dead_block_does_not_count_but_naive_does(tmp_path: Path) -> None:
    lat = make_table(tmp_path / "t.sqlite", ("mnasfpn",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    outputs = (
        Block((0, 1), 3, 64, 3),
        Block((0, 4), 4, 64, 3),
        Block((1, 2), 5, 64, 3),
        Block((2, 3), 6, 64, 3),
    )
    # Block 0: no later block reads node 4; it upsamples, so it shares no op with others.
    dead = Block((2, 3), 3, 512, 7, "se")
    g_dead = Genotype("mnasfpn", 48, (dead, *(_shift(b) for b in outputs)), repeats=2)
    g_none = Genotype("mnasfpn", 48, outputs, repeats=2)
    graph = build_opgraph(g_dead, input_size=SIZE)
    assert graph.meta["live_blocks"] == [[1, 2, 3, 4], [1, 2, 3, 4]]
    p_dead, p_none = table.predict([g_dead, g_none])
    # Same live ops (the outputs read nodes shifted by one): the dead block adds nothing.
    assert p_dead == pytest.approx(p_none, rel=1e-12)
    assert p_dead == pytest.approx(manual_sum(lat, g_dead), rel=1e-12)
    dead_ops = [o for o in graph.ops if o.name.startswith("head/") and "/block0/" in o.name]
    assert dead_ops and not any(graph.live[o.id] for o in dead_ops)
    naive = table.predict([g_dead], calibrated=False, naive=True)[0]
    assert naive == pytest.approx(p_dead + sum(lat[o.key] for o in dead_ops), rel=1e-12)
    assert naive > p_dead


def _shift(b: Block) -> Block:
    return Block(
        tuple(i + 1 if i >= 4 else i for i in b.inputs), b.level, b.expansion, b.kernel, b.merge
    )


def test_calibration_is_applied_per_op_type(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",))
    cal = Calibration(1.5, {"conv2d": 0.5, "dwconv2d": 2.0}, "type", {"n_train": 3})
    with TableStore.open(tmp_path / "t.sqlite") as store:
        store.set_calibration_doc(cal.to_dict())
    table = LatencyTable.open(tmp_path / "t.sqlite")
    assert table.calibration == cal
    gs = sample_genotypes("nasfpnlite-s", 6, 1)
    f = table.features(gs)
    scale = np.array([{"conv2d": 0.5, "dwconv2d": 2.0}.get(t, 1.0) for t, _ in feature_columns()])
    np.testing.assert_allclose(table.predict(gs), 1.5 + f @ scale, rtol=1e-12)
    np.testing.assert_allclose(table.predict(gs, calibrated=False), f.sum(axis=1), rtol=1e-12)
    parts = table.breakdown(gs)
    assert np.all(parts["overhead"] == 1.5)
    np.testing.assert_allclose(parts["total"], table.predict(gs), rtol=1e-12)


def test_calibration_json_round_trip() -> None:
    cal = Calibration(
        0.75,
        {"conv2d@head": 1.1, "add@head": 0.0},
        "type_part",
        {"n_train": 30, "train_r2": 0.99, "nested": {"type": 0.1}},
    )
    doc = json.loads(json.dumps(cal.to_dict()))
    assert Calibration.from_dict(doc) == cal
    assert cal.column_scales()[feature_columns().index(("conv2d", "head"))] == 1.1
    assert cal.column_scales()[feature_columns().index(("conv2d", "backbone"))] == 1.0
    with pytest.raises(ValueError):
        Calibration.from_dict({**doc, "version": 99})
    with pytest.raises(ValueError):
        Calibration(0.0, {"conv2d": -1.0})


def test_missing_op_is_named(tmp_path: Path) -> None:
    g = get_architecture("paper-mnasfpn")
    needed = sorted(build_opgraph(g, input_size=SIZE).key_counts())
    victim = next(k for k in needed if k.startswith("dwconv2d/") and "x256/" in k)
    make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",), drop=(victim,))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    with pytest.raises(TableError, match=victim.replace("/", ".")) as info:
        table.predict([g])
    assert "paper-mnasfpn" in str(info.value) and "input size 64" in str(info.value)
    res = CliRunner().invoke(
        lut_main, ["predict", "--lut", str(tmp_path / "t.sqlite"), "--arch", "paper-mnasfpn"]
    )
    assert res.exit_code == 1 and victim in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        lut_main,
        [
            "predict",
            "--lut",
            str(tmp_path / "t.sqlite"),
            "--arch",
            "nasfpnlite",
            "--input-size",
            "320",
        ],
    )
    assert res.exit_code == 1 and "input size 64" in res.output


def test_predict_cli_reports_breakdown(tmp_path: Path) -> None:
    lat = make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",))
    res = CliRunner().invoke(
        lut_main,
        [
            "predict",
            "--lut",
            str(tmp_path / "t.sqlite"),
            "--arch",
            "paper-mnasfpn-nosdo",
            "--repeats",
            "3",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    g = get_architecture("paper-mnasfpn-nosdo", 3)
    assert doc["latency_ms"] == pytest.approx(manual_sum(lat, g), rel=1e-9)
    assert sum(doc["breakdown_ms"].values()) == pytest.approx(doc["latency_ms"], rel=1e-9)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "\n".join(x.to_json(indent=None) for x in sample_genotypes("nasfpnlite-s", 3, 2))
    )
    res = CliRunner().invoke(
        lut_main, ["predict", "--lut", str(tmp_path / "t.sqlite"), "--arch", str(jsonl)]
    )
    assert res.exit_code == 0 and res.output.count("backbone") == 3


def test_show_and_export(tmp_path: Path) -> None:
    lat = make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",))
    res = CliRunner().invoke(lut_main, ["show", str(tmp_path / "t.sqlite"), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert f"ops: {len(lat)} measured" in res.output
    slowest = max(lat, key=lat.__getitem__)
    assert slowest in res.output
    res = CliRunner().invoke(
        lut_main, ["export", str(tmp_path / "t.sqlite"), "--csv", str(tmp_path / "o.csv")]
    )
    assert res.exit_code == 0, res.output
    import pandas as pd

    frame = pd.read_csv(tmp_path / "o.csv")
    assert dict(zip(frame["key"], frame["median_ms"], strict=True)) == pytest.approx(lat)


def test_light_commands_do_not_import_tensorflow(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",))
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mnasfpn.cli import lut_main\n"
        f"p = {str(tmp_path / 't.sqlite')!r}\n"
        "for args in (['--help'], ['predict', '--lut', p, '--arch', 'nasfpnlite'],\n"
        "             ['show', p], ['export', p, '--csv', p + '.csv'], ['build', '--help']):\n"
        "    r = CliRunner().invoke(lut_main, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_large_mixed_batch(tmp_path: Path) -> None:
    lat = make_table(tmp_path / "t.sqlite", ("mnasfpn", "nasfpnlite-s"))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    gs = sample_genotypes("mnasfpn", 3000, 9) + sample_genotypes("nasfpnlite-s", 100, 9)
    named = [get_architecture("paper-mnasfpn", 3), get_architecture("nasfpnlite")]
    gs = named + gs + named
    assert len(Counter(len(g.blocks) for g in gs)) == 3  # 5, 6 and 9 blocks in one batch
    out = table.predict(gs)
    assert out.shape == (len(gs),) and np.all(out > 0)
    for i in (0, 1, 2, 3001, len(gs) - 1):
        assert out[i] == pytest.approx(manual_sum(lat, gs[i]), rel=1e-12)


def _graph_features(lat: dict[str, float], g: Genotype, *, live: bool = True) -> np.ndarray:
    """The OpGraph path: the table entry of each (live) op, summed per (op type, part)."""
    columns = {c: i for i, c in enumerate(feature_columns())}
    graph = build_opgraph(g, input_size=SIZE)
    out = np.zeros(len(columns))
    for op in graph.live_ops() if live else graph.ops:
        out[columns[(op.type, op.part)]] += lat[op.key]
    return out


@pytest.mark.parametrize("space", sorted(SPACES))
def test_features_equal_the_opgraph_sums_per_type_and_part(tmp_path: Path, space: str) -> None:
    lat = make_table(tmp_path / "t.sqlite", (space,))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    rng = random.Random(17)
    gs = [g.with_repeats(rng.choice((1, 2, 3, 5))) for g in sample_genotypes(space, 12, 19)]
    for naive in (False, True):
        got = table.features(gs, naive=naive)
        want = np.array([_graph_features(lat, g, live=not naive) for g in gs])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        totals = table.predict(gs, calibrated=False, naive=naive)
        np.testing.assert_allclose(totals, want.sum(axis=1), rtol=1e-12)
    # Per part (paper Fig. 5) from the same sums; one by one equals the batch.
    want = np.array([_graph_features(lat, g) for g in gs])
    parts = table.breakdown(gs)
    part_of = np.array([p for _, p in feature_columns()])
    for name in ("backbone", "head", "predictor"):
        np.testing.assert_allclose(parts[name], want[:, part_of == name].sum(axis=1), rtol=1e-12)
    single = [table.predict([g], calibrated=False)[0] for g in gs]
    np.testing.assert_allclose(single, table.predict(gs, calibrated=False), rtol=1e-12)


def test_a_batch_of_genotype_copies_predicts_the_same(tmp_path: Path) -> None:
    """Blocks are memoized by value: equal blocks in new objects give the same sums, and a
    genotype's answer does not depend on its neighbours in the batch."""
    make_table(tmp_path / "t.sqlite", ("mnasfpn",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    gs = sample_genotypes("mnasfpn", 200, 23)
    again = [genotype_from_dict(json.loads(g.to_json())) for g in gs]
    assert again[0].blocks[0] is not gs[0].blocks[0]
    first = table.predict(gs)
    np.testing.assert_array_equal(table.predict(again), first)
    np.testing.assert_allclose(table.predict(gs[::-1]), first[::-1], rtol=1e-12)
    np.testing.assert_allclose(table.predict(gs[50:60]), first[50:60], rtol=1e-12)


@pytest.mark.slow
def test_the_predict_speed_benchmark_runs_and_agrees_with_its_baseline() -> None:
    """benchmarks/lut_predict_speed.py end to end on a small batch, against HEAD."""
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "lut_predict_speed.py"),
            "--n",
            "300",
            "--jsonl",
            "200",
            "--repeat",
            "1",
            "--baseline",
            "HEAD",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    assert "mnasfpn-lut predict --arch FILE.jsonl" in res.stdout
    worst = float(res.stdout.rsplit("baseline's predictions:", 1)[1].split()[0])
    assert worst < 1e-9
