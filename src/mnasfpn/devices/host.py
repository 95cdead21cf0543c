"""The host device: LiteRT on this machine's CPU, in a worker pinned to one core per
interpreter thread."""

from __future__ import annotations

import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mnasfpn.devices import contention, pace, sysinfo
from mnasfpn.devices.adaptive import run_until_confident
from mnasfpn.devices.base import Device, ModelPath, ProgressCallback, model_label
from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.profiles import Profile
from mnasfpn.devices.results import DeviceInfo, TimingResult
from mnasfpn.devices.stats import (
    PACED,
    DriftMonitor,
    RemeasureBudget,
    check_statistic,
    estimate,
    measure_with_drift_control,
    repeat_until_stable,
    summarize,
)

_WORKER = Path(__file__).with_name("host_worker.py")
_STARTUP_TIMEOUT_S = 120.0
# Share of a model's process CPU time allowed off the calling thread with the cpu clock
# (XNNPACK's pool at 2+ threads does most of it), judged only above an absolute floor:
# over a tiny op's warm-up, a few microseconds of another thread of the process would
# read as a large share.
OFFTHREAD_LIMIT = 0.05
OFFTHREAD_MIN_MS = 1.0
_REQUEST_TIMEOUT_S = 600.0


class WorkerDied(DeviceError):
    pass


def choose_core(profile: Profile) -> int:
    return choose_cores(profile)[0]


def choose_cores(profile: Profile) -> list[int]:
    """The cores the worker is pinned to: one per interpreter thread, starting at the
    profile's core (-1: the last ones this process may use), so that XNNPACK's pool
    threads get cores of their own and the scheduler cannot stack them on one."""
    allowed = sorted(os.sched_getaffinity(0))
    n = profile.threads
    if n > len(allowed):
        raise DeviceError(
            f"profile {profile.name!r} runs {n} threads but this process may only use "
            f"cores {allowed}; use fewer threads (--set threads={len(allowed)})"
        )
    if profile.core < 0:
        return allowed[-n:]
    if profile.core not in allowed:
        raise DeviceError(
            f"profile {profile.name!r} pins core {profile.core} but this process may only use "
            f"cores {allowed}; set core = -1 in the profile"
        )
    start = allowed.index(profile.core)
    return [allowed[(start + i) % len(allowed)] for i in range(n)]


