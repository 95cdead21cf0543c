"""The host device: LiteRT in a pinned, long-lived worker process."""

from __future__ import annotations

import os
from pathlib import Path

from mnasfpn.devices import TimingResult, open_device
from mnasfpn.devices.host import HostDevice

QUICK_HOST = {
    "runs": "fixed",
    "num_runs": 10,
    "warmup_runs": 2,
    "min_repeats": 2,
    "max_repeats": 5,
}


def test_host_batch_times_models_and_reports_failures(models: dict[str, Path]) -> None:
    batch = [models["tiny"], models["corrupt"], models["small"], Path("/no/such.tflite")]
    seen: list[tuple[int, int, str]] = []

    def progress(i: int, n: int, r: TimingResult) -> None:
        seen.append((i, n, r.model))

    with open_device("host", overrides=QUICK_HOST) as dev:
        assert isinstance(dev, HostDevice)
        pid = dev._worker.proc.pid if dev._worker else None
        results = dev.time_models(batch, progress=progress)
        # One worker for the whole batch, even after a model failed in it.
        assert dev._worker is not None and dev._worker.proc.pid == pid
        worker = dev._worker
    assert worker.proc.poll() is not None  # close() stopped it

    assert [r.model for r in results] == [str(p) for p in batch]
    assert seen == [(i, 4, str(p)) for i, p in enumerate(batch)]
    for r in (results[0], results[2]):
        assert r.ok and r.error is None
        assert r.median_ms is not None and r.median_ms > 0
        assert r.min_ms is not None and 0 < r.min_ms <= r.median_ms
        assert r.std_ms is not None and r.std_ms >= 0
        assert r.runs >= QUICK_HOST["num_runs"] * QUICK_HOST["min_repeats"]
        assert len(r.samples_ms) == r.runs and r.repeats >= 2
        assert r.dispersion is not None and r.dispersion >= 0
    for r in (results[1], results[3]):
        assert not r.ok
        assert r.median_ms is None and r.min_ms is None and r.samples_ms == []
        assert r.error
    assert "not a valid" in (results[1].error or "").lower() or "LiteRT" in (results[1].error or "")
    assert "not found" in (results[3].error or "")
    # The small model does more work than the tiny one.
    assert results[2].median_ms > results[0].median_ms  # type: ignore[operator]


def test_host_worker_is_pinned_and_tensorflow_free() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    with open_device("host", overrides=QUICK_HOST) as dev:
        assert isinstance(dev, HostDevice)
        info = dev.info()
        assert dev._worker is not None
        hello = dev._worker.hello
        assert hello["affinity"] == [allowed[-1]]
        assert os.sched_getaffinity(dev._worker.proc.pid) == {allowed[-1]}
        assert hello["tensorflow_loaded"] is False
    assert info.kind == "host" and info.core == allowed[-1]
    assert info.runtime == "ai-edge-litert" and info.runtime_version
    assert info.cores == os.cpu_count()
    d = info.to_dict()
    assert d["profile"] == "host" and d["model"]


def test_host_restarts_a_dead_worker(models: dict[str, Path]) -> None:
    with open_device("host", overrides=QUICK_HOST) as dev:
        assert isinstance(dev, HostDevice) and dev._worker is not None
        dev._worker.proc.kill()
        dev._worker.proc.wait()
        r = dev.time_model(models["tiny"])
    assert r.ok and r.median_ms is not None and r.median_ms > 0
