"""An Android phone timed with the stock ``benchmark_model`` binary.

Written once against :class:`~mnasfpn.devices.transport.Transport`; dropped connections
are retried a bounded number of times by reconnecting and redoing the step.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

from mnasfpn.devices import pace, sysinfo
from mnasfpn.devices.adaptive import StopRule, run_until_confident
from mnasfpn.devices.base import Device, ModelPath, ProgressCallback, model_label
from mnasfpn.devices.benchmark_output import BenchmarkOutput, failure_hint, parse_benchmark_output
from mnasfpn.devices.errors import ConnectionDropped, DeviceError, ModelRunError
from mnasfpn.devices.profiles import Profile
from mnasfpn.devices.results import DeviceInfo, TimingResult
from mnasfpn.devices.stats import (
    DEFAULT_STATISTIC,
    DriftMonitor,
    RemeasureBudget,
    estimate,
    measure_with_drift_control,
    repeat_until_stable,
    summarize,
)
from mnasfpn.devices.transport import CommandTimeout, Transport

T = TypeVar("T")

_REMOTE_ROOT = "/data/local/tmp"
_q = shlex.quote  # every remote path goes through the device's shell
_RUN_TIMEOUT_S = 600.0


class AdbDevice(Device):
    # Indirection so tests can observe cool-downs and retry pauses without waiting.
    _sleep = staticmethod(time.sleep)
    # Cool-down before timing again a model that ran while the phone throttled.
    throttle_cooldown_s = 10.0

    def __init__(
        self,
        profile: Profile,
        transport: Transport,
        *,
        benchmark_binary: str | None = None,
        retries: int = 3,
        retry_delay_s: float = 0.5,
    ) -> None:
        if profile.kind != "adb":
            raise DeviceError(f"profile {profile.name!r} is not an adb profile")
        self.profile = profile
        self.transport = transport
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.statistic = DEFAULT_STATISTIC
        # Throttling = the core's frequency cap above the lowest one seen (uncapped).
        self.drift = DriftMonitor(margin=0.05, quantile=0.0, min_history=1)
        self.budget = RemeasureBudget()
        self.workdir = f"{_REMOTE_ROOT}/mnasfpn-{uuid.uuid4().hex[:8]}"
        self._workdir_made = False
        self.model = self._getprop("ro.product.model")
        if not profile.matches_model(self.model):
            raise DeviceError(
                f"phone {transport.serial} is a {self.model!r} but profile {profile.name!r} "
                f"expects {' or '.join(repr(m) for m in profile.expected_models)}; "
                "use its own profile or --device generic-android"
            )
        self._mkdir()
        self.binary = self._install_binary(benchmark_binary)
        # pace-p10 (opt-in on phones: --set statistic=pace-p10): short runs of a reference
        # model alternate with the target's, and each target run is divided by the pace
        # of the reference runs either side of it (devices/pace.py).
        self.paced = profile.statistic == pace.STATISTIC
        if profile.statistic:
            self.statistic = profile.statistic
        self.pace = pace.PaceTracker()
        self._refs: dict[str, str] = {}
        if self.paced:
            self._install_references()

    def _install_references(self) -> None:
        """Push the pace references and run each once; one that cannot run stops here,
        in one line, before any model is timed."""
        for name in pace.REFERENCE_KEYS:
            remote = f"{self.workdir}/ref-{name}.tflite"
            self._push(pace.reference_path(name), remote)
            try:
                self._run_once(remote)
            except DeviceError as e:
                raise DeviceError(
                    f"pace reference {name} cannot run on {self.transport.serial} ({e}); "
                    "time without it: --set statistic=p10"
                ) from None
            self._refs[name] = remote

    def seed_pace(self, bases: dict[str, float]) -> None:
        self.pace.seed(bases)

    def pace_summary(self) -> dict[str, object] | None:
        return self.pace.summary() if self.paced else None

    # -- plumbing --------------------------------------------------------------------

    def _retry(self, what: str, step: Callable[[], T]) -> T:
        last: ConnectionDropped | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.retry_delay_s * attempt)
                try:
                    self.transport.reconnect()
                except ConnectionDropped as e:
                    last = e
                    continue
            try:
                return step()
            except ConnectionDropped as e:
                last = e
        raise ConnectionDropped(
            f"{last} (gave up on {what} after {self.retries + 1} attempts); "
            "check the USB cable / network and rerun"
        )

    def _sh(self, cmd: str, timeout: float = 60.0) -> tuple[str, int]:
        res = self._retry(cmd.split()[0], lambda: self.transport.shell(cmd, timeout))
        return res.output, res.exit_code

    def _read(self, cmd: str) -> str | None:
        out, code = self._sh(cmd)
        return out.strip() if code == 0 and out.strip() else None

    def _getprop(self, name: str) -> str:
        return self._read(f"getprop {name}") or ""

    def _mkdir(self) -> None:
        out, code = self._sh(f"mkdir -p {_q(self.workdir)}")
        if code != 0:
            raise DeviceError(
                f"cannot create {self.workdir} on {self.transport.serial} "
                f"({failure_hint(out)}); check free space and permissions"
            )
        self._workdir_made = True

    def _push(self, local: Path, remote: str) -> None:
        self._retry(f"push of {local.name}", lambda: self.transport.push(local, remote))

    def _install_binary(self, local_binary: str | None) -> str:
        serial = self.transport.serial
        if local_binary:
            local = Path(local_binary)
            if not local.is_file():
                raise DeviceError(f"benchmark binary {local} does not exist; check the path")
            remote = f"{self.workdir}/benchmark_model"
            self._push(local, remote)
            self._sh(f"chmod 755 {_q(remote)}")
            out, code = self._sh(f"{_q(remote)} --help")
            # 126/127: not executable / not found; >128: killed by a signal (crash).
            if code >= 126 or "graph" not in out:
                raise DeviceError(
                    f"the pushed benchmark binary does not run on {serial} (exit {code}: "
                    f"{failure_hint(out)}); use a benchmark_model built for "
                    f"{self._getprop('ro.product.cpu.abi') or 'this ABI'}"
                )
            return remote
        remote = self.profile.benchmark_binary
        _, code = self._sh(f"ls {_q(remote)}")
        if code != 0:
            raise DeviceError(
                f"no benchmark_model at {remote} on {serial}; pass --benchmark-binary "
                "PATH (the TFLite/LiteRT benchmark_model for this phone) to push one"
            )
        return remote

    # -- Device ----------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        core = self.profile.core
        paths = sysinfo.cpufreq_paths(core)
        temp = None
        for zone in range(4):
            temp = sysinfo.parse_temperature_c(
                self._read(f"cat {_q(f'/sys/class/thermal/thermal_zone{zone}/temp')}")
            )
            if temp is not None:
                break
        md5 = self._read(f"md5sum {_q(self.binary)}")
        release = self._getprop("ro.build.version.release")
        sdk = self._getprop("ro.build.version.sdk")
        return DeviceInfo(
            profile=self.profile.name,
            kind="adb",
            model=self.model,
            serial=self.transport.serial,
            abi=self._getprop("ro.product.cpu.abi") or None,
            cores=sysinfo.parse_cpu_count(self._read("cat /sys/devices/system/cpu/possible")),
            core=core,
            governor=self._read(f"cat {_q(paths['governor'])}"),
            cur_freq_khz=sysinfo.parse_int(self._read(f"cat {_q(paths['cur'])}")),
            max_freq_khz=sysinfo.parse_int(self._read(f"cat {_q(paths['max'])}")),
            temperature_c=temp,
            os_version=f"Android {release} (SDK {sdk})" if release else None,
            runtime="tflite benchmark_model",
            # The stock binary prints no version of its own; its hash identifies it.
            runtime_version=None,
            binary=self.binary,
            binary_version=f"md5 {md5.split()[0]}" if md5 else None,
            extra={
                "fingerprint": self._getprop("ro.build.fingerprint"),
                "taskset_mask": self.profile.mask(),
                "xnnpack": str(self.profile.use_xnnpack).lower(),
            },
        )

    def _command(self, remote_model: str) -> str:
        p = self.profile
        return (
            f"taskset {_q(p.mask())} {_q(self.binary)} --graph={_q(remote_model)} "
            f"--num_threads={p.threads} --warmup_runs={p.warmup_runs} "
            f"--num_runs={p.num_runs} --use_xnnpack={'true' if p.use_xnnpack else 'false'}"
        )

    def _run_once(self, remote_model: str) -> BenchmarkOutput:
        cmd = self._command(remote_model)
        try:
            out, code = self._sh(cmd, timeout=_RUN_TIMEOUT_S)
        except CommandTimeout as e:
            raise ModelRunError(f"benchmark_model did not finish: {e}") from e
        if code != 0:
            raise ModelRunError(f"benchmark_model exited with status {code}: {failure_hint(out)}")
        return parse_benchmark_output(out)

    def _throttle_ratio(self) -> float | None:
        """The pinned core's frequency cap ratio (cpuinfo_max / scaling_max), None where
        the files are not readable."""
        paths = sysinfo.cpufreq_paths(self.profile.core)
        out, code = self._sh(f"cat {paths['max']} {paths['cap']}")
        values = [sysinfo.parse_int(v) for v in out.split()] if code == 0 else []
        if len(values) != 2:
            return None
        return sysinfo.cap_ratio(values[0], values[1])

    def _adaptive_rule(self) -> StopRule:
        """``runs = adaptive`` on a phone: the binary prints one average per run, too few
        samples for a quantile's interval, so runs (min_repeats..max_repeats of them)
        continue until the t interval of their mean is within target_ci."""
        p = self.profile
        return StopRule(
            quantile=None,
            target=p.target_ci,
            confidence=p.confidence,
            min_runs=max(2, p.min_repeats),
            max_runs=max(2, p.max_repeats),
            max_time_s=p.max_time_s,
        )

    def _time_remote(self, label: str, remote_model: str, bound: str = "compute") -> TimingResult:
        """Repeated short runs of ``benchmark_model`` (the stock binary prints no per-run
        times): each run's average is one round; the profile's ``runs`` says how many
        (fixed: until rounds agree; adaptive: see _adaptive_rule). The frequency cap is
        read before and after; a model timed while the phone throttled is timed again
        after a cool-down, within the device's re-measurement budget."""
        p = self.profile
        tries: list[tuple[list[BenchmarkOutput], int, bool]] = []
        paced: list[dict[str, object]] = []

        def measure() -> tuple[list[list[float]], list[float]]:
            outputs: list[BenchmarkOutput] = []
            raw: list[float] = []
            refs: list[float] = []

            def reference() -> float:
                refs.append(self._run_once(self._refs[bound]).inference_avg_ms)
                return refs[-1]

            def one_round() -> list[float]:
                if self.paced and not refs:
                    reference()
                outputs.append(self._run_once(remote_model))
                if not self.paced:
                    return [outputs[-1].inference_avg_ms]
                raw.append(outputs[-1].inference_avg_ms)
                level = (refs[-1] + reference()) / 2  # the reference runs either side
                base = min(self.pace.base.get(bound, math.inf), *refs)
                return [raw[-1] * base / level]

            before = self._throttle_ratio()
            if p.runs == "adaptive":
                got = run_until_confident(
                    lambda k: [x for _ in range(k) for x in one_round()], self._adaptive_rule()
                )
                rounds = [[x] for r in got.rounds for x in r]  # one run, one round
                n, stable = len(rounds), got.converged
            else:
                rounds, n, stable = repeat_until_stable(
                    one_round,
                    min_repeats=p.min_repeats,
                    max_repeats=p.max_repeats,
                    tolerance=p.stability_tolerance,
                )
            tries.append((outputs, n, stable))
            after = self._throttle_ratio()
            if self.paced:
                # Divided again against the fast level as it stands after this measurement.
                base = self.pace.update(bound, refs)
                levels = [(a + b) / 2 for a, b in pairwise(refs)]
                got = pace.correct(raw, levels, base)
                self.pace.record(bound, statistics.median(refs), got)
                rounds = [[x] for x in got.corrected]
                paced.append(
                    {
                        "reference": bound,
                        "base_ms": base,
                        "pace": got.pace_median,
                        "pace_min": min(got.paces),
                        "pace_max": max(got.paces),
                        "raw_ms": estimate([[x] for x in raw], "p10"),
                        "uncorrectable": got.uncorrectable,
                    }
                )
            return rounds, [r for r in (before, after) if r is not None]

        kept, attempts = measure_with_drift_control(
            measure,
            self.drift,
            self.budget,
            statistic=self.statistic,
            settle=lambda: self._sleep(max(self.profile.cooldown_s, self.throttle_cooldown_s)),
        )
        outputs, rounds, stable = tries[next(i for i, a in enumerate(attempts) if a is kept)]
        samples = [x for r in kept.rounds for x in r]
        runs = sum(o.inference.count if o.inference else p.num_runs for o in outputs)
        mins = [o.inference.min_us / 1000 for o in outputs if o.inference and o.inference.min_us]
        stds = [o.inference.std_us / 1000 for o in outputs if o.inference and o.inference.std_us]
        std_ms = None
        if len(stds) == len(outputs):
            # Pooled per-run std over all rounds: within-round spread plus the drift of
            # the round averages.
            std_ms = math.sqrt(
                statistics.fmean(s * s for s in stds) + statistics.pvariance(samples)
            )
        return summarize(
            label,
            samples,
            repeats=rounds,
            stable=stable,
            runs=runs,
            min_ms=min(mins) if mins else None,
            std_ms=std_ms,
            rounds=kept.rounds,
            statistic=self.statistic,
            clock="wall",
            ref_ratio=kept.ref_ratio,
            slow_phase=kept.slow,
            remeasured=len(attempts) - 1,
            ref_ms=kept.refs,
            pace=paced[next(i for i, a in enumerate(attempts) if a is kept)] if paced else None,
        )

    def time_models(
        self, paths: Sequence[ModelPath], progress: ProgressCallback | None = None
    ) -> list[TimingResult]:
        total = len(paths)
        results: list[TimingResult | None] = [None] * total
        remotes: dict[int, str] = {}
        fatal: str | None = None
        # Push the whole batch first so timing is not interleaved with USB traffic.
        for i, path in enumerate(paths):
            local = Path(path)
            if not local.is_file():
                results[i] = TimingResult.failed(model_label(path), f"model file not found: {path}")
                continue
            remote = f"{self.workdir}/{i:04d}.tflite"
            try:
                self._push(local, remote)
                remotes[i] = remote
            except ConnectionDropped as e:
                fatal = str(e)
                break
        ran_one = False
        for i, path in enumerate(paths):
            label = model_label(path)
            if results[i] is None:
                if fatal is not None:
                    results[i] = TimingResult.failed(label, f"not timed: {fatal}")
                elif i not in remotes:
                    results[i] = TimingResult.failed(label, "not pushed to the device")
                else:
                    if ran_one and self.profile.cooldown_s > 0:
                        self._sleep(self.profile.cooldown_s)
                    ran_one = True
                    try:
                        results[i] = self._time_remote(label, remotes[i], pace.bound_by_name(path))
                        self._sh(f"rm -f {_q(remotes[i])}")
                    except ConnectionDropped as e:
                        fatal = str(e)
                        results[i] = TimingResult.failed(label, fatal)
                    except DeviceError as e:
                        results[i] = TimingResult.failed(label, str(e))
            if progress is not None:
                res = results[i]
                assert res is not None
                progress(i, total, res)
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self._workdir_made:
            self._workdir_made = False
            # A phone that is gone has nothing left that we could remove.
            with contextlib.suppress(DeviceError):
                self._retry("clean-up", lambda: self.transport.remove(self.workdir))
        self.transport.close()
