"""`mnasfpn-lut build | predict | validate | show | export`.

No command needs TensorFlow: `build` and `validate` write their models directly and
load it only with `--converter tf`; `predict`, `show`, `export` and `--help` need SQLite,
the IR and numpy only. Every user error is a `MnasfpnError`, printed
as one line by cli_common's handler; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mnasfpn.archs import resolve_archs
from mnasfpn.atomic import check_output
from mnasfpn.cli_common import NameChoice, converter_option, device_options, model_options
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.ir.ops import PARTS
from mnasfpn.searchspace.spaces import SPACES

DEFAULT_OUT = "luts/{device}.sqlite"


@click.command("build")
@device_options(multiple_serials=True)
@click.option(
    "--space",
    "spaces",
    multiple=True,
    type=NameChoice(SPACES),
    default=("mnasfpn",),
    show_default=True,
    help="Search space(s) whose op keys to measure (repeatable).",
)
@model_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Table file [default: luts/<device>.sqlite].",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Parallel conversion processes.",
)
@click.option(
    "--passes",
    type=click.IntRange(1),
    default=2,  # build.DEFAULT_PASSES (not imported: --help stays light)
    show_default=True,
    help="Timing passes per op, each over all ops in a new order; an op's entry is its "
    "fastest pass so far, so a pass slowed by other load on the device is outvoted. A key "
    "that already has this many passes (from any earlier build) is not timed again.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Micro-model cache [default: $MNASFPN_CACHE_DIR or ~/.cache/mnasfpn].",
)
@converter_option("Micro-model writer")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build_command(
    device: DeviceOptions,
    spaces: tuple[str, ...],
    config: DetectorConfig,
    out: Path | None,
    jobs: int,
    passes: int,
    cache_dir: Path | None,
    converter: str,
    quiet: bool,
) -> None:
    """Measure every op key of the spaces (plus backbone, predictor and the named
    architectures) on a device; resumes where an interrupted build stopped."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut import build as lut_build

    out = out or Path(DEFAULT_OUT.format(device=device.name))
    report = lut_build.build_table(
        out,
        list(dict.fromkeys(spaces)),
        device,
        config=config,
        jobs=jobs,
        passes=passes,
        cache_dir=cache_dir / "micromodels" if cache_dir else None,
        echo=click.echo,
        show_progress=not quiet,
        converter=converter,
    )
    if report.interrupted:
        click.echo(
            f"interrupted: {report.timings} timings of this run are kept in {out}; "
            "run the same build again to resume",
            err=True,
        )
        raise SystemExit(130)
    click.echo(
        f"measured {report.measured} ops ({report.timings} timings) in {report.total_s:.1f} s "
        f"(convert {report.convert_s:.1f} s, time {report.time_s:.1f} s); table has "
        f"{report.keys - report.missing}/{report.keys} keys: {out}"
    )
    if not report.ok:
        first = (
            report.errors[0]
            if report.errors
            else (f"{report.failed[0][0]}: {report.failed[0][1]}" if report.failed else "")
        )
        raise MnasfpnError(
            f"{report.missing} op(s) still without an entry ({len(report.failed)} failed"
            f"{'; ' + first if first else ''}); run the same build again to retry them"
        )


def _resolve(archs: tuple[str, ...], repeats: int | None) -> list[Any]:
    out = []
    for spec in archs:
        out += resolve_archs(spec, repeats)
    return out


