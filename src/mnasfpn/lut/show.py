"""`show` and `export`: read a table without TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnasfpn.atomic import OutputError, write_atomic
from mnasfpn.ir.ops import op_type_of
from mnasfpn.lut.calibration import Calibration
from mnasfpn.lut.store import TableStore


def _load_lines(load: dict[str, Any]) -> list[str]:
    """What the drift control saw during the build and the validation."""
    out = []
    for what, seen in sorted(load.items()):
        slow = [d.get("slow_fraction") for d in seen.get("devices", [])]
        slow = [s for s in slow if s is not None]
        # Multi-thread (wall-clock) timings: how contended the cores were.
        busy = [
            c
            for d in seen.get("devices", [])
            if (c := d.get("contention")) and c.get("threads", 1) > 1
        ]
        pressure = [c["cpu_pressure"] for c in busy if c.get("cpu_pressure") is not None]
        out.append(
            f"  load during {what}: {seen.get('remeasured', 0)} timing(s) re-measured after a "
            f"slow phase, {seen.get('slow_kept', 0)} kept from one"
            + (f"; {100 * max(slow):.0f}% of reference checks slow" if slow else "")
            + (f"; CPU pressure {100 * max(pressure):.0f}%" if pressure else "")
            + (
                "; cores contended (wall-clock times inflated)"
                if any(c.get("contended") for c in busy)
                else ""
            )
        )
    return out


def _pace_lines(pace: dict[str, Any], rows: list[Any]) -> list[str]:
    """The pace the table's timings were divided by, and its entries marked beyond it."""
    if not pace:
        return []
    refs = "; ".join(
        f"{n} ({r.get('key')}) {r.get('fast_ms', 0):.3f} ms at its fastest, pace "
        f"{r.get('pace_min') or 1:.2f}-{r.get('pace_max') or 1:.2f}x"
        for n, r in sorted((pace.get("references") or {}).items())
    )
    out = [f"  pace: {pace.get('statistic')} against {refs or 'no reference'}"]
    flagged = [r for r in rows if r.flag]
    if flagged:
        out.append(f"  {len(flagged)} entries timed at a pace beyond correction (rebuild them):")
        out += [f"    {r.key}: {r.flag}" for r in flagged[:20]]
    return out


def _runs_text(meta: dict[str, Any]) -> str:
    """How many invocations an op got, by the table's run policy (older tables: fixed)."""
    warm = f"after {meta.get('warmup_runs')} warm-ups"
    if meta.get("warmup_s"):
        warm += f" (or {meta['warmup_s']:g} s)"
    if meta.get("runs") == "adaptive":
        return (
            f"{meta.get('min_runs')}..{meta.get('max_runs')} runs {warm}, until its "
            f"{100 * float(meta.get('confidence') or 0):g}% interval is within "
            f"±{100 * float(meta.get('target_ci') or 0):g}% (at most {meta.get('max_time_s')} s)"
        )
    return (
        f"{meta.get('num_runs')} runs {warm} ({meta.get('min_repeats')}.."
        f"{meta.get('max_repeats')} rounds)"
    )


def describe(path: Path, *, top: int = 10) -> str:
    with TableStore.open(path, readonly=True) as store:
        meta = store.meta()
        rows = store.op_rows()
        e2e = store.e2e_archs()
        runs = store.e2e_runs()
        doc = store.calibration_doc()
        log = store.measurement_log()
        sessions = store.sessions()
    info = meta.get("device_info") or {}
    lines = [
        f"table: {path}",
        f"  format {meta.get('format')} schema {meta.get('schema_version')}; created "
        f"{meta.get('created_at')}, updated {meta.get('updated_at')}",
        f"  device: {meta.get('profile')} ({meta.get('device_model')}, {meta.get('abi')}); "
        f"{meta.get('runtime')} {meta.get('runtime_version')}; micro-models "
        f"by {meta.get('converter_version')}",
        f"  device details: governor {_known(info.get('governor'))}, core "
        f"{_known(info.get('core'))}, freq {_known(info.get('cur_freq_khz'))}/"
        f"{_known(info.get('max_freq_khz'))} kHz, os {_known(info.get('os_version'))}",
        f"  timing: {meta.get('statistic', 'median')} of {_runs_text(meta)}, "
        f"{meta.get('threads')} thread(s) on core {meta.get('core')}, XNNPACK "
        f"{_known(meta.get('use_xnnpack'))}; overrides {meta.get('overrides') or 'none'}",
        f"  settings: input {meta.get('input_size')}, classes {meta.get('num_classes')}, "
        f"alpha {meta.get('alpha')}, predictor depth {meta.get('depth')}; spaces "
        f"{', '.join(meta.get('spaces', [])) or '-'}",
        *_load_lines(meta.get("timing_load") or {}),
        f"  ops: {len(rows)} measured ({sum(1 for _, _, ok, _ in log if not ok)} failed "
        f"attempts logged) over {sum(1 for s in sessions if s['kind'] == 'build')} build "
        f"session(s)",
    ]
    by_type: dict[str, list[float]] = {}
    for r in rows:
        by_type.setdefault(op_type_of(r.key), []).append(r.median_ms)
    if by_type:
        lines.append(
            "  per type: "
            + ", ".join(f"{t} {len(v)} ({sum(v):.2f} ms)" for t, v in sorted(by_type.items()))
        )
    lines += _pace_lines(meta.get("pace") or {}, rows)
    complete = sum(1 for a in e2e if a in runs)
    lines.append(f"  end-to-end: {len(e2e)} architectures, {complete} measured")
    if doc is None:
        lines.append("  calibration: none (predictions are raw table sums); run validate")
    else:
        cal = Calibration.from_dict(doc)
        stats = cal.stats
        lines.append(f"  calibration ({cal.feature_set}): {cal.terms_text('; ')}")
        if stats:
            lines.append(
                "  calibration fit: "
                + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in sorted(stats.items())
                    if not isinstance(v, dict)
                )
            )
    if top and rows:
        lines.append(f"  slowest {min(top, len(rows))} ops:")
        for r in sorted(rows, key=lambda r: -r.median_ms)[:top]:
            lines.append(f"    {r.median_ms:9.4f} ms  {r.key}")
    return "\n".join(lines)


def export_csv(path: Path, out: Path, *, replace: bool = False) -> int:
    """Write the table's op rows to `out` as CSV, atomically; an existing `out` is
    replaced only with `replace`. Returns the number of rows."""
    # pandas: only when a table is written
    import pandas as pd

    with TableStore.open(path, readonly=True) as store:
        rows = store.op_rows()
    frame = pd.DataFrame(
        [
            {
                "key": r.key,
                "type": op_type_of(r.key),
                "median_ms": r.median_ms,
                "min_ms": r.min_ms,
                "std_ms": r.std_ms,
                "runs": r.runs,
                "dispersion": r.dispersion,
                "measured_at": r.measured_at,
                "session": r.session,
                "worker": r.worker,
            }
            for r in rows
        ],
        columns=[
            "key",
            "type",
            "median_ms",
            "min_ms",
            "std_ms",
            "runs",
            "dispersion",
            "measured_at",
            "session",
            "worker",
        ],
    )
    try:
        write_atomic(out, frame.to_csv(index=False), replace=replace)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(frame)


def _known(value: object) -> object:
    # A VM or a locked-down phone may not expose cpufreq; say so rather than "None".
    return "unreadable" if value is None else value
