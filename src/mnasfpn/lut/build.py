"""`mnasfpn-lut build`: measure every op key of the chosen spaces on one device.

Resumable: the table commits each timing pass in its own transaction, and a build first
counts the passes each key already has (an op's entry exists once it has `passes` of
them, and is its fastest pass so far). The table is locked for the build's duration and
refuses timings taken another way (`identity_of`). Conversion loads the CPU, so on the
host every missing micro-model is converted first and timing runs alone afterwards; with
phones, converting the next batch overlaps timing the current one, and several identical
phones (`serials`) share one queue of keys, one thread each. Ctrl-C stops within about a
second; conversion workers die with the build, even when it is killed outright.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mnasfpn.cache import cache_root
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.lut.store import (
    ADAPTIVE_CAPS,
    ADAPTIVE_FIELDS,
    DEFAULT_STATISTIC,
    SCHEMA_VERSION,
    TableError,
    TableStore,
)
from mnasfpn.model.convert import DEFAULT_CONVERTER, converter_id
from mnasfpn.profiler.micromodel import cache_path, micromodel_paths
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture
from mnasfpn.searchspace.spaces import get_space
from mnasfpn.sqlite_db import now

NAMED_REPEATS = (3, 4, 5)
PHONE_BATCH = 16


def default_cache_dir() -> Path:
    return cache_root()


def required_keys(spaces: Sequence[str], config: DetectorConfig) -> list[str]:
    """Every op key of the spaces (with backbone and predictor) and of the named
    architectures at repeats 3..5, sorted."""
    keys: set[str] = set()
    for name in spaces:
        keys |= space_keys(
            get_space(name),
            input_size=config.input_size,
            backbone=config.backbone,
            predictor=config.predictor,
            num_classes=config.num_classes,
        )
    for arch in ARCHITECTURES:
        for r in NAMED_REPEATS:
            keys |= set(build_opgraph(get_architecture(arch, r), config).keys(live_only=False))
    return sorted(keys)


def identity_of(
    info: dict[str, Any],
    profile: Any,
    config: DetectorConfig,
    *,
    statistic: str = DEFAULT_STATISTIC,
) -> dict[str, Any]:
    """Everything that changes a timing, as recorded in (and checked against) a table:
    the device and its software, the profile after overrides, the detector settings.

    Not the converter: the direct writer's micro-models equal the TensorFlow converter's
    op for op (tests/test_tflite_writer.py), so a table may hold entries from either."""
    return {
        "device": info.get("kind"),
        "profile": profile.name,
        "device_model": info.get("model"),
        "abi": info.get("abi"),
        "runtime": info.get("runtime"),
        "runtime_version": info.get("runtime_version"),
        "binary_version": info.get("binary_version"),
        # The core actually used (a host profile's -1 resolves to a real core).
        "core": info.get("core") if info.get("core") is not None else profile.core,
        # The CPU mask a phone's benchmark runs under (a host worker pins `core` itself).
        "taskset_mask": (info.get("extra") or {}).get("taskset_mask"),
        "threads": profile.threads,
        "use_xnnpack": profile.use_xnnpack,
        "input_size": config.input_size,
        "num_classes": config.num_classes,
        "alpha": config.alpha,
        "depth": config.depth,
        "statistic": statistic,
        "warmup_runs": profile.warmup_runs,
        "num_runs": profile.num_runs,
        "min_repeats": profile.min_repeats,
        "max_repeats": profile.max_repeats,
        "stability_tolerance": profile.stability_tolerance,
        "cooldown_s": profile.cooldown_s,
        "runs": profile.runs,
        "warmup_s": profile.warmup_s,
        # The adaptive rule's knobs only where it decided the run counts.
        **(
            {f: getattr(profile, f) for f in (*ADAPTIVE_FIELDS, *ADAPTIVE_CAPS)}
            if profile.runs == "adaptive"
            else {}
        ),
    }


@dataclass
class BuildReport:
    keys: int
    already: int  # keys with every pass (and so an entry) before this run
    passes: int = 1
    measured: int = 0  # keys completed by this run
    timings: int = 0  # single-pass timings done by this run
    settled: int = 0  # entries written from passes already taken (no new timing)
    remeasured: int = 0  # extra timings because the machine was in a slow phase
    slow_kept: int = 0  # timings kept although every try ran in a slow phase
    missing: int = 0  # required keys the table still has no entry for, read back at the end
    failed: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    convert_s: float = 0.0
    time_s: float = 0.0
    total_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every required key has an entry and nothing failed: the only success."""
        return not (self.missing or self.failed or self.errors or self.interrupted)


