"""`mnasfpn describe | export | sample | spaces` through click."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from mnasfpn.arch_cli import register
from mnasfpn.cli_common import ErrorHandlingGroup
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import BackboneConfig, PredictorConfig
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import paper_mnasfpn
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes

SRC = str(Path(__file__).resolve().parents[1] / "src")


@click.group(cls=ErrorHandlingGroup)
def cli() -> None:
    """Stand-in for `mnasfpn.cli.main`, so these tests depend on this module alone (and
    the one error handler every command runs under)."""


register(cli)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_error(*args: str, code: int = 1) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    # click prints the message and exits: SystemExit, never a Python exception.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def one_line_error(*args: str) -> str:
    output = run_error(*args, code=1)
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_describe_paper() -> None:
    result = run("describe", "--arch", "paper-mnasfpn")
    assert result.exit_code == 0
    out = result.output
    print(out)
    s = build_opgraph(paper_mnasfpn()).summary()
    assert "paper-mnasfpn" in out
    assert f"{s['params']:,} (Keras)" in out
    assert f"{s['deployed_params']:,} deployed" in out
    assert f"{s['madds'] / 1e9:.3f} B" in out
    assert f"{s['unique_keys']} unique keys" in out
    assert "5 of 5 (0-4) in each of 4 cells; pruned: none" in out
    for part in ("backbone", "head", "predictor", "total"):
        assert any(line.split()[:1] == [part] for line in out.splitlines()), part
    backbone_row = next(line for line in out.splitlines() if line.split()[:1] == ["backbone"])
    assert f"{s['parts']['backbone']['params']:,}" in backbone_row


def test_describe_json_is_the_summary() -> None:
    result = run("describe", "--arch", "paper-mnasfpn", "--json")
    doc = json.loads(result.output)
    assert doc == json.loads(json.dumps(build_opgraph(paper_mnasfpn()).summary()))
    assert doc["params"] > 0 and doc["madds"] > 0


def test_describe_options_reach_the_graph() -> None:
    args = ["--repeats", "3", "--input-size", "256", "--num-classes", "10"]
    args += ["--alpha", "0.5", "--depth", "32"]
    doc = json.loads(run("describe", "--arch", "paper-mnasfpn", "--json", *args).output)
    want = build_opgraph(
        paper_mnasfpn(3),
        backbone=BackboneConfig(alpha=0.5),
        predictor=PredictorConfig(depth=32),
        input_size=256,
        num_classes=10,
    ).summary()
    assert doc == json.loads(json.dumps(want))
    assert doc["repeats"] == 3 and doc["input_size"] == 256


def test_describe_shows_pruned_blocks(tmp_path: Path) -> None:
    doc = paper_mnasfpn().to_dict()
    doc["name"] = "with-dead"
    # Insert an intermediate block nobody reads; shift node references past it.
    blocks = doc["blocks"]
    for b in blocks:
        b["inputs"] = [i + 1 if i >= 5 else i for i in b["inputs"]]
    blocks.insert(1, {"inputs": [0, 3], "level": 5, "expansion": 64, "kernel": 7})
    path = tmp_path / "dead.json"
    path.write_text(json.dumps(doc))
    out = run("describe", "--arch", str(path)).output
    assert "with-dead" in out
    assert "5 of 6 (0, 2-5) in each of 4 cells; pruned: 1" in out
    ops = json.loads(run("describe", "--arch", str(path), "--json").output)
    assert ops["pruned_ops"] > 0
    assert ops["ops"] == build_opgraph(paper_mnasfpn()).summary()["ops"]


def test_describe_input_size_must_be_multiple_of_64() -> None:
    out = run_error("describe", "--arch", "paper-mnasfpn", "--input-size", "300", code=2)
    assert "--input-size" in out and "multiple of 64" in out


@pytest.mark.parametrize(
    "args",
    [
        ("--repeats", "0"),
        ("--repeats", "9"),
        ("--num-classes", "0"),
        ("--alpha", "0"),
        ("--depth", "x"),
    ],
)
def test_describe_rejects_bad_options(args: tuple[str, ...]) -> None:
    out = run_error("describe", "--arch", "paper-mnasfpn", *args, code=2)
    assert args[0] in out


def test_describe_unknown_arch() -> None:
    line = one_line_error("describe", "--arch", "paper-mnasfpnn")
    assert "paper-mnasfpnn" in line and "paper-mnasfpn," in line


def _bad_docs() -> dict[str, str]:
    base = paper_mnasfpn().to_dict()
    cases: dict[str, str] = {}

    def edit(name: str, b: int | None, key: str, value: object) -> None:
        doc = copy.deepcopy(base)
        (doc if b is None else doc["blocks"][b])[key] = value
        cases[name] = json.dumps(doc)

    edit("forward", 2, "inputs", [5, 7])
    edit("level", 0, "level", 9)
    edit("output-level", 2, "level", 3)
    edit("kernel", 1, "kernel", 4)
    edit("expansion", 1, "expansion", 100)
    edit("merge", 1, "merge", "max")
    edit("channels", None, "channels", 40)
    edit("type", 3, "kernel", "5")
    edit("space", None, "space", "nope")
    edit("version", None, "version", 7)
    cases["truncated"] = json.dumps(base)[:80]
    cases["empty"] = ""
    cases["garbage"] = "not json"
    return cases


@pytest.mark.parametrize(("case", "text"), list(_bad_docs().items()))
def test_describe_bad_file_is_one_line(case: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    line = one_line_error("describe", "--arch", str(path))
    assert str(path) in line


def test_describe_bad_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    good = json.dumps(paper_mnasfpn().to_dict())
    path.write_text(f"{good}\n{good[:50]}\n")
    line = one_line_error("describe", "--arch", str(path))
    assert f"{path}:2" in line


def test_sample_writes_genotypes(tmp_path: Path) -> None:
    out = tmp_path / "g.jsonl"
    result = run("sample", "--space", "mnasfpn", "--n", "6", "--seed", "4", "--out", str(out))
    summary = result.output.strip().splitlines()
    assert len(summary) == 1
    assert "6 genotypes" in summary[0] and "mnasfpn" in summary[0] and str(out) in summary[0]
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    loaded = [genotype_from_dict(json.loads(line)) for line in lines]
    assert loaded == sample_genotypes("mnasfpn", 6, seed=4)
    assert all(" " not in line for line in lines)  # compact
    assert len({g.name for g in loaded}) == 6
    # The file is an --arch: one summary per genotype.
    docs = run("describe", "--arch", str(out), "--json").output.splitlines()
    assert len(docs) == 6
    for g, doc in zip(loaded, docs, strict=True):
        assert json.loads(doc)["name"] == g.name
    human = run("describe", "--arch", str(out)).output
    assert all(g.name and g.name in human for g in loaded)
    # Unnamed genotypes are labelled by where they came from.
    unnamed = tmp_path / "unnamed.jsonl"
    unnamed.write_text(
        "".join(json.dumps(g.to_dict()) + "\n" for g in sample_genotypes("mnasfpn", 2, 0))
    )
    human = run("describe", "--arch", str(unnamed)).output
    assert f"{unnamed} [2 of 2]: space mnasfpn" in human
    # Each line saved alone is a genotype file.
    single = tmp_path / "one.json"
    single.write_text(lines[2])
    doc = json.loads(run("describe", "--arch", str(single), "--json").output)
    assert doc == json.loads(json.dumps(build_opgraph(loaded[2]).summary()))


@pytest.mark.parametrize("space", list(SPACES))
def test_sample_every_space(space: str, tmp_path: Path) -> None:
    out = tmp_path / f"{space}.jsonl"
    run("sample", "--space", space, "--n", "3", "--seed", "1", "--out", str(out), "--repeats", "2")
    loaded = [genotype_from_dict(json.loads(line)) for line in out.read_text().splitlines()]
    assert [g.repeats for g in loaded] == [2, 2, 2]
    assert loaded == [g.with_repeats(2) for g in sample_genotypes(space, 3, seed=1)]


def test_sample_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "g.jsonl"
    out.write_text("keep me\n")
    line = one_line_error("sample", "--space", "mnasfpn", "--n", "2", "--out", str(out))
    assert "--force" in line
    assert out.read_text() == "keep me\n"
    run("sample", "--space", "mnasfpn", "--n", "2", "--out", str(out), "--force")
    assert len(out.read_text().splitlines()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["g.jsonl"]  # no temp file left


def test_sample_errors(tmp_path: Path) -> None:
    # An unknown name is the registry's one line, as from every command.
    out = one_line_error("sample", "--space", "bogus", "--n", "2", "--out", str(tmp_path / "x"))
    assert "unknown search space 'bogus'" in out and all(name in out for name in SPACES)
    out = run_error(
        "sample", "--space", "mnasfpn", "--n", "0", "--out", str(tmp_path / "x"), code=2
    )
    assert "--n" in out
    line = one_line_error("sample", "--space", "mnasfpn", "--n", "1",
                          "--out", str(tmp_path / "missing" / "x.jsonl"))  # fmt: skip
    assert "not found" in line


def test_spaces_lists_every_space() -> None:
    out = run("spaces").output.splitlines()
    assert len(out) == 1 + len(SPACES)
    for name, space in SPACES.items():
        row = next(line for line in out if line.split()[:1] == [name])
        assert str(len(space_keys(space))) in row.split()
        assert space.description in row
    assert "10^33.6" in next(line for line in out if line.startswith("mnasfpn "))


def test_export_small_model(tmp_path: Path) -> None:
    genotypes = tmp_path / "g.jsonl"
    run("sample", "--space", "no-expand", "--n", "1", "--seed", "0", "--out", str(genotypes))
    out = tmp_path / "model.tflite"
    out.write_bytes(b"an older export")  # replaced only because --force is given
    start = time.perf_counter()
    args = ["--arch", str(genotypes), "--input-size", "64", "--repeats", "1", "--out", str(out)]
    result = run("export", *args, "--force")
    print(f"export took {time.perf_counter() - start:.1f} s")
    assert out.is_file() and out.stat().st_size > 0
    assert str(out) in result.output
    anchors = (64 + 16 + 4 + 1) * 9
    assert f"box encodings: [1, {anchors}, 4]" in result.output
    assert f"class logits: [1, {anchors}, 90]" in result.output


def test_export_never_replaces_what_is_not_its_own(tmp_path: Path) -> None:
    out = tmp_path / "model.tflite"
    out.write_bytes(b"measured elsewhere")
    line = one_line_error("export", "--arch", "paper-mnasfpn", "--out", str(out))
    assert str(out) in line and "--force" in line
    assert out.read_bytes() == b"measured elsewhere"
    # Its own input, even with --force: the genotype file would be gone.
    genotype = tmp_path / "g.json"
    paper_mnasfpn().save(genotype)
    before = genotype.read_bytes()
    for target in (genotype, tmp_path / "." / "g.json"):
        line = one_line_error("export", "--arch", str(genotype), "--out", str(target), "--force")
        assert "is the input" in line
    assert genotype.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "model.tflite"]


def test_export_needs_exactly_one(tmp_path: Path) -> None:
    genotypes = tmp_path / "g.jsonl"
    run("sample", "--space", "mnasfpn", "--n", "2", "--out", str(genotypes))
    line = one_line_error("export", "--arch", str(genotypes), "--out", str(tmp_path / "m.tflite"))
    assert "2 genotypes" in line


NO_TF_SCRIPT = """
import sys, time, click
{setup}
start = time.perf_counter()
try:
    main(["describe", "--arch", sys.argv[1]], standalone_mode=False)
    main(["describe", "--arch", sys.argv[1], "--json"], standalone_mode=False)
finally:
    print(f"describe x2: {{time.perf_counter() - start:.3f}} s", file=sys.stderr)
assert "tensorflow" not in sys.modules, "tensorflow was imported"
assert "keras" not in sys.modules, "keras was imported"
"""
LOCAL_GROUP = """
from mnasfpn.arch_cli import register
from mnasfpn.cli_common import ErrorHandlingGroup
@click.group()
def main(): pass
register(main)
"""


def _describe_without_tf(setup: str, tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    sample_genotypes("mnasfpn", 1, seed=0)[0].save(path)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TF_SCRIPT.format(setup=setup), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout and '"madds"' in proc.stdout


def test_describe_does_not_import_tensorflow(tmp_path: Path) -> None:
    _describe_without_tf(LOCAL_GROUP, tmp_path)


def test_real_entry_point_describe_does_not_import_tensorflow(tmp_path: Path) -> None:
    _describe_without_tf("from mnasfpn.cli import main", tmp_path)


def test_real_entry_point_has_the_commands() -> None:
    from mnasfpn.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("describe", "export", "sample", "spaces"):
        assert command in result.output
    result = CliRunner().invoke(main, ["describe", "--arch", "nasfpnlite"])
    assert result.exit_code == 0 and "nasfpnlite" in result.output
