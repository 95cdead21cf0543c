"""``mnasfpn-lut devices`` and ``mnasfpn-lut profile``.

Only click and the light modules load at start-up; LiteRT and the adb libraries are
imported when a device is opened.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mnasfpn.cli_common import device_options
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.devices.profiles import PROFILES
from mnasfpn.devices.results import DeviceInfo, TimingResult


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(results: list[TimingResult]) -> str:
    # latency_ms: the device's statistic (statistic column); pace: the machine's pace
    # divided out of it (devices/pace.py), "-" for a statistic that reads none.
    header = (
        "model", "ok", "latency_ms", "statistic", "pace", "median_ms", "min_ms", "std_ms",
        "runs", "disp_%", "stable", "error",
    )  # fmt: skip
    rows = [
        (
            Path(r.model).name,
            "yes" if r.ok else "FAILED",
            _fmt(r.latency_ms),
            r.statistic or "-",
            f"{r.pace['pace']:.2f}x {r.pace['reference']}" if r.pace else "-",
            _fmt(r.median_ms),
            _fmt(r.min_ms),
            _fmt(r.std_ms),
            str(r.runs),
            _fmt(None if r.dispersion is None else 100 * r.dispersion, ".1f"),
            ("yes" if r.stable else "no") if r.ok else "-",
            r.error or "",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def format_info(info: DeviceInfo) -> str:
    freq = (
        f"{info.cur_freq_khz / 1000:.0f}/{info.max_freq_khz / 1000:.0f} MHz"
        if info.cur_freq_khz and info.max_freq_khz
        else "freq n/a"
    )
    temp = f"{info.temperature_c:.1f} C" if info.temperature_c is not None else "temp n/a"
    return (
        f"device: {info.profile} ({info.model}, {info.abi}, {info.cores} cores); "
        f"core {info.core}, governor {info.governor or 'n/a'}, {freq}, {temp}; "
        f"{info.runtime} {info.runtime_version}"
    )


@click.command("devices")
def devices_command() -> None:
    """List the host and every phone attached to the adb server, with its profile."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.devices.discovery import attached_phones
    from mnasfpn.devices.sysinfo import local_cpu_model

    click.echo(f"host\t{local_cpu_model()}\tprofile: host")
    phones, problem = attached_phones()
    if problem is not None:
        click.echo(f"phones unavailable: {problem}")
        return
    if not phones:
        click.echo("no phones attached to the adb server")
    for p in phones:
        if p.state != "device":
            click.echo(f"{p.serial}\t({p.state})\tprofile: -")
        else:
            click.echo(f"{p.serial}\t{p.model or '?'}\tprofile: {p.profile or '-'}")
    click.echo(f"profiles: {', '.join(PROFILES.names())}")


@click.command("profile")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@device_options()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def profile_command(models: tuple[str, ...], device: DeviceOptions, as_json: bool) -> None:
    """Time MODEL.tflite files on a device and print their latency statistics."""

    def progress(i: int, n: int, r: TimingResult) -> None:
        what = f"{r.latency_ms:.3f} ms ({r.statistic})" if r.ok else f"FAILED: {r.error}"
        click.echo(f"[{i + 1}/{n}] {Path(r.model).name}: {what}", err=True)

    with device.open() as dev:
        info = dev.info()
        results = dev.time_models(list(models), progress=progress)
    if as_json:
        payload = {"device": info.to_dict(), "results": [r.to_dict() for r in results]}
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(format_info(info))
        click.echo(format_table(results))
    failed = sum(not r.ok for r in results)
    if failed:
        click.echo(f"{failed} of {len(results)} model(s) failed", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add ``devices`` and ``profile`` to a click group (``mnasfpn-lut``)."""
    group.add_command(devices_command, "devices")
    group.add_command(profile_command, "profile")