# Passes per op. Two: on six validated tables of this 2-core VM (quiet to load 6-8, fixed
# and adaptive counts) the entries from the first one or two passes gave the held-out
# fidelity of all three (R² within 0.0006, MAPE within 0.12 points;
# benchmarks/build_passes.py), and the second pass still outvotes a slow phase.
DEFAULT_PASSES = 2


def pass_order(keys: Sequence[str], pass_index: int) -> list[str]:
    """The keys in this pass's own order, so that a burst of load on the machine slows
    different ops in different passes (and the fastest pass of each op is a quiet one)."""
    order = list(keys)
    random.Random(pass_index).shuffle(order)
    return order


def plan_passes(
    keys: Sequence[str], done: dict[str, set[int]], passes: int
) -> list[tuple[str, int]]:
    """(key, pass) timings still needed so that every key has `passes` passes. A key
    that has them (whatever their indices, from any earlier build) needs nothing; one
    short of them gets its lowest unused pass indices, and each pass is taken in that
    pass's own key order."""
    todo: dict[int, set[str]] = {}
    for k in keys:
        have = done.get(k, set())
        free = (p for p in range(passes + len(have)) if p not in have)
        for _ in range(passes - len(have)):
            todo.setdefault(next(free), set()).add(k)
    return [(k, p) for p in sorted(todo) for k in pass_order(keys, p) if k in todo[p]]


def open_table_for(
    out: Path,
    identity: dict[str, Any],
    info: dict[str, Any],
    spaces: Sequence[str],
    overrides: dict[str, Any] | None = None,
) -> TableStore:
    """Open (or create) `out` for measurements of `identity`: locked against a second
    writer, and refused in one line if it already holds measurements of another identity.
    The identity, the merged spaces and the device overrides (for the commands the table
    suggests) are recorded in its meta."""
    store = TableStore.open(out, create=True)
    try:
        store.check_identity(identity)
        meta = store.meta()
        merged = sorted(set(meta.get("spaces", [])) | set(spaces))
        values = {
            **identity,
            "spaces": merged,
            "device_info": info,
            "overrides": dict(overrides or {}),
            "schema_version": SCHEMA_VERSION,
            "updated_at": now(),
        }
        store.set_meta(values)
    except BaseException:
        store.close()
        raise
    return store


def build_table(
    out: Path,
    spaces: Sequence[str],
    device: DeviceOptions,
    *,
    config: DetectorConfig,
    jobs: int = 2,
    passes: int = DEFAULT_PASSES,
    cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
    converter: str = DEFAULT_CONVERTER,
) -> BuildReport:
    """Measure what `out` lacks. Ctrl-C (KeyboardInterrupt) stops within about a second
    and returns a report with `interrupted`; every committed timing is kept."""
    t_start = time.perf_counter()
    made_by = converter_id(converter)  # before any device work: a missing converter says so
    cache_dir = cache_dir or default_cache_dir() / "micromodels"
    keys = required_keys(spaces, config)
    devices = device.open_all()
    try:
        infos = [d.info().to_dict() for d in devices]
        models = {i.get("model") for i in infos}
        if len(models) > 1:
            raise TableError(
                f"--serial devices are not identical ({', '.join(sorted(map(str, models)))}); "
                "shard a build only across phones of one model"
            )
        info = infos[0]
        identity = identity_of(
            info, devices[0].profile, config, statistic=devices[0].timing_statistic
        )
        store = open_table_for(out, identity, info, spaces, device.overrides)
        try:
            seed_pace(store, devices)
            store.set_meta({"converter_version": made_by})
            settled = store.settle_entries(passes)
            work = plan_passes(keys, store.passes_done(), passes)
            missing = {k for k, _ in work}
            report = BuildReport(
                keys=len(keys), already=len(keys) - len(missing), passes=passes, settled=settled
            )
            echo(
                f"{out}: {len(keys)} op keys for {', '.join(spaces)} at {config.input_size}; "
                f"{report.already} measured, {len(missing)} to measure on {device.name} "
                f"({len(work)} timings, {passes} passes)"
            )
            if work:
                session = store.start_session(
                    "build", info, note=f"spaces={','.join(spaces)} missing={len(missing)}"
                )
                try:
                    _measure(
                        store,
                        session,
                        work,
                        devices,
                        infos,
                        report,
                        convert=lambda ks, cb: micromodel_paths(
                            ks, cache_dir, jobs=jobs, progress=cb, converter=converter
                        ),
                        path_of=lambda k: cache_path(k, cache_dir, converter),
                        concurrent=info.get("kind") != "host",
                        show_progress=show_progress,
                        tqdm=tqdm,
                    )
                except KeyboardInterrupt:
                    report.interrupted = True
                note = record_load(store, "build", devices, report.remeasured, report.slow_kept)
                if note:
                    echo(note)
                line = record_pace(store, devices)
                if line:
                    echo(line)
            # Success is read back from the table, not inferred from counters.
            report.missing = len(set(keys) - store.measured_keys())
        finally:
            store.close()
    finally:
        for d in devices:
            d.close()
    report.total_s = time.perf_counter() - t_start
    return report


