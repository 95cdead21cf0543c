"""Parser for the text printed by TFLite/LiteRT's stock ``benchmark_model``.

Two summary layouts exist in the wild:

* old (TF 1.x): ``Average inference timings in us: Warmup: W, Init: I, Inference: X``;
  some builds print ``no stats: X`` in place of ``Inference: X``;
* new (TF 2.x / LiteRT): ``Inference timings in us: Init: I, First inference: F,
  Warmup (avg): W, Inference (avg): X``.

Both also print ``count=… first=… curr=… min=… max=… avg=… std=…`` lines, one per
phase (warm-up first, timed runs last), which carry the per-run min and std.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mnasfpn.devices.errors import ModelRunError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_OLD = re.compile(
    rf"Average inference timings in us:\s*Warmup:\s*{_NUM},\s*Init:\s*{_NUM},\s*"
    rf"(?:Inference|no stats):\s*{_NUM}"
)
_NEW = re.compile(
    rf"Inference timings in us:\s*Init:\s*{_NUM},\s*First inference:\s*{_NUM},\s*"
    rf"Warmup \(avg\):\s*{_NUM},\s*Inference \(avg\):\s*{_NUM}"
)
_STATS = re.compile(r"\bcount=(\d+)((?:\s+[a-z0-9_]+=[-+.\deE]+)+)")
_FIELD = re.compile(r"([a-z0-9_]+)=([-+.\deE]+)")


@dataclass(frozen=True)
class RunStats:
    """One ``count=…`` line, times in microseconds."""

    count: int
    first_us: float | None
    curr_us: float | None
    min_us: float | None
    max_us: float | None
    avg_us: float | None
    std_us: float | None


@dataclass(frozen=True)
class BenchmarkOutput:
    layout: str  # "old" or "new"
    init_us: float
    warmup_avg_us: float
    inference_avg_us: float
    first_inference_us: float | None
    inference: RunStats | None
    warmup: RunStats | None

    @property
    def inference_avg_ms(self) -> float:
        return self.inference_avg_us / 1000.0


def _run_stats(line_match: re.Match[str]) -> RunStats:
    fields = {k: float(v) for k, v in _FIELD.findall(line_match.group(2))}
    return RunStats(
        count=int(line_match.group(1)),
        first_us=fields.get("first"),
        curr_us=fields.get("curr"),
        min_us=fields.get("min"),
        max_us=fields.get("max"),
        avg_us=fields.get("avg"),
        std_us=fields.get("std"),
    )


def _failure_hint(text: str) -> str:
    """The last line that looks like an error, or the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|fail|abort|fault|not found|cannot|unable", ln, re.IGNORECASE):
            return ln[:200]
    return lines[-1][:200] if lines else "<no output>"


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parse one run's output; raise ModelRunError when no summary line is present."""
    stats = [_run_stats(m) for m in _STATS.finditer(text)]
    new = _NEW.search(text)
    old = _OLD.search(text)
    if new is not None:
        init, first, warm, inf = (float(g) for g in new.groups())
        layout, first_inf = "new", first
    elif old is not None:
        warm, init, inf = (float(g) for g in old.groups())
        layout, first_inf = "old", None
    else:
        raise ModelRunError(
            "could not parse benchmark_model output (no 'Inference timings' summary; "
            f"last line: {_failure_hint(text)!r}); check the binary and the model"
        )
    inference = stats[-1] if stats else None
    # The last count= line is the timed phase only if its average is the summary's;
    # otherwise (a build that skipped it) we must not report warm-up numbers as runs.
    if (
        inference is not None
        and inference.avg_us is not None
        and abs(inference.avg_us - inf) > max(1.0, 1e-3 * inf)
    ):
        inference = None
    warmup = stats[0] if len(stats) >= 2 else None
    return BenchmarkOutput(
        layout=layout,
        init_us=init,
        warmup_avg_us=warm,
        inference_avg_us=inf,
        first_inference_us=first_inf,
        inference=inference,
        warmup=warmup,
    )


def failure_hint(text: str) -> str:
    return _failure_hint(text)
