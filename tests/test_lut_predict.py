"""The fast table predictor against the OpGraph it shortcuts, on hand-checked tables."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mnasfpn.cli import lut_main
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut import predictor
from mnasfpn.lut.build import required_keys
from mnasfpn.lut.calibration import Calibration, feature_columns
from mnasfpn.lut.predictor import CostModel
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.lut.table import LatencyTable
from mnasfpn.searchspace.batch import encode_batch
from mnasfpn.searchspace.genotype import Block, Genotype, GenotypeError, genotype_from_dict
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES, get_space, pruned, sample_genotypes

SIZE = 64


def key_latency(key: str) -> float:
    """A deterministic, distinct latency per key (so sums identify the keys summed)."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return 0.001 + h / 2**32


def make_table(
    path: Path,
    spaces: tuple[str, ...] = ("nasfpnlite-s",),
    *,
    input_size: int = SIZE,
    drop: tuple[str, ...] = (),
    profile: str = "host",
) -> dict[str, float]:
    config = DetectorConfig(input_size=input_size)
    keys = [k for k in required_keys(spaces, config) if k not in drop]
    lat = {k: key_latency(k) for k in keys}
    with TableStore.open(path, create=True) as store:
        store.set_meta(
            {
                "device": "host",
                "profile": profile,
                "device_model": "test cpu",
                "abi": "x86_64",
                "runtime": "ai-edge-litert",
                "runtime_version": "2.3.0",
                "converter_version": "2.21.0",
                "input_size": input_size,
                "num_classes": 90,
                "alpha": 1.0,
                "depth": 64,
                "spaces": list(spaces),
            }
        )
        sid = store.start_session("build", {"model": "test cpu"})
        for k, v in lat.items():
            store.add_op(k, median_ms=v, min_ms=v, std_ms=0.0, runs=1, dispersion=0.0, session=sid)
    return lat


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
        table.predict_naive(gs), [manual_sum(lat, g, live=False) for g in gs], rtol=1e-12
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
    naive = table.predict_naive([g_dead])[0]
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


# -- decision rows (the integer-coded path) ---------------------------------------------


@pytest.mark.parametrize("space", sorted(SPACES))
def test_encoded_rows_equal_the_opgraph_per_part(tmp_path: Path, space: str) -> None:
    """Rows of seeded random genotypes (and of pruned ones), with a repeat count per row:
    per part and in total, the sums of the live ops' table entries of each OpGraph."""
    lat = make_table(tmp_path / "t.sqlite", (space,))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    sp = get_space(space)
    gs = sample_genotypes(space, 10, 29)
    gs += [pruned(g) for g in sample_genotypes(space, 4, 30)]
    rng = random.Random(31)
    reps = [rng.choice((1, 2, 3, 5)) for _ in gs]
    gs = [g.with_repeats(r) for g, r in zip(gs, reps, strict=True)]
    codes = encode_batch(sp, gs)
    want = np.array([_graph_features(lat, g) for g in gs])
    part_of = np.array([p for _, p in feature_columns()])
    parts = table.breakdown_encoded(codes, sp, repeats=reps, calibrated=False)
    for name in ("backbone", "head", "predictor"):
        np.testing.assert_allclose(parts[name], want[:, part_of == name].sum(axis=1), rtol=1e-9)
    got = table.predict_encoded(codes, space, repeats=np.array(reps), calibrated=False)
    np.testing.assert_allclose(got, want.sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(parts["total"], got, rtol=1e-12)
    # The Genotype path agrees, and one repeat count for all rows is the same as many.
    np.testing.assert_allclose(table.predict(gs, calibrated=False), got, rtol=1e-12)
    three = table.predict_encoded(codes, sp, repeats=3, calibrated=False)
    np.testing.assert_allclose(
        three, table.predict([g.with_repeats(3) for g in gs], calibrated=False), rtol=1e-12
    )


def test_the_searchs_decision_indices_predict_like_their_genotypes(tmp_path: Path) -> None:
    """What a search proposes (ragged index lists in conn-search), calibrated (op-type
    scales and the cold-weight term)."""
    make_table(tmp_path / "t.sqlite", ("conn-search",))
    cal = Calibration(
        2.0, {"conv2d": 0.8, "add": 1.5}, "type", {"n_train": 3}, {"weight_mib": 0.25}
    )
    with TableStore.open(tmp_path / "t.sqlite") as store:
        store.set_calibration_doc(cal.to_dict())
    table = LatencyTable.open(tmp_path / "t.sqlite")
    sp = get_space("conn-search")
    rows = [sp.encode(g) for g in sample_genotypes(sp, 40, 41)]
    assert len({len(r) for r in rows}) > 1
    canonical = [sp.canonical(r, repeats=2) for r in rows]
    got = table.predict_encoded(rows, sp, repeats=2)
    np.testing.assert_allclose(got, table.predict(canonical), rtol=1e-12)
    want = (
        2.0
        + table.features(canonical) @ cal.column_scales()
        + 0.25 * table.structure(canonical)[:, 0]
    )
    np.testing.assert_allclose(got, want, rtol=1e-9)
    parts = table.breakdown_encoded(rows, "conn-search", repeats=2)
    np.testing.assert_allclose(parts["total"], got, rtol=1e-12)
    assert np.all(parts["overhead"] == 2.0)


def test_encoded_batches_run_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_table(tmp_path / "t.sqlite", ("mnasfpn",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    sp = get_space("mnasfpn")
    gs = sample_genotypes(sp, 50, 43)
    codes = encode_batch(sp, gs)
    whole = table.predict_encoded(codes, sp)
    monkeypatch.setattr(predictor, "_CHUNK", 7)
    np.testing.assert_allclose(table.predict_encoded(codes, sp), whole, rtol=1e-12)
    np.testing.assert_allclose(table.predict(gs), whole, rtol=1e-12)
    bad = codes.copy()
    bad[23, 0] = 99
    with pytest.raises(GenotypeError, match=r"^decision sequence #23: channels: index 99"):
        table.predict_encoded(bad, sp)


def test_encoded_batches_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    make_table(tmp_path / "t.sqlite", ("nasfpnlite-s",))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    sp = get_space("mnasfpn")
    codes = encode_batch(sp, sample_genotypes(sp, 3, 47))
    # A table without the space's ops says how to add them.
    with pytest.raises(TableError, match=r"--space mnasfpn") as info:
        table.predict_encoded(codes, sp)
    assert "genotype #0 (space mnasfpn)" in str(info.value)
    with pytest.raises(MnasfpnError, match="unknown search space 'nope'"):
        table.predict_encoded(codes, "nope")
    with pytest.raises(GenotypeError, match="3 decision rows but 2 repeat counts"):
        table.predict_encoded(codes, sp, repeats=[2, 3])
    with pytest.raises(GenotypeError, match="repeats must be at least 1"):
        table.predict_encoded(codes, sp, repeats=0)
    with pytest.raises(GenotypeError, match="2-D"):
        table.predict_encoded(codes[0], sp)


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
    assert "predict_encoded (rows -> ms)" in res.stdout
    worst = float(res.stdout.rsplit("baseline's predictions:", 1)[1].split()[0])
    assert worst < 1e-9