def seed_pace(store: TableStore, devices: Sequence[Any]) -> None:
    """Give the devices the table's fast-phase reference levels, so that new timings are
    divided against the same levels as the table's (a device lowers them when it sees a
    faster phase, and record_pace then rebases the table)."""
    bases = {
        name: ref["fast_ms"]
        for name, ref in ((store.meta().get("pace") or {}).get("references") or {}).items()
        if ref.get("fast_ms")
    }
    # Devices that read no pace (or test doubles) have no seed_pace.
    for d in devices if bases else ():
        if hasattr(d, "seed_pace"):
            d.seed_pace(bases)


def record_pace(store: TableStore, devices: Sequence[Any]) -> str | None:
    """Rebase the table's paced timings on the lowest fast-phase levels the devices saw
    and record the references and the paces seen (meta `pace`); returns one line to
    show (None: no paced statistic). Entries whose pace moved beyond correction are
    counted, and stay marked in the table."""
    seen = [s for d in devices if (s := getattr(d, "pace_summary", lambda: None)())]
    if not seen:
        return None
    refs: dict[str, dict[str, Any]] = dict((store.meta().get("pace") or {}).get("references") or {})
    for summary in seen:
        for name, ref in summary["references"].items():
            old = refs.get(name) or {}
            merged = dict(ref)
            if old.get("fast_ms"):
                merged["fast_ms"] = min(old["fast_ms"], ref["fast_ms"])
            for lo in ("pace_min",):
                if old.get(lo) is not None and ref.get(lo) is not None:
                    merged[lo] = min(old[lo], ref[lo])
            if old.get("pace_max") is not None and ref.get("pace_max") is not None:
                merged["pace_max"] = max(old["pace_max"], ref["pace_max"])
            refs[name] = merged
    store.rebase_pace({n: r["fast_ms"] for n, r in refs.items()})
    flagged = store.flagged_keys()
    store.set_meta(
        {
            "pace": {
                "statistic": seen[0]["statistic"],
                "references": refs,
                "flagged": len(flagged),
            }
        }
    )
    parts = [
        f"{n} {r['fast_ms']:.3f} ms at its fastest, pace "
        f"{r.get('pace_min') or 1:.2f}-{r.get('pace_max') or 1:.2f}x"
        for n, r in sorted(refs.items())
    ]
    line = f"pace references: {'; '.join(parts)} (divided out)"
    if flagged:
        line += (
            f"; {len(flagged)} entries timed at a pace beyond correction are marked "
            "(mnasfpn-lut show lists them): rebuild them on a steadier machine"
        )
    return line


def record_load(
    store: TableStore, what: str, devices: Sequence[Any], remeasured: int, slow_kept: int
) -> str | None:
    """Store what the devices' drift control saw during `what` (meta `timing_load`), and
    return the line to tell the user when the machine slowed down (None otherwise)."""
    seen = [d.load_summary() for d in devices]
    load = dict(store.meta().get("timing_load") or {})
    load[what] = {"at": now(), "remeasured": remeasured, "slow_kept": slow_kept, "devices": seen}
    store.set_meta({"timing_load": load})
    # Devices that cannot be contended (or test doubles) have no load_note.
    notes = [n for d in devices if (n := getattr(d, "load_note", lambda: None)())]
    if not remeasured and not slow_kept:
        return "; ".join(notes) or None
    slow = [s["slow_fraction"] for s in seen if s.get("slow_fraction") is not None]
    share = f" ({100 * max(slow):.0f}% of reference checks slow)" if slow else ""
    kept = (
        f"; {slow_kept} kept from a slow phase (re-measure budget spent): "
        "rerun on a quieter machine for cleaner figures"
        if slow_kept
        else ""
    )
    return "; ".join(
        [
            f"{what}: the device slowed down in phases{share}; {remeasured} timing(s) "
            f"re-measured after it recovered{kept}",
            *notes,
        ]
    )


