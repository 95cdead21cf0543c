"""``mnasfpn-lut devices`` / ``profile``: output, JSON and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adbd_emulator import AdbdEmulator, EmulatorConfig
from mnasfpn.cli import lut_main
from mnasfpn.devices.cli import register


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output
    errors = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_register_adds_both_commands() -> None:
    group = click.Group("mnasfpn-lut")
    register(group)
    assert set(group.commands) == {"devices", "profile"}


def test_cli_import_is_light() -> None:
    code = (
        "import sys, mnasfpn.devices.cli, mnasfpn.devices; "
        "heavy = [m for m in ('tensorflow', 'ai_edge_litert', 'adbutils', 'adb_shell', 'numpy') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_profile_host_json(models: dict[str, Path]) -> None:
    res = CliRunner().invoke(
        lut_main,
        ["profile", str(models["tiny"]), str(models["corrupt"]), "--device", "host", "--json"],
    )
    assert res.exit_code == 1  # one model failed
    payload = json.loads(res.stdout)
    assert payload["device"]["kind"] == "host"
    first, second = payload["results"]
    assert first["ok"] and first["median_ms"] > 0 and first["min_ms"] <= first["median_ms"]
    assert not second["ok"] and second["median_ms"] is None and second["error"]
    assert "1 of 2 model(s) failed" in res.stderr


def test_profile_phone_table(models: dict[str, Path]) -> None:
    with AdbdEmulator(EmulatorConfig(layout="old")) as emu:
        res = CliRunner().invoke(
            lut_main,
            ["profile",
                str(models["tiny"]),
                "--device",
                "pixel4",
                "--adb-transport",
                "direct",
                "--adb-host",
                emu.address,
            ],
        )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("device: pixel4 (Pixel 4, arm64-v8a, 8 cores); core 7")
    assert lines[1].split()[:3] == ["model", "ok", "latency_ms"]
    row = lines[2].split()
    assert row[0] == "tiny.tflite" and row[1] == "yes" and float(row[2]) > 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--device", "pixel9"], "unknown device 'pixel9'; known: generic-android"),
        (["--device", "pixel4", "--adb-transport", "direct"], "needs --adb-host"),
        (["--device", "host", "--serial", "x"], "phones only"),
    ],
)
def test_profile_errors_are_one_line(
    models: dict[str, Path], args: list[str], expected: str
) -> None:
    res = CliRunner().invoke(lut_main, ["profile", str(models["tiny"]), *args])
    assert res.exit_code == 1
    assert expected in _one_line_error(res.output)


def test_profile_without_benchmark_binary(models: dict[str, Path]) -> None:
    with AdbdEmulator(EmulatorConfig(benchmark=None)) as emu:
        res = CliRunner().invoke(
            lut_main,
            ["profile",
                str(models["tiny"]),
                "--device",
                "pixel4",
                "--adb-transport",
                "direct",
                "--adb-host",
                emu.address,
            ],
        )
    assert res.exit_code == 1
    assert "no benchmark_model at /data/local/tmp/benchmark_model" in _one_line_error(res.output)


def test_profile_set_overrides_reach_the_device(models: dict[str, Path]) -> None:
    args = [str(models["tiny"]), "--device", "host", "--json", "--set", "warmup_runs=0"]
    args += ["--set", "runs=fixed", "--set", "num_runs=3", "--set", "min_repeats=1"]
    args += ["--set", "max_repeats=1"]
    res = CliRunner().invoke(lut_main, ["profile", *args])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["runs"] == 3


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("num_runs=abc", "num_runs takes a whole number, not 'abc'"),
        ("use_xnnpack=maybe", "use_xnnpack takes true or false"),
        ("max_repeats=0", "min_repeats <= max_repeats"),
    ],
)
def test_profile_bad_set_is_one_line(
    models: dict[str, Path], setting: str, expected: str
) -> None:
    res = CliRunner().invoke(
        lut_main, ["profile", str(models["tiny"]), "--device", "host", "--set", setting]
    )
    assert res.exit_code in (1, 2)
    assert expected in _one_line_error(res.output)
