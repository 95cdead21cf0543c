"""The shared CLI pieces: one error model, device and model options, the output guard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from mnasfpn.atomic import OutputError, check_output, write_atomic
from mnasfpn.cli_common import (
    ErrorHandlingGroup,
    device_options,
    model_options,
    repeats_option,
)
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import DetectorConfig

# --- one error type ---------------------------------------------------------------------


def _error_classes() -> list[type[BaseException]]:
    from mnasfpn.devices.errors import ConnectionDropped, DeviceError, ModelRunError
    from mnasfpn.devices.host import WorkerDied
    from mnasfpn.devices.transport import CommandTimeout
    from mnasfpn.ir.config import ConfigError
    from mnasfpn.lut.calibration import CalibrationError
    from mnasfpn.lut.predictor import MissingOpError
    from mnasfpn.lut.store import TableError
    from mnasfpn.profiler.micromodel import MicromodelError
    from mnasfpn.searchspace.genotype import GenotypeError

    return [
        GenotypeError,
        DeviceError,
        ConnectionDropped,
        ModelRunError,
        CommandTimeout,
        WorkerDied,
        TableError,
        CalibrationError,
        MissingOpError,
        MicromodelError,
        ConfigError,
        OutputError,
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_a_project_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, MnasfpnError)


def _group_with(body: Any) -> click.Group:
    @click.group(cls=ErrorHandlingGroup)
    def cli() -> None:
        pass

    @cli.command()
    def go() -> None:
        body()

    return cli


def test_group_prints_one_line_and_exit_1_for_project_errors() -> None:
    def body() -> None:
        raise MnasfpnError("table t.sqlite is broken; rebuild it\nsecond line never shown")

    res = CliRunner().invoke(_group_with(body), ["go"])
    assert res.exit_code == 1
    assert res.output == "Error: table t.sqlite is broken; rebuild it\n"


def test_group_lets_bugs_keep_their_traceback() -> None:
    def body() -> None:
        raise KeyError("a bug")

    res = CliRunner().invoke(_group_with(body), ["go"])
    assert isinstance(res.exception, KeyError)
    with pytest.raises(KeyError):
        CliRunner().invoke(_group_with(body), ["go"], catch_exceptions=False)


def test_group_handles_errors_of_nested_groups_and_option_checks() -> None:
    def fail(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if value == "bad":
            raise OutputError("x exists; pass --force")
        return value

    @click.group(cls=ErrorHandlingGroup)
    def cli() -> None:
        pass

    @cli.group()
    def inner() -> None:
        pass

    @inner.command()
    @click.option("--out", default="ok", callback=fail)
    def cmd(out: str) -> None:
        click.echo(out)

    assert CliRunner().invoke(cli, ["inner", "cmd"]).output == "ok\n"
    res = CliRunner().invoke(cli, ["inner", "cmd", "--out", "bad"])
    assert res.exit_code == 1 and res.output == "Error: x exists; pass --force\n"


def test_project_entry_points_use_the_error_group() -> None:
    from mnasfpn.cli import lut_main, main

    assert isinstance(main, ErrorHandlingGroup)
    assert isinstance(lut_main, ErrorHandlingGroup)


# --- model options ----------------------------------------------------------------------


@click.command()
@model_options
@repeats_option
def _model_cmd(config: DetectorConfig, repeats: int | None) -> None:
    click.echo(f"{config!r} {repeats}")


def test_model_options_build_a_detector_config() -> None:
    res = CliRunner().invoke(_model_cmd, [])
    assert res.exit_code == 0, res.output
    assert repr(DetectorConfig()) in res.output and res.output.endswith(" None\n")
    res = CliRunner().invoke(
        _model_cmd,
        ["--input-size", "128", "--num-classes", "3", "--alpha", "0.5", "--depth", "16"],
    )
    want = DetectorConfig(input_size=128, num_classes=3, alpha=0.5, depth=16)
    assert res.exit_code == 0 and repr(want) in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--input-size", "100"], "multiple of 64"), (["--alpha", "0"], "alpha")],
)
def test_model_options_refuse_bad_configs_in_one_line(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(_model_cmd, args)
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


# --- device options ---------------------------------------------------------------------


@click.group(cls=ErrorHandlingGroup)
def _device_cli() -> None:
    pass


@_device_cli.command("go")
@device_options(multiple_serials=True)
def _device_cmd(device: DeviceOptions) -> None:
    click.echo(f"{device.name} {list(device.serials)} {sorted(device.overrides.items())}")


def test_set_is_typed_by_the_profile_schema() -> None:
    res = CliRunner().invoke(
        _device_cli,
        ["go", "--device", "host", "--set", "use_xnnpack=False", "--set", "num_runs=7",
         "--set", "cooldown_s=1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "('cooldown_s', 1.0), ('num_runs', 7), ('use_xnnpack', False)" in res.output


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("num_runs=1.5", "num_runs takes a whole number"),
        ("num_runs=abc", "num_runs takes a whole number"),
        ("use_xnnpack=maybe", "use_xnnpack takes true or false"),
        ("nmu_runs=3", "unknown profile field 'nmu_runs'"),
        ("kind=adb", "cannot be overridden"),
        ("num_runs", "expected FIELD=VALUE"),
        ("num_runs=0", "num_runs must be >= 1"),
        ("stability_tolerance=nan", "stability_tolerance"),
    ],
)
def test_bad_set_is_one_line(setting: str, needle: str) -> None:
    res = CliRunner().invoke(_device_cli, ["go", "--device", "pixel1", "--set", setting])
    assert res.exit_code in (1, 2)
    assert needle in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_unknown_device_fails_before_the_command_runs() -> None:
    res = CliRunner().invoke(_device_cli, ["go", "--device", "pixel9"])
    assert res.exit_code == 1 and "unknown device 'pixel9'; known: generic-android" in res.output
    assert res.output.count("\n") == 1


# --- output guard -----------------------------------------------------------------------


def test_guard_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    check_output(out)  # not there yet: fine
    out.write_text("precious")
    with pytest.raises(OutputError, match="exists; pass --force"):
        check_output(out)
    assert check_output(out, force=True) == out
    assert out.read_text() == "precious"


def test_guard_refuses_the_commands_own_input_even_with_force(tmp_path: Path) -> None:
    src = tmp_path / "t.sqlite"
    src.write_bytes(b"table")
    for same in (src, tmp_path / "." / "t.sqlite"):
        with pytest.raises(OutputError, match="is the input"):
            check_output(same, inputs=[src], force=True)
    hard = tmp_path / "hard.sqlite"
    os.link(src, hard)
    with pytest.raises(OutputError, match="is the input"):
        check_output(hard, inputs=[src], force=True)
    link = tmp_path / "sym.sqlite"
    link.symlink_to(src)
    with pytest.raises(OutputError, match="is the input"):
        check_output(link, inputs=[src], force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, force=True)


def test_write_atomic_without_replace_never_clobbers(tmp_path: Path) -> None:
    out = tmp_path / "m.tflite"
    write_atomic(out, b"first", replace=False)
    with pytest.raises(OutputError, match="exists"):
        write_atomic(out, b"second", replace=False)
    assert out.read_bytes() == b"first"
    write_atomic(out, b"third")
    assert out.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no temp files left


def test_write_atomic_gives_the_usual_file_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        out = write_atomic(tmp_path / "g.json", "{}")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_device_options_give_one_object() -> None:
    res = CliRunner().invoke(
        _device_cli, ["go", "--device", "pixel4", "--serial", "a", "--serial", "b",
                      "--set", "num_runs=4"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output == "pixel4 ['a', 'b'] [('num_runs', 4)]\n"

    @click.command()
    @device_options(device_required=False)
    def one(device: DeviceOptions) -> None:
        click.echo(repr(device))

    res = CliRunner().invoke(one, ["--serial", "x", "--adb-transport", "direct"])
    assert res.exit_code == 0, res.output
    want = DeviceOptions(None, ("x",), "direct", None, None, {})
    assert res.output == repr(want) + "\n"
