"""One way to name a thing: every registry refuses an unknown name in one `MnasfpnError`
line that lists the known ones, the CLIs say the same line, and a name registered later
is offered by the commands' choices and --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mnasfpn.cli import lut_main, main
from mnasfpn.devices.kinds import DEVICE_KINDS
from mnasfpn.devices.profiles import PROFILES
from mnasfpn.devices.transport import TRANSPORTS
from mnasfpn.errors import MnasfpnError
from mnasfpn.model.convert import CONVERTERS
from mnasfpn.registry import Registry, UnknownNameError
from mnasfpn.search.evaluators import EVALUATORS
from mnasfpn.search.random_search import RandomSearch
from mnasfpn.search.strategies import STRATEGIES
from mnasfpn.searchspace.named import ARCHITECTURES
from mnasfpn.searchspace.spaces import SEARCHABLE, SPACES, sample_genotypes

REGISTRIES: dict[str, Any] = {
    "spaces": SPACES,
    "searchable spaces": SEARCHABLE,
    "architectures": ARCHITECTURES,
    "strategies": STRATEGIES,
    "evaluators": EVALUATORS,
    "converters": CONVERTERS,
    "device kinds": DEVICE_KINDS,
    "device profiles": PROFILES,
    "adb transports": TRANSPORTS,
}


def _expected(kind: str, known: list[str]) -> str:
    return f"unknown {kind} 'no-such'; known: {', '.join(known)}"


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=list(REGISTRIES))
def test_an_unknown_name_is_one_line_listing_the_known_ones(registry: Any) -> None:
    assert len(registry.names()) >= 2
    with pytest.raises(MnasfpnError) as info:
        registry.get("no-such")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(_expected(registry.kind, registry.names()))
    for name in registry.names():
        assert registry.get(name) is registry[name]
        assert name in registry


def test_the_searchable_spaces_leave_the_fixed_cell_out() -> None:
    assert "nasfpnlite" in SPACES and "nasfpnlite" not in SEARCHABLE.names()
    with pytest.raises(MnasfpnError, match="unknown search space 'x'; known: mnasfpn, no-expand"):
        SEARCHABLE.get("x")
    with pytest.raises(MnasfpnError, match="is a fixed cell with nothing to search"):
        SEARCHABLE.get("nasfpnlite")
    known = str(_error(SEARCHABLE, "x")).split("known: ")[1].split(", ")
    assert known == ["mnasfpn", "no-expand", "nasfpnlite-s", "conn-search"]


def _error(registry: Any, name: str) -> MnasfpnError:
    with pytest.raises(MnasfpnError) as info:
        registry.get(name)
    return info.value


def test_registry_rules() -> None:
    reg: Registry[int] = Registry("widget", {"a": 1}, hint="or give a number")
    reg.register("b", 2)
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 3)  # two things under one name is a bug, not a user error
    err = _error(reg, "c")
    assert isinstance(err, UnknownNameError)
    assert str(err) == "unknown widget 'c'; known: a, b (or give a number)"
    # A long or odd "name" (a pasted file, say) is cut, and stays one line.
    long = _error(reg, "x" * 10_000 + "\n")
    assert len(str(long)) < 150 and "\n" not in str(long)
    assert "\n" not in str(_error(reg, ["not", "hashable"]))  # type: ignore[arg-type]
    assert reg.get("c", None) is None  # a default, as for a dict
    assert ["x"] not in reg


# Each row: (CLI, arguments, the registry its unknown name comes from). The name is
# refused while the options are read: nothing is measured, trained or written.
CLI_CASES = [
    (lut_main, ["build", "--device", "no-such"], PROFILES),
    (lut_main, ["build", "--device", "host", "--space", "no-such"], SPACES),
    (lut_main, ["build", "--device", "host", "--converter", "no-such"], CONVERTERS),
    (lut_main, ["build", "--device", "pixel4", "--adb-transport", "no-such"], TRANSPORTS),
    (lut_main, ["validate", "--lut", "t.sqlite", "--space", "no-such"], SPACES),
    (lut_main, ["profile", "m.tflite", "--device", "no-such"], PROFILES),
    (main, ["sample", "--space", "no-such", "--n", "1", "--out", "x.jsonl"], SPACES),
    (main, ["describe", "--arch", "no-such"], ARCHITECTURES),
    (main, ["export", "--arch", "paper-mnasfpn", "--out", "m.tflite", "--converter", "no-such"],
     CONVERTERS),
    (main, ["search", "--lut", "t.sqlite", "--data", "d", "--out", "o", "--space", "no-such"],
     SEARCHABLE),
    (main, ["search", "--lut", "t.sqlite", "--data", "d", "--out", "o", "--strategy", "no-such"],
     STRATEGIES),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cli", "args", "registry"),
    CLI_CASES,
    ids=[f"{c.name} {' '.join(a[:1] + a[-2:-1])}" for c, a, _ in CLI_CASES],
)
def test_the_clis_say_the_registrys_line(
    cli: Any, args: list[str], registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines() == [
        "Error: " + str(_error(registry, "no-such"))
    ], res.output
    assert list(tmp_path.iterdir()) == []


def _help(cli: Any, *command: str) -> str:
    res = CliRunner().invoke(cli, [*command, "--help"], terminal_width=400)
    assert res.exit_code == 0, res.output
    return res.output


def test_a_name_registered_later_is_offered_by_the_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = dataclasses.replace(SPACES["mnasfpn"], name="extra-space", kernels=(3,))
    monkeypatch.setitem(SPACES, extra.name, extra)
    monkeypatch.setitem(STRATEGIES, "extra-strategy", RandomSearch)
    monkeypatch.setitem(CONVERTERS, "extra-writer", CONVERTERS["direct"])
    monkeypatch.setitem(PROFILES, "extra-device", PROFILES["host"])
    for cli, command in ((main, "sample"), (main, "search"), (lut_main, "build")):
        assert "extra-space" in _help(cli, command)
    assert "extra-strategy" in _help(main, "search")
    assert "extra-writer" in _help(lut_main, "build") and "extra-writer" in _help(main, "export")
    assert "extra-device" in _help(lut_main, "build") and "extra-device" in _help(
        lut_main, "profile"
    )
    # ... and taken: the new space samples its own genotypes.
    out = tmp_path / "g.jsonl"
    res = CliRunner().invoke(main, ["sample", "--space", extra.name, "--n", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert all(b.kernel == 3 for g in sample_genotypes(extra, 3, 0) for b in g.blocks)
    assert '"space":"extra-space"' in out.read_text()


def test_help_and_the_registries_load_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from mnasfpn.cli import main, lut_main\n"
        "import mnasfpn.search.strategies, mnasfpn.search.evaluators, mnasfpn.devices\n"
        "for cli, name in ((main, 'search'), (lut_main, 'build')):\n"
        "    try:\n"
        "        cli([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('tensorflow', 'keras', 'ray', 'matplotlib', 'ai_edge_litert', 'adbutils')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
