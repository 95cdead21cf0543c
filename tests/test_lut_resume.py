"""Build semantics on a scripted device (no TensorFlow, no timing): what a resumed build
measures, which identity a table accepts, and when a build may report success."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import SCRIPTED_CONFIG as CONFIG
from conftest import SCRIPTED_SPACE as SPACE
from conftest import ScriptedOptions, make_table
from mnasfpn.cli import lut_main
from mnasfpn.devices.profiles import load_profile
from mnasfpn.lut import build as lut_build
from mnasfpn.lut.build import DeviceOptions, build_table, plan_passes, required_keys
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.lut.table import LatencyTable


def _build(out: Path, cache: Path, passes: int, **opts: Any) -> lut_build.BuildReport:
    fail_after = opts.pop("fail_after", None)
    options = ScriptedOptions("host", **opts)
    options.fail_after = fail_after
    return build_table(
        out, [SPACE], options, config=CONFIG, passes=passes, cache_dir=cache,
        echo=lambda s: None, show_progress=False,
    )  # fmt: skip


def test_plan_passes_counts_passes_not_indices() -> None:
    keys = ["a", "b", "c"]
    done = {"a": {0, 1}, "b": {0}, "c": {2}}
    assert plan_passes(keys, done, 1) == []
    plan = plan_passes(keys, done, 2)
    assert sorted(plan) == [("b", 1), ("c", 0)]
    assert sorted(plan_passes(keys, done, 3)) == [("a", 2), ("b", 1), ("b", 2), ("c", 0), ("c", 1)]


def test_resume_with_fewer_passes_writes_every_entry(tmp_path: Path, fake_models: Path) -> None:
    out = tmp_path / "t.sqlite"
    keys = required_keys([SPACE], CONFIG)
    # A 2-pass build stopped during pass 2: every key has pass 0, some have pass 1.
    stopped = _build(out, fake_models, 2, fail_after=len(keys) + 5)
    assert not stopped.ok and stopped.missing == len(keys) - 5
    with TableStore.open(out, readonly=True) as store:
        assert len(store.measured_keys()) == 5
    # Resumed asking for one pass: nothing to time, and every key has its entry.
    report = _build(out, fake_models, 1)
    assert (report.timings, report.settled, report.missing) == (0, len(keys) - 5, 0)
    assert report.ok and report.already == len(keys)
    table = LatencyTable.open(out)
    assert set(table.latencies) == set(keys)
    # Asking for three passes later times the missing passes and refreshes entries to the
    # fastest so far.
    report = _build(out, fake_models, 3)
    assert report.ok and report.timings == 3 * len(keys) - (len(keys) + 5)
    with TableStore.open(out, readonly=True) as store:
        passes = store.passes_done()
        rows = {r.key: r for r in store.op_rows()}
    assert all(len(passes[k]) == 3 for k in keys)
    with TableStore.open(out, readonly=True) as store:
        fastest = dict(store._query("SELECT key, MIN(median_ms) FROM op_passes GROUP BY key"))
    assert {k: r.median_ms for k, r in rows.items()} == fastest


def test_success_only_when_every_key_has_an_entry(tmp_path: Path, fake_models: Path) -> None:
    out = tmp_path / "t.sqlite"
    report = _build(out, fake_models, 1, fail_after=3)
    assert not report.ok and report.errors and report.missing > 0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"use_xnnpack": True}, "use_xnnpack"),
        ({"threads": 2}, "threads"),
        ({"num_runs": 7}, "num_runs"),
        ({"warmup_runs": 1}, "warmup_runs"),
        ({"cooldown_s": 1.0}, "cooldown_s"),
        ({"runs": "fixed"}, "runs"),
        ({"target_ci": 0.02}, "target_ci"),
        ({"warmup_s": 0.5}, "warmup_s"),
    ],
)
def test_a_table_refuses_timings_taken_another_way(
    tmp_path: Path, fake_models: Path, override: dict[str, Any], field: str
) -> None:
    out = tmp_path / "t.sqlite"
    assert _build(out, fake_models, 1).ok
    with TableStore.open(out, readonly=True) as store:
        before = store.meta()
        n = len(store.measurement_log())
    with pytest.raises(TableError) as info:
        _build(out, fake_models, 2, overrides=override)
    msg = str(info.value)
    assert f"{field} {before[field]!r} here vs {override[field]!r} now" in msg
    assert "start a new table with --out NEW.sqlite" in msg and "\n" not in msg
    with TableStore.open(out, readonly=True) as store:
        assert store.meta()[field] == before[field] and len(store.measurement_log()) == n
    # The same settings extend it.
    assert _build(out, fake_models, 2).ok


def test_identity_is_recorded(tmp_path: Path, fake_models: Path) -> None:
    out = tmp_path / "t.sqlite"
    _build(out, fake_models, 1, overrides={"num_runs": 12})
    with TableStore.open(out, readonly=True) as store:
        meta = store.meta()
    expected = {
        "profile": "host", "device_model": "scripted cpu", "core": 1, "threads": 1,
        "use_xnnpack": False, "num_runs": 12, "warmup_runs": 10, "runtime_version": "2.3.0",
        "binary_version": "numpy 2", "input_size": 64,
        "statistic": "median-wall", "overrides": {"num_runs": 12},
    }  # fmt: skip
    assert {k: meta[k] for k in expected} == expected


def test_the_run_policy_is_recorded_and_a_table_from_before_it_counts_as_fixed(
    tmp_path: Path, fake_models: Path
) -> None:
    import json
    import sqlite3

    out = tmp_path / "t.sqlite"
    assert _build(out, fake_models, 1).ok
    with TableStore.open(out, readonly=True) as store:
        meta = store.meta()
    assert (meta["runs"], meta["target_ci"], meta["min_runs"]) == ("adaptive", 0.01, 40)
    # A fixed-count table records no adaptive knobs (they decided nothing there).
    fixed = {"runs": "fixed", "warmup_s": 0.0}
    old = tmp_path / "old.sqlite"
    assert _build(old, fake_models, 1, overrides=fixed).ok
    with sqlite3.connect(old) as c:
        assert "target_ci" not in dict(c.execute("SELECT name, value FROM meta").fetchall())
        # As a table written before run policies existed: no `runs`, no `warmup_s`.
        c.execute("DELETE FROM meta WHERE name IN ('runs', 'warmup_s')")
    assert _build(old, fake_models, 2, overrides=fixed).ok  # it was measured fixed
    with pytest.raises(TableError, match="runs 'fixed' here vs 'adaptive' now"):
        _build(old, fake_models, 3)
    with sqlite3.connect(old) as c:
        assert json.loads(c.execute("SELECT value FROM meta WHERE name = 'runs'").fetchone()[0])


def test_missing_op_hint_is_a_command_that_works(
    tmp_path: Path, fake_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "my tables" / "t.sqlite"
    out.parent.mkdir()
    key = next(k for k in required_keys([SPACE], CONFIG) if k.startswith("conv2d"))
    make_table(out, (SPACE,), drop=(key,))
    with TableStore.open(out) as store:
        store.set_meta({"overrides": {"use_xnnpack": False, "num_runs": 20}})
    res = CliRunner().invoke(lut_main, ["predict", "--lut", str(out), "--arch", "nasfpnlite"])
    assert res.exit_code == 1
    hint = res.output.split("add it with ", 1)[1].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["mnasfpn-lut", "build"]
    seen: dict[str, Any] = {}

    def fake_build(out: Path, spaces: list[str], device: DeviceOptions, **kw: Any) -> Any:
        seen.update(out=out, spaces=spaces, device=device, **kw)
        return lut_build.BuildReport(keys=1, already=1)

    monkeypatch.setattr(lut_build, "build_table", fake_build)
    res = CliRunner().invoke(lut_main, argv[1:])
    assert res.exit_code == 0, res.output
    assert seen["out"] == out and seen["spaces"] == ["nasfpnlite"]
    assert seen["config"].input_size == 64 and seen["device"].name == "host"
    assert seen["device"].overrides == {"use_xnnpack": False, "num_runs": 20}


def test_build_defaults_to_the_mnasfpn_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_build(out: Path, spaces: list[str], device: DeviceOptions, **kw: Any) -> Any:
        seen.update(out=out, spaces=spaces)
        return lut_build.BuildReport(keys=1, already=1)

    monkeypatch.setattr(lut_build, "build_table", fake_build)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(lut_main, ["build", "--device", "host"])
    assert res.exit_code == 0, res.output
    assert seen == {"out": Path("luts/host.sqlite"), "spaces": ["mnasfpn"]}


def test_a_second_build_into_one_table_is_refused(tmp_path: Path, fake_models: Path) -> None:
    out = tmp_path / "t.sqlite"
    with (
        TableStore.open(out, create=True),
        pytest.raises(TableError, match="being written by another process"),
    ):
        _build(out, fake_models, 1)
    assert _build(out, fake_models, 1).ok


def test_input_size_hint_is_a_command_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "t.sqlite"
    make_table(table)
    res = CliRunner().invoke(
        lut_main, ["predict", "--lut", str(table), "--arch", "nasfpnlite", "--input-size", "128"]
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1
    argv = shlex.split(res.output.split(" with ", 1)[1].strip())
    assert argv[:2] == ["mnasfpn-lut", "build"]
    seen: dict[str, Any] = {}

    def fake_build(out: Path, spaces: list[str], device: DeviceOptions, **kw: Any) -> Any:
        seen.update(out=out, device=device.name, size=kw["config"].input_size)
        return lut_build.BuildReport(keys=1, already=1)

    monkeypatch.setattr(lut_build, "build_table", fake_build)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(lut_main, argv[1:])
    assert res.exit_code == 0, res.output
    assert seen == {"out": Path("NEW.sqlite"), "device": "host", "size": 128}


def test_the_adaptive_rules_effort_caps_are_recorded_but_do_not_split_tables(
    tmp_path: Path, fake_models: Path
) -> None:
    out = tmp_path / "t.sqlite"
    # As the host profile before its time cap went from 2 to 0.5 s.
    assert _build(out, fake_models, 1, overrides={"max_time_s": 2.0, "max_runs": 500}).ok
    with TableStore.open(out, readonly=True) as store:
        assert (store.meta()["max_time_s"], store.meta()["max_runs"]) == (2.0, 500)
    # A cap bounds the effort on a noisy op, not what its entry estimates: the table goes on.
    assert _build(out, fake_models, 2).ok
    with TableStore.open(out, readonly=True) as store:
        assert store.meta()["max_time_s"] == load_profile("host").max_time_s
    # What the interval is asked for does split them.
    with pytest.raises(TableError, match="min_runs 40 here vs 60 now"):
        _build(out, fake_models, 3, overrides={"min_runs": 60})