def _chunks(items: Sequence[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def _measure(
    store: TableStore,
    session: str,
    work_items: list[tuple[str, int]],
    devices: list[Any],
    infos: list[dict[str, Any]],
    report: BuildReport,
    *,
    convert: Callable[[list[str], Callable[[int], None] | None], dict[str, Path]],
    path_of: Callable[[str], Path],
    concurrent: bool,
    show_progress: bool,
    tqdm: Any,
) -> None:
    work: queue.Queue[tuple[str, int, Path] | None] = queue.Queue()
    lock = threading.Lock()
    first_pass: dict[str, int] = {}
    for k, p in work_items:
        first_pass.setdefault(k, p)
    missing = list(first_pass)
    passes = report.passes
    conv_bar = tqdm(total=len(missing), desc="convert", unit="op", disable=not show_progress)
    time_bar = tqdm(total=len(work_items), desc="time", unit="op", disable=not show_progress)
    conv_error: list[str] = []
    # Set when the build stops early (Ctrl-C): threads then leave the store alone, since
    # it is about to be closed, and take no more work.
    stop = threading.Event()

    def producer() -> None:
        t0 = time.perf_counter()
        try:
            batches = _chunks(missing, PHONE_BATCH) if concurrent else [missing]
            paths: dict[str, Path] = {}
            for batch in batches:
                if stop.is_set():
                    return
                try:
                    paths.update(convert(batch, conv_bar.update))
                except Exception as exc:  # some ops failed to convert: time the others
                    conv_error.append((str(exc).splitlines() or [type(exc).__name__])[0])
                    paths.update({k: p for k in batch if (p := path_of(k)).is_file()})
                if concurrent:  # a phone times each op once while the rest converts
                    for k in batch:
                        if k in paths:
                            work.put((k, first_pass[k], paths[k]))
            for k, p in work_items:
                if k in paths and not (concurrent and p == first_pass[k]):
                    work.put((k, p, paths[k]))
        finally:
            report.convert_s = time.perf_counter() - t0
            for _ in devices:
                work.put(None)

    def consumer(dev: Any, worker: str) -> None:
        while True:
            item = work.get()
            if item is None or stop.is_set():
                return
            batch = [item]
            # A phone takes a batch (one push); the host times one model at a time.
            while concurrent and len(batch) < PHONE_BATCH:
                try:
                    nxt = work.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or any(nxt[0] == k for k, _, _ in batch):
                    work.put(nxt)  # one copy of a model per push: its next pass waits
                    break
                batch.append(nxt)

            def on_result(i: int, total: int, res: Any, batch: list = batch) -> None:
                if stop.is_set():
                    return
                try:
                    record(i, res, batch)
                except Exception:
                    if stop.is_set():  # the store closed under us: the build is stopping
                        return
                    raise
                time_bar.update(1)

            def record(i: int, res: Any, batch: list) -> None:
                key, pass_index = batch[i][0], batch[i][1]
                if res.ok and res.latency_ms is not None:
                    # The `median_ms` column holds the table's statistic (meta `statistic`).
                    completed = store.add_op_pass(
                        key,
                        pass_index,
                        passes=passes,
                        median_ms=res.latency_ms,
                        min_ms=res.min_ms,
                        std_ms=res.std_ms,
                        runs=res.runs,
                        dispersion=res.dispersion,
                        session=session,
                        worker=worker,
                        pace=res.pace,
                    )
                    with lock:
                        report.timings += 1
                        report.measured += completed
                        report.remeasured += res.remeasured
                        report.slow_kept += res.slow_phase
                else:
                    store.add_failure(
                        key, res.error or "failed", session=session, pass_index=pass_index
                    )
                    with lock:
                        report.failed.append((key, res.error or "failed"))

            try:
                dev.time_models([path for _, _, path in batch], on_result)
            except Exception as exc:  # the device went away: leave the rest for a resume
                if stop.is_set():
                    return
                with lock:
                    report.errors.append(f"{worker}: {str(exc).splitlines()[0]}")
                return

    threads: list[threading.Thread] = []
    try:
        if concurrent:
            prod = threading.Thread(target=producer, daemon=True)
            prod.start()
        else:
            producer()  # host: convert everything first, then time alone
        t0 = time.perf_counter()
        threads = [
            threading.Thread(
                target=consumer, args=(d, str(i.get("serial") or i.get("model"))), daemon=True
            )
            for d, i in zip(devices, infos, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.time_s = time.perf_counter() - t0
        if concurrent:
            prod.join()
    except BaseException:
        stop.set()
        for t in (*threads, *([prod] if concurrent else [])):
            t.join(timeout=0.5)  # let a thread finish the row it is committing
        raise
    finally:
        conv_bar.close()
        time_bar.close()
    if conv_error:
        report.errors.append(f"conversion: {conv_error[0]}")
