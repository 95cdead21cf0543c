"""The emulator's ``benchmark_model``: times a model with LiteRT for real and prints
the stock tool's output in the old (TF 1.x) or new (TF 2.x / LiteRT) layout."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

# Content of an emulated binary: this marker, then the behaviour (ok / crash / garbage).
MARKER = b"EMULATED-BENCHMARK-MODEL"
LAYOUTS = ("new", "old", "old-nostats")

Write = Callable[[str], None]


class DropConnection(Exception):
    """Raised by a command to make the emulator cut the TCP connection."""


def binary_bytes(behaviour: str = "ok") -> bytes:
    return b"#!" + MARKER + b" " + behaviour.encode() + b"\n"


def behaviour_of(content: bytes) -> str | None:
    """None: not an emulated binary (a real ELF pushed by a user cannot run here)."""
    if MARKER not in content[:64]:
        return None
    return content.split(MARKER, 1)[1].split()[0].decode()


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            out[key] = value
    return out


def _stats_line(xs: list[float]) -> str:
    return (
        f"count={len(xs)} first={int(xs[0])} curr={int(xs[-1])} min={int(min(xs))} "
        f"max={int(max(xs))} avg={statistics.fmean(xs):g} std={int(statistics.pstdev(xs))}"
    )


def _time(
    graph: Path,
    threads: int,
    warmups: int,
    runs: int,
    xnnpack: bool,
    clock: Callable[[], float] = time.perf_counter,
):
    from ai_edge_litert import interpreter as lite

    resolver = (
        lite.OpResolverType.AUTO
        if xnnpack
        else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    t0 = time.perf_counter()
    interp = lite.Interpreter(
        model_path=str(graph), num_threads=threads, experimental_op_resolver_type=resolver
    )
    interp.allocate_tensors()
    init_us = (time.perf_counter() - t0) * 1e6

    def once() -> float:
        s = clock()
        interp.invoke()
        return (clock() - s) * 1e6

    warm = [once() for _ in range(max(1, warmups))]
    timed = [once() for _ in range(max(1, runs))]
    return init_us, warm, timed


def run_benchmark_model(
    args: list[str],
    *,
    behaviour: str,
    layout: str,
    resolve: Callable[[str], Path],
    write: Write,
    drop_now: Callable[[], bool],
    slowdown: Callable[[], float] = lambda: 1.0,
    clock: Callable[[], float] = time.perf_counter,
    steady_us: Callable[[Path], float] | None = None,
) -> int:
    """Run like the real binary; returns the exit status. ``slowdown`` gives this run's
    throttling factor: the phone really is that much slower for the whole run."""
    if behaviour == "crash":
        write("STARTING!\n\x7fELF\x02\x01\x01\x00\x00\ufffd\ufffd\nSegmentation fault\n")
        return 139
    if behaviour == "garbage":
        write("STARTING!\nsomething went sideways ~~~ 0xdeadbeef\n")
        return 0
    flags = _flags(args)
    if "help" in flags:
        write(
            "usage: benchmark_model\nFlags:\n\t--graph=\tstring\tmodel file name\n"
            "\t--num_threads=1\tint32\tnumber of threads\n"
        )
        return 0
    new = layout == "new"
    p = "INFO: " if new else ""
    graph = flags.get("graph", "")
    if not graph:
        write(f"{p}Please specify the name of your TF Lite input file with --graph\n")
        return 1
    threads = int(flags.get("num_threads", "1"))
    warmups = int(flags.get("warmup_runs", "1"))
    runs = int(flags.get("num_runs", "50"))
    xnnpack = flags.get("use_xnnpack", "false") in ("true", "1")
    write(
        f"{p}STARTING!\n{p}Log parameter values verbosely: [0]\n{p}Min num runs: [{runs}]\n"
        f"{p}Num threads: [{threads}]\n{p}Min warmup runs: [{warmups}]\n{p}Graph: [{graph}]\n"
        f"{p}Use xnnpack: [{int(xnnpack)}]\n"
    )
    if drop_now():
        raise DropConnection("mid-run")
    local = resolve(graph)
    if not local.is_file():
        write(f"{p}ERROR: Could not open '{graph}'.\n{p}Failed to mmap model {graph}\n")
        return 1
    factor = slowdown()
    try:
        init_us, warm, timed = _time(local, threads, warmups, runs, xnnpack, clock)
        if steady_us is not None:
            warm, timed = [steady_us(local)] * len(warm), [steady_us(local)] * len(timed)
        warm = [x * factor for x in warm]
        timed = [x * factor for x in timed]
    except Exception as e:
        write(f"{p}ERROR: {e}\n{p}Failed to initialize the interpreter\n")
        return 1
    write(f"{p}Loaded model {graph}\n")
    if new:
        size_mb = local.stat().st_size / 1e6
        write(
            f"INFO: Initialized TensorFlow Lite runtime.\n"
            f"INFO: The input model file size (MB): {size_mb:.6g}\n"
            f"INFO: Initialized session in {init_us / 1000:.3f}ms.\n"
            f"INFO: Running benchmark for at least {warmups} iterations and at least 0.5 "
            "seconds but terminate if exceeding 150 seconds.\n"
            f"INFO: {_stats_line(warm)}\n\n"
            f"INFO: Running benchmark for at least {runs} iterations and at least 1 seconds "
            "but terminate if exceeding 150 seconds.\n"
            f"INFO: {_stats_line(timed)}\n\n"
            f"INFO: Inference timings in us: Init: {int(init_us)}, First inference: "
            f"{int(warm[0])}, Warmup (avg): {statistics.fmean(warm):g}, Inference (avg): "
            f"{statistics.fmean(timed):g}\n"
            "INFO: Note: as the benchmark tool itself affects memory footprint, the following "
            "is only APPROXIMATE to the actual memory footprint of the model at runtime. "
            "Take the information at your one's own risk.\n"
            "INFO: Memory footprint delta from the start of the tool (MB): init=3.1 overall=4.2\n"
        )
    else:
        last = "no stats" if layout == "old-nostats" else "Inference"
        write(
            "resolved reporter\n"
            f"Initialized session in {init_us / 1000:.3f}ms\n"
            f"Running benchmark for at least {warmups} iterations and at least 0.5 seconds\n"
            f"{_stats_line(warm)}\n\n"
            f"Running benchmark for at least {runs} iterations and at least 1 seconds\n"
            f"{_stats_line(timed)}\n\n"
            f"Average inference timings in us: Warmup: {statistics.fmean(warm):g}, "
            f"Init: {int(init_us)}, {last}: {statistics.fmean(timed):g}\n"
        )
    return 0
