"""The pace-corrected statistic on a replayed machine whose speed moves.

A scripted host worker plays back a pace on a virtual clock: every invocation of an op
costs its steady-pace truth times the pace of its group (compute or memory) at that
moment, with the group's own sensitivity, and the references follow their group's pace
too. The real HostDevice drives it (the stopping rule, the interleaving, the division,
the fast level), the real store keeps the passes and rebases them: the entries and
the end-to-end targets must stay within 3% of the truth with pace-p10, and raw p10
must not.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from mnasfpn.devices import host as host_mod
from mnasfpn.devices import pace
from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.host import HostDevice
from mnasfpn.devices.profiles import load_profile
from mnasfpn.lut.build import record_pace, seed_pace
from mnasfpn.lut.store import TableError, TableStore
from mnasfpn.model.convert import CONVERTERS

DATA = Path(__file__).parent / "data"

# op type -> (TFLite op, group, steady-pace ms, sensitivity: exponent on the group pace)
OPS: dict[str, tuple[str, str, float, float]] = {
    "conv2d": ("CONV_2D", "compute", 1.2, 1.0),
    "dwconv2d": ("DEPTHWISE_CONV_2D", "compute", 0.3, 1.0),
    "detector": ("CONV_2D", "compute", 40.0, 1.0),
    "add": ("ADD", "memory", 0.2, 1.0),
    "resize": ("RESIZE_NEAREST_NEIGHBOR", "memory", 0.05, 1.0),
    "maxpool": ("MAX_POOL_2D", "memory", 0.02, 1.0),
}
REF_MS = {"compute": 0.9, "memory": 0.35}


def generated_phases(seed: int, seconds: float, amplitude: float) -> list[tuple[float, float]]:
    """(start s, pace) phases: fast ones (1.0) of 1-8 s between slow ones of 1-60 s up to
    ``amplitude`` (the recorded machine was more than 5% slow 95% of the time)."""
    rng = random.Random(seed)
    out, t = [(0.0, 1.0)], 0.0
    while t < seconds:
        t += rng.uniform(1.0, 8.0) if len(out) % 2 else rng.uniform(1.0, 60.0)
        out.append((t, 1.0 if len(out) % 2 == 0 else rng.uniform(1.2, amplitude)))
    return out


def recorded_phases() -> list[tuple[float, float]]:
    """The AMD VM's detector, per-second p10 of thread CPU time over 180 s
    (../shared/noise), as a pace: against its fast phase, the 5th percentile of the
    seconds (the single best second is partly a low outlier of its own p10)."""
    rows = json.loads((DATA / "detector_pace_idle.json").read_text())
    fast = sorted(r[1] for r in rows)[len(rows) // 20]
    return [(float(r[0]), max(1.0, r[1] / fast)) for r in rows]


class Timeline:
    """Piecewise-constant paces per group on a virtual clock."""

    def __init__(self, phases: dict[str, list[tuple[float, float]]]) -> None:
        self.phases = phases
        self.t = 0.0

    def pace(self, group: str) -> float:
        ph = self.phases[group]
        period = ph[-1][0] + 1.0
        t = self.t % period
        return next(p for start, p in reversed(ph) if start <= t)

    def cost(self, group: str, ms: float, sensitivity: float, rng: random.Random) -> float:
        # A little jitter, only ever upward (nothing makes a kernel faster than steady).
        c = ms * self.pace(group) ** sensitivity * (1.0 + abs(rng.gauss(0, 0.01)))
        self.t += c / 1e3
        return c


class ReplayWorker:
    """Answers the host worker's protocol from the timeline (no LiteRT)."""

    gap_s = 1.0  # virtual seconds between models (unobserved: loads, a build's bookkeeping)

    def __init__(self, timeline: Timeline, fail_refs: bool = False) -> None:
        self.tl = timeline
        self.rng = random.Random(0)
        self.model: tuple[str, str, float, float] | None = None
        self.fail_refs = fail_refs
        self.hello = {"affinity": [0]}

    def request(self, timeout: float = 0, **req: Any) -> dict[str, Any]:
        op = req["op"]
        if op == "refs":
            if self.fail_refs:
                return {"ok": False, "error": "pace reference compute (x): LiteRT failed"}
            return {"ok": True, "ms": REF_MS}
        if op == "load":
            self.tl.t += self.gap_s
            name, size = Path(req["path"]).stem.split("-")
            self.model = (*OPS[name][:2], truth(name, int(size)), OPS[name][3])
            return {"ok": True, "offthread_share": 0.0, "ops": [self.model[0]]}
        if op == "ref":  # the raw statistic's drift reference
            c = self.tl.cost("compute", 0.3, 1.0, self.rng)
            return {"ok": True, "cpu_ms": c, "wall_ms": c}
        assert op == "run" and self.model is not None
        _, group, ms, sens = self.model
        if req.get("ref") is None:
            xs = [self.tl.cost(group, ms, sens, self.rng) for _ in range(req["n"])]
            return {"ok": True, "cpu_ms": xs, "samples_ms": xs}
        ref = req["ref"]
        t_s, xs, rt, rms = [], [], [], []

        def reference() -> None:
            rt.append(self.tl.t)
            rms.append(self.tl.cost(ref, REF_MS[ref], 1.0, self.rng))

        reference()
        done = 0
        while done < req["n"]:
            start, k = self.tl.t, 0
            while done < req["n"]:
                t_s.append(self.tl.t)
                xs.append(self.tl.cost(group, ms, sens, self.rng))
                done, k = done + 1, k + 1
                if (self.tl.t - start) * 1e3 >= req["grain_ms"] or k >= req["burst"]:
                    break
            reference()
        others = {o: self.tl.cost(o, REF_MS[o], 1.0, self.rng) for o in req["others"]}
        return {
            "ok": True, "cpu_ms": xs, "samples_ms": xs, "t_s": t_s,
            "ref_t_s": rt, "ref_cpu_ms": rms, "ref_wall_ms": rms,
            "others_cpu_ms": others, "others_wall_ms": others,
        }  # fmt: skip

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        pass