@click.command("predict")
@click.option("--lut", "lut_path", required=True, type=click.Path(path_type=Path))
@click.option(
    "--arch",
    "archs",
    required=True,
    multiple=True,
    help="NAME | FILE.json | FILE.jsonl (repeatable).",
)
@click.option(
    "--repeats", type=click.IntRange(1, 8), default=None, help="Override the cell repeat count."
)
@click.option(
    "--input-size",
    type=int,
    default=None,
    help="Check that the table was measured at this input size.",
)
@click.option("--raw", is_flag=True, help="Ignore the fitted calibration (raw table sum).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per architecture.")
def predict_command(
    lut_path: Path,
    archs: tuple[str, ...],
    repeats: int | None,
    input_size: int | None,
    raw: bool,
    as_json: bool,
) -> None:
    """Latency of architectures from a table, with a backbone/head/predictor breakdown."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut.store import TableError
    from mnasfpn.lut.table import LatencyTable

    table = LatencyTable.open(lut_path)
    if input_size is not None and input_size != table.input_size:
        raise TableError(
            f"{lut_path} was measured at input size {table.input_size}, not {input_size}; "
            f"build a table at {input_size} with mnasfpn-lut build --device "
            f"{table.meta.get('profile') or 'host'} --input-size {input_size} --out NEW.sqlite"
        )
    genotypes = _resolve(archs, repeats)
    calibrated = table.calibration is not None and not raw
    parts = table.breakdown(genotypes, calibrated=calibrated)
    method = "calibrated" if calibrated else "raw table sum"
    lines = []  # echoed at once: one write per line costs more than the prediction
    for i, g in enumerate(genotypes):
        name = g.name or f"{archs[0] if len(archs) == 1 else 'arch'}#{i}"
        row = {p: float(parts[p][i]) for p in (*PARTS, "overhead", "total")}
        if as_json:
            lines.append(
                json.dumps(
                    {
                        "arch": name,
                        "repeats": g.repeats,
                        "space": g.space,
                        "latency_ms": row["total"],
                        "method": method,
                        "input_size": table.input_size,
                        "breakdown_ms": {k: row[k] for k in (*PARTS, "overhead")},
                        "lut": str(lut_path),
                    }
                )
            )
            continue
        total = row["total"]
        size = table.input_size
        lines.append(f"{name} (repeats {g.repeats}, {size}px): {total:.2f} ms [{method}]")
        for p in (*PARTS, "overhead"):
            if p == "overhead" and not calibrated:
                continue
            share = 100 * row[p] / total if total else 0.0
            lines.append(f"  {p:<10} {row[p]:8.2f} ms  {share:5.1f}%")
    click.echo("\n".join(lines))


@click.command("show")
@click.argument("lut_path", type=click.Path(path_type=Path))
@click.option(
    "--top",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="How many of the slowest ops to list.",
)
def show_command(lut_path: Path, top: int) -> None:
    """Summary of a table: device, settings, counts, calibration, slowest ops."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut.show import describe

    click.echo(describe(lut_path, top=top))


@click.command("export")
@click.argument("lut_path", type=click.Path(path_type=Path))
@click.option("--csv", "csv_out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing --csv file.")
def export_command(lut_path: Path, csv_out: Path, force: bool) -> None:
    """Write the op rows of a table as CSV (never over the table itself, nor over an
    existing file without --force)."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut.show import export_csv

    check_output(csv_out, inputs=[lut_path], force=force, option="--csv")
    n = export_csv(lut_path, csv_out, replace=force)
    click.echo(f"wrote {n} rows to {csv_out}")


@click.command("validate")
@click.option("--lut", "lut_path", required=True, type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(4), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--min-r2",
    type=click.FloatRange(max=1.0),
    default=0.97,
    show_default=True,
    help="Held-out R² the calibrated table must reach (at most 1).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder [default: reports/<lut stem>/].",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Parallel exports (done before any timing).",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=None,
    help="Interleaved timing rounds per architecture (see --target) [default: 2; 3 for a "
    "multi-thread table, whose wall-clock rounds are further apart].",
)
@click.option(
    "--target",
    type=click.Choice(["fastest", "median", "min"]),
    default="fastest",
    show_default=True,
    help="End-to-end figure to fit, from each round's statistic (the table's): the fastest "
    "round (as an op entry is its fastest pass), the median round, or the fastest single run.",
)
@click.option(
    "--space",
    "spaces",
    multiple=True,
    type=NameChoice(SPACES),
    help="Sample from these spaces [default: the table's].",
)
@device_options(multiple_serials=True, device_required=False)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@converter_option("Detector writer")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def validate_command(
    lut_path: Path,
    samples: int,
    seed: int,
    min_r2: float,
    report_dir: Path | None,
    jobs: int,
    rounds: int | None,
    target: str,
    spaces: tuple[str, ...],
    device: DeviceOptions,
    cache_dir: Path | None,
    converter: str,
    quiet: bool,
) -> None:
    """Measure sampled architectures end to end on the table's device (one phone), fit
    the calibration, report fidelity."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut.noise import r2_verdict
    from mnasfpn.lut.validate import validate

    report_dir = report_dir or Path("reports") / lut_path.stem
    result = validate(
        lut_path,
        samples=samples,
        seed=seed,
        report_dir=report_dir,
        jobs=jobs,
        rounds=rounds,
        target=target,
        spaces=list(dict.fromkeys(spaces)) or None,
        device=device,
        cache_dir=cache_dir,
        echo=click.echo,
        show_progress=not quiet,
        converter=converter,
    )
    click.echo(result.summary_text())
    click.echo(f"report: {result.report_path}  plot: {result.plot_path}")
    cal = result.metrics["calibrated"]
    verdict = r2_verdict(
        r2=cal["r2"],
        min_r2=min_r2,
        ceiling=result.noise.get("r2_ceiling"),
        noise=result.noise.get("relative_noise"),
        mape=cal["mape"],
        tau=cal["kendall_tau"],
    )
    if not verdict.ok:
        raise MnasfpnError(verdict.line)
    if not verdict.meaningful:
        click.echo(verdict.line)


def register(group: click.Group) -> None:
    for cmd in (build_command, predict_command, validate_command, show_command, export_command):
        group.add_command(cmd)
