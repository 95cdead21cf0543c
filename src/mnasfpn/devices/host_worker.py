"""Timing worker for the host device, run as a plain script (``python host_worker.py``).

It is started by path rather than as ``-m mnasfpn...`` so that importing it cannot pull
in the package (and, through it, TensorFlow): only ai_edge_litert and numpy are loaded,
which keeps the pinned core's caches and the worker's start-up free of TF.

Protocol: one JSON object per line on stdin, one JSON reply per line on the original
stdout. ``run`` replies with each invocation's wall time (``samples_ms``) and the calling
thread's CPU time (``cpu_ms``): with one interpreter thread all the work runs on it (also
under XNNPACK, which makes no thread pool for one thread; ``load`` measures the share of
the warm-up's CPU time that ran off the calling thread so the host can check), and CPU
time does not count the time another process held the core. The worker is pinned to
the cores given on its command line (``1`` or ``0,1``), one per interpreter thread.
``ref`` times a fixed numpy kernel (the drift reference) on both clocks. ``refs`` loads
the pace references (.tflite, devices/references); ``run`` with ``ref`` set then invokes
that reference once after every ``grain_ms`` of target invocations and replies with each
invocation's start time (``t_s``) and the reference's (``ref_t_s``, ``ref_cpu_ms``,
``ref_wall_ms``), so that each invocation has the machine's pace next to it
(devices/pace.py). Native code that
prints to stdout is redirected to stderr so it can never corrupt the reply stream.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from typing import Any

import numpy as np


def _reply_stream() -> Any:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def _fill_inputs(interp: Any, np: Any, rng: Any) -> None:
    for d in interp.get_input_details():
        shape = [int(s) if s > 0 else 1 for s in d["shape"]]
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.floating):
            data = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype == np.bool_:
            data = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(max(info.min, -128), min(info.max, 127), size=shape).astype(dtype)
        if list(d["shape"]) != shape:
            interp.resize_tensor_input(d["index"], shape)
            interp.allocate_tensors()
        interp.set_tensor(d["index"], data)


class Worker:
    def __init__(self) -> None:
        self.interp: Any = None
        self._ref: Any = None
        self.pace_refs: dict[str, Any] = {}
        self.op_names: list[str] = []

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "load":
            return self.load(
                req["path"],
                int(req["threads"]),
                int(req["warmup"]),
                bool(req["xnnpack"]),
                float(req.get("warmup_s", 0.0)),
            )
        if op == "run":
            ref = req.get("ref")
            if ref is not None:
                return self.run_paced(
                    int(req["n"]),
                    str(ref),
                    float(req.get("grain_ms", 2.0)),
                    int(req.get("burst", req["n"])),
                    bool(req.get("warm", False)),
                    [str(o) for o in req.get("others", [])],
                )
            return self.run(int(req["n"]))
        if op == "refs":
            return self.load_refs(dict(req["paths"]), int(req["threads"]), bool(req["xnnpack"]))
        if op == "ref":
            return self.reference(int(req.get("reps", 15)))
        if op == "unload":
            self.interp = None
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def load(
        self, path: str, threads: int, warmup: int, xnnpack: bool, warmup_s: float = 0.0
    ) -> dict[str, Any]:
        """Load and warm up: ``warmup`` invocations (at least two), ending early once
        ``warmup_s`` seconds have passed (when > 0): a 90 ms detector needs fewer than a
        5 µs op."""
        # LiteRT: only when a model is run
        from ai_edge_litert import interpreter as lite

        self.interp = None
        resolver = (
            lite.OpResolverType.AUTO
            if xnnpack
            else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        try:
            interp = lite.Interpreter(
                model_path=path, num_threads=threads, experimental_op_resolver_type=resolver
            )
            interp.allocate_tensors()
            _fill_inputs(interp, np, np.random.default_rng(0))
            t0 = time.perf_counter()
            interp.invoke()  # the first run may do one-off work (XNNPACK packs weights)
            thread0, proc0 = time.thread_time_ns(), time.process_time_ns()
            for _ in range(max(warmup - 1, 1)):
                interp.invoke()
                if 0 < warmup_s <= time.perf_counter() - t0:
                    break
            thread_ns = time.thread_time_ns() - thread0
            proc_ns = time.process_time_ns() - proc0
        except Exception as e:  # any LiteRT failure is this model's failure, not ours
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            return {"ok": False, "error": f"LiteRT could not load/run the model: {msg}"}
        self.interp = interp
        off_ns = max(0, proc_ns - thread_ns)
        share = off_ns / proc_ns if proc_ns > 0 else 0.0
        try:
            ops = sorted({str(d["op_name"]) for d in interp._get_ops_details()})
        except Exception:  # an older LiteRT without op details: the host then assumes compute
            ops = []
        return {"ok": True, "offthread_share": share, "offthread_ms": off_ns / 1e6, "ops": ops}

    def load_refs(self, paths: dict[str, str], threads: int, xnnpack: bool) -> dict[str, Any]:
        """Load and warm up the pace references; one that cannot be loaded or run fails
        the whole request (the host then refuses to build)."""
        # LiteRT: only when a model is run
        from ai_edge_litert import interpreter as lite

        resolver = (
            lite.OpResolverType.AUTO
            if xnnpack
            else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        refs: dict[str, Any] = {}
        fast: dict[str, float] = {}
        for name, path in paths.items():
            try:
                interp = lite.Interpreter(
                    model_path=path, num_threads=threads, experimental_op_resolver_type=resolver
                )
                interp.allocate_tensors()
                _fill_inputs(interp, np, np.random.default_rng(0))
                times = []
                for _ in range(10):
                    c0 = time.thread_time_ns()
                    interp.invoke()
                    times.append((time.thread_time_ns() - c0) / 1e6)
            except Exception as e:
                msg = " ".join(str(e).split())[:200] or type(e).__name__
                return {"ok": False, "error": f"pace reference {name} ({path}): {msg}"}
            refs[name] = interp
            fast[name] = min(times)
        self.pace_refs = refs
        return {"ok": True, "ms": fast}

    def run_paced(
        self, n: int, ref: str, grain_ms: float, burst_max: int, warm: bool, others: list[str]
    ) -> dict[str, Any]:
        """``n`` target invocations in bursts of ``grain_ms`` (or ``burst_max``
        invocations, whichever comes first), each burst followed by one timed invocation
        of reference ``ref`` (and one before the first). With ``warm`` the reference is
        invoked once untimed first: a reference timed cold (a streaming add's data, a
        conv's weights) times how much of it the target evicted, not the machine's pace
        (a 4 ms conv read 1.1x against the fast level its warm timings set). The
        ``others`` references are timed once (warm) at the end, so that each sees the
        whole run's phases and knows its fast level whatever the models that speak for
        it met."""
        if self.interp is None:
            return {"ok": False, "error": "no model loaded"}
        if ref not in self.pace_refs:
            return {"ok": False, "error": f"pace reference {ref!r} not loaded"}
        invoke, ref_invoke = self.interp.invoke, self.pace_refs[ref].invoke
        wall, cpu = time.perf_counter_ns, time.thread_time_ns
        grain_ns = grain_ms * 1e6
        t_s: list[float] = []
        samples: list[float] = []
        cpu_ms: list[float] = []
        r_t: list[float] = []
        r_cpu: list[float] = []
        r_wall: list[float] = []

        def reference() -> None:
            if warm:
                ref_invoke()
            t0 = wall()
            c0 = cpu()
            ref_invoke()
            c1 = cpu()
            t1 = wall()
            r_t.append(t0 / 1e9)
            r_cpu.append((c1 - c0) / 1e6)
            r_wall.append((t1 - t0) / 1e6)

        try:
            reference()
            done = 0
            while done < n:
                burst = wall()
                in_burst = 0
                while done < n:
                    t0 = wall()
                    c0 = cpu()
                    invoke()
                    c1 = cpu()
                    t1 = wall()
                    t_s.append(t0 / 1e9)
                    samples.append((t1 - t0) / 1e6)
                    cpu_ms.append((c1 - c0) / 1e6)
                    done += 1
                    in_burst += 1
                    if t1 - burst >= grain_ns or in_burst >= burst_max:
                        break
                reference()
            other_cpu: dict[str, float] = {}
            other_wall: dict[str, float] = {}
            for name in others:
                other = self.pace_refs[name].invoke
                other()
                w0 = wall()
                c0 = cpu()
                other()
                other_cpu[name] = (cpu() - c0) / 1e6
                other_wall[name] = (wall() - w0) / 1e6
        except Exception as e:
            return {"ok": False, "error": f"LiteRT invoke failed: {e}"}
        return {
            "ok": True,
            "samples_ms": samples,
            "cpu_ms": cpu_ms,
            "t_s": t_s,
            "ref_t_s": r_t,
            "ref_cpu_ms": r_cpu,
            "ref_wall_ms": r_wall,
            "others_cpu_ms": other_cpu,
            "others_wall_ms": other_wall,
        }

    def run(self, n: int) -> dict[str, Any]:
        if self.interp is None:
            return {"ok": False, "error": "no model loaded"}
        invoke = self.interp.invoke
        wall = time.perf_counter_ns
        cpu = time.thread_time_ns
        samples: list[float] = []
        cpu_ms: list[float] = []
        try:
            for _ in range(n):
                t0 = wall()
                c0 = cpu()
                invoke()
                c1 = cpu()
                t1 = wall()
                samples.append((t1 - t0) / 1e6)
                cpu_ms.append((c1 - c0) / 1e6)
        except Exception as e:
            return {"ok": False, "error": f"LiteRT invoke failed: {e}"}
        return {"ok": True, "samples_ms": samples, "cpu_ms": cpu_ms}

    def reference(self, reps: int) -> dict[str, Any]:
        """The drift reference: a fixed compute + memory kernel (a 128² matmul and a 2 MB
        copy, ~0.3 ms), its median over ``reps`` on both clocks. Its latency changes only
        when the machine does, so it tells a slow phase from a slow model."""
        if self._ref is None:
            rng = np.random.default_rng(1)
            a = rng.random((128, 128), dtype=np.float32)
            src = rng.random(1 << 19, dtype=np.float32)
            self._ref = (a, src, np.empty_like(src))
        a, src, dst = self._ref
        wall, cpu = [], []
        for _ in range(max(1, reps)):
            t0 = time.perf_counter_ns()
            c0 = time.thread_time_ns()
            np.matmul(a, a)
            np.copyto(dst, src)
            c1 = time.thread_time_ns()
            t1 = time.perf_counter_ns()
            wall.append((t1 - t0) / 1e6)
            cpu.append((c1 - c0) / 1e6)
        wall.sort()
        cpu.sort()
        return {"ok": True, "wall_ms": wall[len(wall) // 2], "cpu_ms": cpu[len(cpu) // 2]}


def main(argv: list[str]) -> int:
    proto = _reply_stream()
    cores = {int(c) for c in argv[1].split(",")}
    os.sched_setaffinity(0, cores)
    # LiteRT: only when a model is run
    from ai_edge_litert import __version__ as litert_version

    proto.write(
        json.dumps(
            {
                "ready": True,
                "affinity": sorted(os.sched_getaffinity(0)),
                "litert_version": litert_version,
                "numpy_version": np.__version__,
                "python_version": platform.python_version(),
                "tensorflow_loaded": "tensorflow" in sys.modules,
            }
        )
        + "\n"
    )
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            rep = worker.handle(req)
        except Exception:
            rep = {"ok": False, "error": traceback.format_exc(limit=1).strip().splitlines()[-1]}
        proto.write(json.dumps(rep) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