class _WorkerProcess:
    """One long-lived worker for a whole batch (model loads are cheap, process starts not)."""

    def __init__(self, cores: list[int]) -> None:
        self.cores = cores
        # Kept open for the worker's lifetime (closed in stop()), so no context manager.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        env = dict(os.environ)
        # A single thread also for numpy's BLAS, so the worker does not spread off-core.
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER), ",".join(map(str, cores))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
            bufsize=1,
        )
        self.hello = self._read(_STARTUP_TIMEOUT_S)
        if self.hello.get("affinity") != sorted(cores):
            self.stop()
            raise DeviceError(f"host worker could not be pinned to cores {cores}; check cgroups")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [
            ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()
        ]
        return lines[-1][:200] if lines else "no stderr"

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            what = f"exited with status {code}" if code is not None else "timed out"
            self.stop()
            raise WorkerDied(f"host timing worker {what} ({self._stderr_tail()})")
        return json.loads(line)

    def request(self, timeout: float = _REQUEST_TIMEOUT_S, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.stop()
            raise WorkerDied(f"host timing worker is gone ({self._stderr_tail()})") from e
        return self._read(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


def _split_like(flat: list[float], chunks: list[list[float]]) -> list[list[float]]:
    """``flat`` in rounds as long as ``chunks`` when nothing was dropped, else one round."""
    if len(flat) != sum(len(c) for c in chunks):
        return [flat]
    out, i = [], 0
    for c in chunks:
        out.append(flat[i : i + len(c)])
        i += len(c)
    return out


class HostDevice(Device):
    """Times models in the pinned worker.

    Each model is measured between two timings of the worker's reference kernel (the
    one after a model serves as the one before the next, see _recent_reference); when
    they show a slow phase (see :class:`DriftMonitor`), the model is measured again once
    the reference reads quiet (at most ``settle_s`` later), within a
    :class:`RemeasureBudget`. The profile's ``runs`` says how many
    invocations a model gets: until its statistic's confidence interval is narrow enough
    (adaptive) or fixed rounds. With one interpreter thread the clock
    is the worker thread's CPU time (time another process held the core is not the
    model's), otherwise wall time. With several threads the worker is pinned to as many
    cores, and since wall time then counts every other process on them, the CPU pressure
    on the machine is sampled while timing (:mod:`contention`) and reported.
    """

    # Paced statistic: a reference invocation after every this many ms of the target's
    # (the references take ~0.15-0.9 ms; phases last a second or more, so 5 ms is fine
    # grain and costs a build ~15%), and at least this many per call (a 5 µs op's 40
    # invocations are over in 0.2 ms: the references either side of them see its pace).
    pace_grain_ms = 5.0
    pace_min_refs = 3
    # Before a re-measure: the longest wait for a slow phase to pass, and how often the
    # reference is timed meanwhile.
    settle_s = 0.25
    settle_poll_s = 0.02
    ref_reuse_s = 1.0

    def __init__(
        self, profile: Profile, *, statistic: str | None = None, clock: str | None = None
    ) -> None:
        if profile.kind != "host":
            raise DeviceError(f"profile {profile.name!r} is not a host profile")
        if clock not in (None, "cpu", "wall"):
            raise DeviceError(f"unknown clock {clock!r}; use cpu or wall")
        if clock == "cpu" and profile.threads != 1:
            raise DeviceError("the cpu clock needs threads = 1 (other threads' work is unseen)")
        self.profile = profile
        self.statistic = check_statistic(statistic or profile.statistic or pace.STATISTIC)
        self.paced = self.statistic in PACED
        self.clock = clock or ("cpu" if profile.threads == 1 else "wall")
        self.cores = choose_cores(profile)
        self.core = self.cores[0]
        self.drift = DriftMonitor()
        self.budget = RemeasureBudget()
        self._rule = profile.stop_rule(self.statistic) if profile.runs == "adaptive" else None
        # The last reference timing and when it was taken (see _recent_reference).
        self._last_ref: tuple[float, float] | None = None
        self.contention = contention.ContentionMonitor(self.cores, profile.threads)
        self.pace = pace.PaceTracker()
        self._worker: _WorkerProcess | None = None
        try:
            self._ensure_worker()
        except BaseException:
            self.close()
            raise

    def _ensure_worker(self) -> _WorkerProcess:
        if self._worker is None or not self._worker.alive():
            self._worker = _WorkerProcess(self.cores)
            if self.paced:
                self._load_references(self._worker)
        return self._worker

    def _load_references(self, worker: _WorkerProcess) -> None:
        """Load the pace references in the worker; one that cannot be loaded or run stops
        everything here, before any model is timed."""
        paths = {name: pace.reference_path(name) for name in pace.REFERENCE_KEYS}
        for name, path in paths.items():
            if not path.is_file():
                raise DeviceError(
                    f"pace reference {name} is missing ({path}); reinstall mnasfpn, or time "
                    "without it: --set statistic=p10"
                )
        p = self.profile
        rep = worker.request(
            op="refs",
            paths={n: str(q) for n, q in paths.items()},
            threads=p.threads,
            xnnpack=p.use_xnnpack,
        )
        if not rep["ok"]:
            raise DeviceError(
                f"{rep['error']}: the pace cannot be measured on this device; "
                "time without it: --set statistic=p10"
            )

    def seed_pace(self, bases: dict[str, float]) -> None:
        """Start from a table's fast-phase reference levels, so its entries share them."""
        self.pace.seed(bases)

    def pace_summary(self) -> dict[str, Any] | None:
        return self.pace.summary() if self.paced else None

    def load_summary(self) -> dict[str, Any]:
        out = {**super().load_summary(), "contention": self.contention.summary()}
        if self.paced:
            out["pace"] = self.pace.summary()
        return out

    def load_note(self) -> str | None:
        # Only wall-clock timings are inflated by other processes; the cpu clock is not.
        return self.contention.note() if self.clock == "wall" else None

    def info(self) -> DeviceInfo:
        hello = self._ensure_worker().hello
        freq = sysinfo.local_cpufreq(self.core)
        return DeviceInfo(
            profile=self.profile.name,
            kind="host",
            model=sysinfo.local_cpu_model(),
            serial=platform.node(),
            abi=platform.machine(),
            cores=os.cpu_count(),
            core=self.core,
            governor=freq.governor,
            cur_freq_khz=freq.cur_khz,
            max_freq_khz=freq.max_khz,
            temperature_c=sysinfo.local_temperature_c(),
            os_version=f"{platform.system()} {platform.release()}",
            runtime="ai-edge-litert",
            runtime_version=str(hello.get("litert_version")),
            binary=f"python {hello.get('python_version')}",
            binary_version=f"numpy {hello.get('numpy_version')}",
            extra={
                "xnnpack": str(self.profile.use_xnnpack).lower(),
                "threads": str(self.profile.threads),
                "cores": ",".join(map(str, self.cores)),
            },
        )

    def _recent_reference(self) -> float | None:
        """The reference timing taken just after the previous model, as this model's
        "before" check: nothing but a model load ran since, so timing the kernel again
        would see the same machine. Used once, only within ``ref_reuse_s`` and only when
        it was not slow (a slow phase is checked afresh, after the settle)."""
        last, self._last_ref = self._last_ref, None
        if last is None or time.monotonic() - last[1] > self.ref_reuse_s:
            return None
        return None if self.drift.is_slow(last[0]) else last[0]

    def _wait_until_quiet(self, reference: Callable[[], float]) -> None:
        """Time the reference until it reads quiet, for at most ``settle_s``. Most slow
        readings on a shared machine are bursts that are over by the next check, so a
        fixed sleep mostly waited for nothing (up to 40% of a build's time on a 2-core
        VM); the quiet reading then serves as the re-measure's "before" check."""
        deadline = time.monotonic() + self.settle_s
        while self.drift.is_slow(reference()) and time.monotonic() < deadline:
            time.sleep(self.settle_poll_s)

    def _time_one(self, path: ModelPath) -> TimingResult:
        label = model_label(path)
        if not Path(path).is_file():
            return TimingResult.failed(label, f"model file not found: {path}")
        worker = self._ensure_worker()
        p = self.profile
        try:
            rep = worker.request(
                op="load",
                path=str(Path(path).resolve()),
                threads=p.threads,
                warmup=p.warmup_runs,
                warmup_s=p.warmup_s,
                xnnpack=p.use_xnnpack,
            )
            if not rep["ok"]:
                return TimingResult.failed(label, rep["error"])
            if (
                self.clock == "cpu"
                and rep.get("offthread_share", 0.0) > OFFTHREAD_LIMIT
                and rep.get("offthread_ms", 0.0) > OFFTHREAD_MIN_MS
            ):
                # The calling thread's CPU time would miss the pool threads' work.
                return TimingResult.failed(
                    label,
                    f"{100 * rep['offthread_share']:.0f}% of this model's CPU time ran off the "
                    "calling thread, so the cpu clock would undercount it; time it with "
                    "--set threads=1 or on the wall clock",
                )

            key = "cpu_ms" if self.clock == "cpu" else "samples_ms"
            ref_key = "cpu_ms" if self.clock == "cpu" else "wall_ms"
            if self.paced:
                bound = pace.bound_by(rep.get("ops") or ["CONV_2D"])
                return self._time_paced(worker, label, bound, key)
            tries: list[tuple[int, bool]] = []

            def reference() -> float:
                r = worker.request(op="ref")
                if not r["ok"]:
                    raise DeviceError(r["error"])
                self._last_ref = (float(r[ref_key]), time.monotonic())
                return self._last_ref[0]

            def runs(n: int) -> list[float]:
                r = worker.request(op="run", n=n)
                if not r["ok"]:
                    raise DeviceError(r["error"])
                return r[key]

            def measure() -> tuple[list[list[float]], list[float]]:
                before = self._recent_reference() or reference()
                if self._rule is not None:
                    got = run_until_confident(runs, self._rule)
                    rounds, n, stable = got.rounds, len(got.rounds), got.converged
                else:
                    rounds, n, stable = repeat_until_stable(
                        lambda: runs(p.num_runs),
                        min_repeats=p.min_repeats,
                        max_repeats=p.max_repeats,
                        tolerance=p.stability_tolerance,
                    )
                tries.append((n, stable))
                return rounds, [before, reference()]

            kept, attempts = measure_with_drift_control(
                measure,
                self.drift,
                self.budget,
                statistic=self.statistic,
                settle=lambda: self._wait_until_quiet(reference),
            )
            # No "unload" round trip: the next load replaces the model (and frees it first).
        except DeviceError as e:
            # A crash in native code kills only the worker; the next model gets a new one.
            return TimingResult.failed(label, str(e))
        n, stable = tries[next(i for i, a in enumerate(attempts) if a is kept)]
        return summarize(
            label,
            [x for r in kept.rounds for x in r],
            repeats=n,
            stable=stable,
            rounds=kept.rounds,
            statistic=self.statistic,
            clock=self.clock,
            ref_ratio=kept.ref_ratio,
            slow_phase=kept.slow,
            remeasured=len(attempts) - 1,
            ref_ms=kept.refs,
        )

    def _time_paced(self, worker: _WorkerProcess, label: str, ref: str, key: str) -> TimingResult:
        """Time the loaded model interleaved with reference ``ref`` and divide each
        invocation by the pace next to it (devices/pace.py). A slow phase is divided out,
        not waited for: only a pace beyond correction is measured again (within the
        re-measure budget), and kept marked when it stays so."""
        ref_key = "ref_cpu_ms" if self.clock == "cpu" else "ref_wall_ms"
        self.budget.items += 1
        tries = 0
        while True:
            chunks, t_s, ref_t, ref_ms, n, stable = self._paced_attempt(worker, ref, key, ref_key)
            raw = [x for c in chunks for x in c]
            base = self.pace.update(ref, ref_ms)
            paced = pace.correct(raw, pace.local_levels(t_s, ref_t, ref_ms), base)
            if not paced.uncorrectable or not self.budget.allow(tries):
                break
            tries += 1
            self.budget.spend()
            time.sleep(self.settle_s)
        self.pace.record(ref, statistics.median(ref_ms), paced)
        return summarize(
            label,
            paced.corrected,
            repeats=n,
            stable=stable,
            rounds=_split_like(paced.corrected, chunks),
            statistic=self.statistic,
            clock=self.clock,
            ref_ratio=paced.pace_median,
            slow_phase=paced.uncorrectable,
            remeasured=tries,
            ref_ms=ref_ms,
            pace={
                "reference": ref,
                "base_ms": base,
                "pace": paced.pace_median,
                "pace_min": min(paced.paces),
                "pace_max": max(paced.paces),
                "raw_ms": estimate([raw], "p10"),
                "uncorrectable": paced.uncorrectable,
            },
        )

    def _paced_attempt(
        self, worker: _WorkerProcess, ref: str, key: str, ref_key: str
    ) -> tuple[list[list[float]], list[float], list[float], list[float], int, bool]:
        """One interleaved measurement: raw invocations by call, their start times, the
        reference's times and timings, the round count and whether it settled."""
        p = self.profile
        chunks: list[list[float]] = []
        t_s: list[float] = []
        ref_t: list[float] = []
        ref_ms: list[float] = []
        others: list[dict[str, float]] = []

        def runs(n: int) -> list[float]:
            r = worker.request(
                op="run",
                n=n,
                ref=ref,
                grain_ms=self.pace_grain_ms,
                burst=max(1, n // (self.pace_min_refs - 1)),
                warm=True,  # a reference timed cold reads what the target evicted
                others=[o for o in pace.REFERENCE_KEYS if o != ref],
            )
            if not r["ok"]:
                raise DeviceError(r["error"])
            chunks.append(r[key])
            t_s.extend(r["t_s"])
            ref_t.extend(r["ref_t_s"])
            ref_ms.extend(r[ref_key])
            others.append(r["others_" + ref_key.removeprefix("ref_")])
            # For the stopping rule: this chunk divided by its pace so far (the fast
            # level is settled once the measurement is over).
            base = self.pace.base.get(ref) or min(ref_ms)
            levels = pace.local_levels(r["t_s"], ref_t, ref_ms)
            return [x * base / lv for x, lv in zip(r[key], levels, strict=True)]

        if self._rule is not None:
            got = run_until_confident(runs, self._rule)
            n, stable = len(got.rounds), got.converged
        else:
            _, n, stable = repeat_until_stable(
                lambda: runs(p.num_runs),
                min_repeats=p.min_repeats,
                max_repeats=p.max_repeats,
                tolerance=p.stability_tolerance,
            )
        # The other references' fast levels follow the whole run, not only their models.
        for name in {k for o in others for k in o}:
            self.pace.update(name, [o[name] for o in others if name in o])
        return chunks, t_s, ref_t, ref_ms, n, stable

    def time_models(
        self, paths: Sequence[ModelPath], progress: ProgressCallback | None = None
    ) -> list[TimingResult]:
        results: list[TimingResult] = []
        self.contention.sample()
        for i, path in enumerate(paths):
            res = self._time_one(path)
            results.append(res)
            self.contention.sample()
            if progress is not None:
                progress(i, len(paths), res)
        return results

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