def replay_device(
    monkeypatch: pytest.MonkeyPatch, timeline: Timeline, statistic: str, **worker: Any
) -> HostDevice:
    monkeypatch.setattr(host_mod, "_WorkerProcess", lambda cores: ReplayWorker(timeline, **worker))
    # Time is virtual: the real clock must not cut a measurement short.
    profile = load_profile("host").replace(max_time_s=600.0)
    dev = HostDevice(profile, statistic=statistic)
    dev.settle_s = 0.0
    return dev


SIZES = 6  # models of each op type, of growing steady-pace time


def truth(name: str, size: int) -> float:
    return OPS[name][2] * (1.0 + 0.5 * size)


def models(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in OPS:
        for i in range(SIZES if name != "detector" else 1):
            p = tmp_path / f"{name}-{i}.tflite"
            p.write_bytes(b"replayed")
            out[f"{name}/{i}"] = p
    return out


def build_and_validate(
    dev: HostDevice, paths: dict[str, Path], store: TableStore, passes: int = 2
) -> tuple[dict[str, float], dict[str, float]]:
    """Two passes of every op into the table and three rounds of the detector, as a build
    and a validation do; returns the entries and the targets (fastest round)."""
    ops = [k for k in paths if not k.startswith("detector")]
    for p in range(passes):
        for name in ops if p % 2 == 0 else ops[::-1]:
            res = dev.time_model(paths[name])
            assert res.ok, res.error
            store.add_op_pass(
                name, p, passes=passes, median_ms=res.latency_ms, min_ms=res.min_ms,
                std_ms=res.std_ms, runs=res.runs, dispersion=res.dispersion, session="s",
                pace=res.pace,
            )  # fmt: skip
    rounds = [dev.time_model(paths["detector/0"]) for _ in range(3)]
    for r, res in enumerate(rounds):
        store.add_e2e_run(
            "det", r, median_ms=res.latency_ms, min_ms=res.min_ms, std_ms=res.std_ms,
            runs=res.runs, dispersion=res.dispersion, session="s", pace=res.pace,
        )  # fmt: skip
    record_pace(store, [dev])
    target = min(r["median_ms"] for r in store.e2e_runs()["det"].values())
    return store.op_latencies(), {"detector/0": target}


def worst_error(got: dict[str, float]) -> float:
    """The largest relative error of entries keyed type/size against the truth."""
    return max(abs(v / truth(k.split("/")[0], int(k.split("/")[1])) - 1.0) for k, v in got.items())


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_pace_entries_and_targets_within_3pc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Compute and memory move in their own phases, up to 1.8x.
    def timeline() -> Timeline:
        return Timeline(
            {
                "compute": generated_phases(seed, 400, 1.8),
                "memory": generated_phases(seed + 100, 400, 1.6),
            }
        )

    paths = models(tmp_path)
    with TableStore.open(tmp_path / "paced.sqlite", create=True) as store:
        with replay_device(monkeypatch, timeline(), "pace-p10") as dev:
            entries, targets = build_and_validate(dev, paths, store)
            summary = dev.pace_summary()
        assert worst_error(entries) < 0.03, entries
        assert worst_error(targets) < 0.03, targets
        assert not store.flagged_keys()
        meta = store.meta()["pace"]
        assert meta["references"]["compute"]["pace_max"] > 1.15  # it did see slow phases
    assert summary is not None and summary["uncorrectable"] == 0
    assert dev.budget.used == 0  # slow phases divided out, not re-measured
    raw_table = TableStore.open(tmp_path / "raw.sqlite", create=True)
    with raw_table as store, replay_device(monkeypatch, timeline(), "p10") as dev:
        raw_entries, raw_targets = build_and_validate(dev, paths, store)
    assert worst_error({**raw_entries, **raw_targets}) > 0.03


def test_recorded_pace_detector_within_3pc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recording's compute pace (1.0-1.82x over 180 s); memory on a generated one.
    tl = Timeline({"compute": recorded_phases(), "memory": generated_phases(5, 180, 1.8)})
    paths = models(tmp_path)
    table = TableStore.open(tmp_path / "t.sqlite", create=True)
    with table as store, replay_device(monkeypatch, tl, "pace-p10") as dev:
        entries, targets = build_and_validate(dev, paths, store)
    assert worst_error({**entries, **targets}) < 0.03, (entries, targets)


def test_rebase_is_exact_and_seeding_shares_the_fast_level(tmp_path: Path) -> None:
    with TableStore.open(tmp_path / "t.sqlite", create=True) as store:
        store.set_meta({"pace": {"references": {"compute": {"fast_ms": 0.8}}}})
        # Divided against 1.0 ms; the fast level turns out to be 0.8 ms: 2.0 -> 1.6.
        pace_rec = {"reference": "compute", "base_ms": 1.0, "raw_ms": 2.5}
        store.add_op_pass(
            "conv2d/x", 0, passes=1, median_ms=2.0, min_ms=None, std_ms=None, runs=40,
            dispersion=None, session="s", pace=pace_rec,
        )  # fmt: skip
        assert store.rebase_pace({"compute": 0.8}) == 1
        assert store.op_latencies()["conv2d/x"] == pytest.approx(1.6)
        assert store.rebase_pace({"compute": 0.8}) == 0  # idempotent

        class Seen:
            def __init__(self) -> None:
                self.bases: dict[str, float] = {}

            def seed_pace(self, bases: dict[str, float]) -> None:
                self.bases = bases

        seen = Seen()
        seed_pace(store, [seen])
        assert seen.bases == {"compute": 0.8}


def test_a_pace_beyond_correction_is_marked_not_kept_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fast start, then the machine stays 4x slow: beyond PACE_LIMIT.
    tl = Timeline({"compute": [(0.0, 1.0), (1.5, 4.0), (1e6, 4.0)], "memory": [(0.0, 1.0)]})
    paths = models(tmp_path)
    with replay_device(monkeypatch, tl, "pace-p10") as dev:
        first = dev.time_model(paths["dwconv2d/0"])
        assert first.pace is not None and not first.pace["uncorrectable"]
        res = dev.time_model(paths["conv2d/0"])
    assert res.ok and res.slow_phase and res.pace is not None and res.pace["uncorrectable"]
    assert res.remeasured >= 1  # the budget was spent on it before it was kept marked
    with TableStore.open(tmp_path / "t.sqlite", create=True) as store:
        store.add_op_pass(
            "conv2d/x", 0, passes=1, median_ms=res.latency_ms, min_ms=None, std_ms=None,
            runs=res.runs, dispersion=None, session="s", pace=res.pace,
        )  # fmt: skip
        assert "beyond correction" in store.flagged_keys()["conv2d/x"]
        assert record_pace(store, [dev]) is not None
        assert store.meta()["pace"]["flagged"] == 1


def test_a_reference_that_cannot_run_is_one_line_before_any_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tl = Timeline({"compute": [(0.0, 1.0)], "memory": [(0.0, 1.0)]})
    with pytest.raises(DeviceError) as err:
        replay_device(monkeypatch, tl, "pace-p10", fail_refs=True)
    msg = str(err.value)
    assert "\n" not in msg and "pace reference compute" in msg and "statistic=p10" in msg


def test_an_old_statistic_table_says_rebuild_with_the_command(tmp_path: Path) -> None:
    with TableStore.open(tmp_path / "old.sqlite", create=True) as store:
        store.set_meta({"statistic": "p10-cpu", "profile": "host"})
        store.add_op_pass(
            "add/x", 0, passes=1, median_ms=1.0, min_ms=None, std_ms=None, runs=1,
            dispersion=None, session="s",
        )  # fmt: skip
        with pytest.raises(TableError) as err:
            store.check_identity({"statistic": "pace-p10-cpu", "profile": "host"})
    msg = str(err.value)
    assert "\n" not in msg and "mnasfpn-lut build --device host --out NEW.sqlite" in msg


def test_shipped_references_are_the_writers_micromodels() -> None:
    for name, key in pace.REFERENCE_KEYS.items():
        assert pace.reference_path(name).read_bytes() == CONVERTERS.get("direct").micromodel(key), (
            f"{name}: regenerate src/mnasfpn/devices/references/{name}.tflite from {key}"
        )


def test_local_levels_and_bound_by() -> None:
    assert pace.bound_by(["ADD"]) == "memory"
    assert pace.bound_by(["ADD", "DEPTHWISE_CONV_2D"]) == "compute"
    levels = pace.local_levels([0.5, 9.5], [float(i) for i in range(10)], [1.0] * 5 + [2.0] * 5)
    assert levels == [1.0, 2.0]
    p = pace.correct([2.0, 4.0], [1.0, 2.0], 1.0)
    assert p.corrected == [2.0, 2.0] and not p.uncorrectable
    assert math.isclose(p.pace_median, 1.5)


def test_validate_reports_the_pace_and_the_spread_it_explained() -> None:
    from mnasfpn.lut.noise import pace_noise

    # Two models, three rounds each: raw rounds moved 1.0/1.5/1.2x, divided ones barely.
    runs = [
        {r: {"median_ms": m * f2, "raw_ms": m * f} for r, (f, f2) in enumerate(fs)}
        for m, fs in ((10.0, ((1.0, 1.0), (1.5, 1.01), (1.2, 0.99))), (20.0, ((1.3, 1.0),
                      (1.0, 1.0), (1.6, 1.02))))
    ]  # fmt: skip
    meta = {"references": {"compute": {"pace_min": 1.0, "pace_max": 1.6}}, "flagged": 0}
    got = pace_noise(runs, meta)
    assert got["raw_round_spread_median"] > 0.4
    assert got["pace_explained"] > 0.95
    assert got["pace_range"] == {"compute": [1.0, 1.6]}
    lo, hi = got["e2e_pace_range"]
    assert 0.99 < lo < 1.01 and 1.5 < hi < 1.6
    assert pace_noise([{0: {"median_ms": 1.0, "raw_ms": None}}], None) == {}
