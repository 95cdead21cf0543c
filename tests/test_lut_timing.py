"""The table and its validation hold one timing statistic, and say what load they saw."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import SCRIPTED_CONFIG as CONFIG
from conftest import SCRIPTED_SPACE as SPACE
from conftest import ScriptedDevice, ScriptedOptions
from mnasfpn.devices.profiles import load_profile
from mnasfpn.devices.results import TimingResult
from mnasfpn.lut import validate as lut_validate
from mnasfpn.lut.build import build_table
from mnasfpn.lut.fidelity import end_to_end_latency
from mnasfpn.lut.store import TableError, TableStore


class DriftingDevice(ScriptedDevice):
    """Reports a statistic below the median (as p10 is) and, every fifth timing, that the
    model ran in a slow phase and was measured again; every 50th was kept slow."""

    timing_statistic = "p10-cpu"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.remeasured = 0

    def load_summary(self) -> dict[str, Any]:
        return {"remeasured": self.remeasured, "slow_fraction": 0.2}

    def time_models(
        self, paths: Sequence[Path], progress: Callable[[int, int, TimingResult], None]
    ) -> list[TimingResult]:
        out = []

        def relay(i: int, n: int, res: TimingResult) -> None:
            assert res.median_ms is not None
            res.latency_ms = res.median_ms * 0.9
            res.remeasured = int(self.calls % 5 == 0)
            res.slow_phase = self.calls % 50 == 0
            self.remeasured += res.remeasured
            out.append(res)
            progress(i, n, res)

        super().time_models(paths, relay)
        return out


class DriftingOptions(ScriptedOptions):
    def open_all(self) -> list[Any]:
        return [DriftingDevice(load_profile(self.name))]


def test_entries_hold_the_devices_statistic_and_the_load_is_recorded(
    tmp_path: Path, fake_models: Path
) -> None:
    out = tmp_path / "t.sqlite"
    said: list[str] = []
    report = build_table(
        out, [SPACE], DriftingOptions("host"), config=CONFIG, passes=2, cache_dir=fake_models,
        echo=said.append, show_progress=False,
    )  # fmt: skip
    assert report.ok and report.remeasured > 0 and report.slow_kept > 0
    with TableStore.open(out, readonly=True) as store:
        meta = store.meta()
        entries = store.op_latencies()
        passes = dict(store._query("SELECT key, MIN(median_ms) FROM op_passes GROUP BY key"))
    assert meta["statistic"] == "p10-cpu"
    load = meta["timing_load"]["build"]
    assert load["remeasured"] == report.remeasured and load["slow_kept"] == report.slow_kept
    assert load["devices"] == [{"remeasured": report.remeasured, "slow_fraction": 0.2}]
    assert entries == passes  # each entry is its fastest pass of the statistic
    line = next(s for s in said if "slowed down" in s)
    assert f"{report.remeasured} timing(s) re-measured" in line and "\n" not in line
    assert "kept from a slow phase" in line

    # A table of one statistic is not extended with another.
    with pytest.raises(TableError, match="statistic 'p10-cpu' here vs 'median-wall' now"):
        build_table(
            out, [SPACE], ScriptedOptions("host"), config=CONFIG, passes=3,
            cache_dir=fake_models, echo=said.append, show_progress=False,
        )  # fmt: skip


def test_validation_refuses_runs_of_another_statistic(tmp_path: Path, fake_models: Path) -> None:
    out = tmp_path / "t.sqlite"
    build_table(
        out, [SPACE], ScriptedOptions("host"), config=CONFIG, passes=1, cache_dir=fake_models,
        echo=lambda s: None, show_progress=False,
    )  # fmt: skip
    from tqdm import tqdm

    with TableStore.open(out) as store, pytest.raises(TableError) as info:
        lut_validate._time_e2e(
            store, ["a"], {"a": [0]}, {"a": tmp_path / "a.tflite"}, store.meta(), 1, 0,
            DriftingOptions("host"), CONFIG, {}, False, tqdm,
        )  # fmt: skip
    msg = str(info.value)
    assert "statistic 'median-wall' here vs 'p10-cpu' now" in msg and "\n" not in msg


def test_fastest_round_is_the_end_to_end_figure() -> None:
    rounds = {
        0: {"median_ms": 12.0, "min_ms": 9.0},
        1: {"median_ms": 10.0, "min_ms": 9.5},
        2: {"median_ms": 11.0, "min_ms": 8.0},
    }
    assert end_to_end_latency(rounds) == 10.0
    assert end_to_end_latency(rounds, "median") == 11.0
    assert end_to_end_latency(rounds, "min") == 8.0


@pytest.mark.parametrize(("threads", "rounds"), [(1, 2), (2, 3)])
def test_validate_takes_three_rounds_on_a_multi_thread_table(
    tmp_path: Path, fake_models: Path, monkeypatch: pytest.MonkeyPatch, threads: int, rounds: int
) -> None:
    out = tmp_path / "t.sqlite"
    build_table(
        out, [SPACE], ScriptedOptions("host", overrides={"threads": threads}), config=CONFIG,
        passes=1, cache_dir=fake_models, echo=lambda s: None, show_progress=False,
    )  # fmt: skip
    asked: list[int] = []

    class Stop(Exception):
        pass

    def time_e2e(store: Any, need: Any, todo: dict[str, list[int]], *args: Any, **kw: Any) -> int:
        asked.append(max(len(r) for r in todo.values()))
        raise Stop

    monkeypatch.setattr(lut_validate, "export_models", lambda *a, **k: 0.0)
    monkeypatch.setattr(lut_validate, "_time_e2e", time_e2e)
    with pytest.raises(Stop):
        lut_validate.validate(
            out, samples=4, report_dir=tmp_path / "r", cache_dir=tmp_path, show_progress=False
        )
    assert asked == [rounds]
