"""The benchmark_model parser on verbatim outputs of both layouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnasfpn.devices.benchmark_output import parse_benchmark_output
from mnasfpn.devices.errors import ModelRunError

OLD = """\
STARTING!
Min num runs: [50]
Min runs duration (seconds): [1]
Max runs duration (seconds): [150]
Inter-run delay (seconds): [-1]
Num threads: [1]
Benchmark name: []
Output prefix: []
Min warmup runs: [1]
Min warmup runs duration (seconds): [0.5]
Graph: [/data/local/tmp/ssdlite_mnasfpn.tflite]
Input layers: []
Input shapes: []
Use nnapi : [0]
Use legacy nnapi : [0]
Use gpu : [0]
Allow fp16 : [0]
Require full delegation : [0]
Enable op profiling: [0]
Max profiling buffer entries: [1024]
Loaded model /data/local/tmp/ssdlite_mnasfpn.tflite
resolved reporter
Initialized session in 7.327ms
Running benchmark for at least 1 iterations and at least 0.5 seconds
count=7 first=88521 curr=80211 min=80211 max=88521 avg=83095.7 std=2716

Running benchmark for at least 50 iterations and at least 1 seconds
count=50 first=76327 curr=75741 min=75022 max=78391 avg=75936.5 std=655

Average inference timings in us: Warmup: 83095.7, Init: 7327, Inference: 75936.5
"""

OLD_NO_STATS = OLD.replace("Inference: 75936.5", "no stats: 75936.5")

NEW = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Num threads: [1]
INFO: Min warmup runs: [10]
INFO: Graph: [/data/local/tmp/mnasfpn-1a2b3c4d/0000.tflite]
INFO: Signature to run: []
INFO: #threads used for CPU inference: [1]
INFO: Use xnnpack: [0]
INFO: Loaded model /data/local/tmp/mnasfpn-1a2b3c4d/0000.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: The input model file size (MB): 9.43786
INFO: Initialized session in 3.652ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=37 first=21036 curr=12700 min=12591 max=21036 avg=13716.5 std=1383 p5=12620 median=12750 p95=16222

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=79 first=12785 curr=12694 min=12602 max=13566 avg=12789.9 std=165 p5=12627 median=12760 p95=13140

INFO: Inference timings in us: Init: 3652, First inference: 21036, Warmup (avg): 13716.5, Inference (avg): 12789.9
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your one's own risk.
INFO: Memory footprint delta from the start of the tool (MB): init=6.08984 overall=15.6484
"""  # noqa: E501


@pytest.mark.parametrize("text", [OLD, OLD_NO_STATS], ids=["old", "old-no-stats"])
def test_old_layout(text: str) -> None:
    out = parse_benchmark_output(text)
    assert out.layout == "old"
    assert out.inference_avg_us == 75936.5
    assert out.init_us == 7327
    assert out.warmup_avg_us == 83095.7
    assert out.first_inference_us is None
    assert out.inference is not None
    assert (out.inference.count, out.inference.min_us, out.inference.std_us) == (50, 75022, 655)
    assert out.warmup is not None and out.warmup.count == 7
    assert out.inference_avg_ms == pytest.approx(75.9365)


def test_new_layout() -> None:
    out = parse_benchmark_output(NEW)
    assert out.layout == "new"
    assert (out.init_us, out.first_inference_us) == (3652, 21036)
    assert (out.warmup_avg_us, out.inference_avg_us) == (13716.5, 12789.9)
    assert out.inference is not None
    assert out.inference.count == 79
    assert (out.inference.min_us, out.inference.max_us) == (12602, 13566)
    assert out.inference.avg_us == 12789.9
    assert out.warmup is not None and out.warmup.first_us == 21036


def test_count_line_that_is_not_the_timed_phase_is_not_used() -> None:
    # Only the warm-up count= line: its numbers must not be reported as the runs'.
    text = "\n".join(ln for ln in NEW.splitlines() if "count=79" not in ln)
    out = parse_benchmark_output(text)
    assert out.inference_avg_us == 12789.9
    assert out.inference is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "STARTING!\nSegmentation fault\n",
        NEW.split("INFO: Inference timings")[0] + "INFO: ERROR: Failed to invoke the interpreter\n",
        "Average inference timings in us: Warmup: abc, Init: 1, Inference: 2\n",
    ],
    ids=["empty", "crash", "truncated", "garbled"],
)
def test_unparseable_output_is_an_error(text: str) -> None:
    with pytest.raises(ModelRunError, match="could not parse"):
        parse_benchmark_output(text)


def test_error_names_the_failing_line() -> None:
    text = "INFO: STARTING!\nERROR: Could not open '/x.tflite'.\nINFO: Loaded nothing\n"
    with pytest.raises(ModelRunError, match="Could not open"):
        parse_benchmark_output(text)


@given(
    init=st.integers(0, 10**7),
    first=st.integers(0, 10**7),
    warm=st.floats(0.01, 1e7, allow_nan=False),
    inf=st.floats(0.01, 1e7, allow_nan=False),
)
def test_new_summary_round_trips(init: int, first: int, warm: float, inf: float) -> None:
    line = (
        f"INFO: Inference timings in us: Init: {init}, First inference: {first}, "
        f"Warmup (avg): {warm:g}, Inference (avg): {inf:g}\n"
    )
    out = parse_benchmark_output(line)
    assert out.inference_avg_us == pytest.approx(float(f"{inf:g}"))
    assert out.warmup_avg_us == pytest.approx(float(f"{warm:g}"))
    assert (out.init_us, out.first_inference_us) == (init, first)
