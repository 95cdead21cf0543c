"""`mnasfpn describe | export | sample | spaces`: architecture-level commands.

Everything here except `export` runs on the framework-free IR, so it must not import
TensorFlow or Keras (not even indirectly): `describe` is meant to answer instantly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mnasfpn.archs import resolve_archs
from mnasfpn.atomic import check_output, write_atomic
from mnasfpn.cli_common import NameChoice, converter_option, model_options, repeats_option
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig, check_input_size
from mnasfpn.ir.graph import OpGraph
from mnasfpn.ir.ops import PARTS
from mnasfpn.model.convert import detector_tflite
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.named import ARCHITECTURES
from mnasfpn.searchspace.spaces import SPACES, sample_genotypes

F = TypeVar("F", bound=Callable[..., Any])


def _check_input_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    try:
        check_input_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _arch_options(func: F, *, arch_required: bool = True) -> F:
    """--arch, --repeats and the detector around the head (paper defaults)."""
    func = model_options(repeats_option(func))
    return click.option(
        "--arch",
        "arch",
        required=arch_required,
        metavar="NAME|FILE.json|FILE.jsonl",
        help="A named architecture (paper-mnasfpn, ...) or a genotype file.",
    )(func)


def _label(genotype: Genotype, arch: str, index: int, count: int) -> str:
    if genotype.name:
        return genotype.name
    return f"{arch} [{index + 1} of {count}]" if count > 1 else arch


def _billions(madds: int) -> str:
    return f"{madds / 1e9:.3f}"


def _block_ranges(blocks: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5': compact for the common all-live case."""
    if not blocks:
        return "none"
    runs: list[list[int]] = [[blocks[0], blocks[0]]]
    for b in blocks[1:]:
        if b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(str(a) if a == z else f"{a}-{z}" for a, z in runs)


def _live_block_lines(genotype: Genotype, live: list[list[int]]) -> list[str]:
    total = len(genotype.blocks)

    def one(blocks: list[int], where: str) -> str:
        pruned = [b for b in range(total) if b not in blocks]
        ranges = _block_ranges(blocks)
        return f"{len(blocks)} of {total} ({ranges}){where}; pruned: {_block_ranges(pruned)}"

    # Every cell has the same structure, so pruning usually agrees across cells; say it once.
    if all(cell == live[0] for cell in live):
        return [one(live[0], f" in each of {len(live)} cells")]
    return [f"cell {r}: {one(cell, '')}" for r, cell in enumerate(live)]


def format_summary(genotype: Genotype, graph: OpGraph, label: str) -> str:
    s = graph.summary()
    backbone = s["backbone"]
    sdo = "SDO" if genotype.sdo else "no SDO"
    head = [
        f"{label}: space {genotype.space}, C={genotype.channels}, "
        f"{genotype.repeats} repeats, {sdo}",
        f"  input {s['input_size']}x{s['input_size']}x3, {s['num_classes']} classes, "
        f"MobileNetV2 x{backbone['alpha']}, predictor depth {s['predictor']['depth']}",
    ]
    live_lines = _live_block_lines(genotype, s["live_blocks"])
    rows = [
        ("parameters", f"{s['params']:,} (Keras), {s['deployed_params']:,} deployed (BN folded)"),
        ("MAdds", f"{_billions(s['madds'])} B"),
        ("ops", f"{s['ops']} live, {s['pruned_ops']} pruned; {s['unique_keys']} unique keys"),
        ("anchors", f"{s['anchors']:,}"),
        ("live blocks", live_lines[0]),
        *(("", line) for line in live_lines[1:]),
    ]
    width = max(len(name) for name, _ in rows)
    body = [f"  {name:<{width}}  {value}" for name, value in rows]

    columns = ("part", "ops", "MAdds (B)", "params", "deployed")
    table: list[tuple[str, ...]] = [columns]
    for part in PARTS:
        p = s["parts"][part]
        table.append(
            (part, str(p["ops"]), _billions(p["madds"]), f"{p['params']:,}",
             f"{p['deployed_params']:,}")
        )  # fmt: skip
    table.append(
        ("total", str(s["ops"]), _billions(s["madds"]), f"{s['params']:,}",
         f"{s['deployed_params']:,}")
    )  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(cells)

    rule = "  " + "  ".join("-" * w for w in widths)
    parts_table = [line(table[0]), rule, *(line(r) for r in table[1:-1]), rule, line(table[-1])]
    return "\n".join([*head, *body, "", *parts_table])


@click.command()
@_arch_options
@click.option("--json", "as_json", is_flag=True, help="One JSON summary object per line.")
def describe(arch: str, repeats: int | None, config: DetectorConfig, as_json: bool) -> None:
    """Parameters, MAdds, live blocks and op counts of an architecture (no TensorFlow)."""
    genotypes = resolve_archs(arch, repeats)
    chunks = []
    for i, genotype in enumerate(genotypes):
        graph = build_opgraph(genotype, config)
        if as_json:
            chunks.append(json.dumps(graph.summary(), separators=(",", ":")))
        else:
            chunks.append(
                format_summary(genotype, graph, _label(genotype, arch, i, len(genotypes)))
            )
    click.echo(("\n" if as_json else "\n\n").join(chunks))


@click.command()
@functools.partial(_arch_options, arch_required=False)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the .tflite file.",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A training run folder: export its trained detector instead of --arch.",
)
@click.option(
    "--with-postprocess",
    is_flag=True,
    help="With --run: append TFLite's detection post-process (NMS) op.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weight init seed.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@converter_option("What writes the file")
def export(
    arch: str | None,
    repeats: int | None,
    config: DetectorConfig,
    out: Path,
    run_dir: Path | None,
    with_postprocess: bool,
    seed: int,
    force: bool,
    converter: str,
) -> None:
    """Build the detector (untrained weights, or a run's trained ones) as a .tflite file."""
    if run_dir is not None or with_postprocess:
        # the command's machinery loads when it runs: --help stays instant
        from mnasfpn.train.export_cli import export_run_command

        export_run_command(run_dir, out, with_postprocess=with_postprocess, arch=arch, force=force)
        return
    if arch is None:
        raise MnasfpnError("give --arch NAME|FILE (or --run RUN_DIR for a trained one)")
    genotypes = resolve_archs(arch, repeats)
    if len(genotypes) != 1:
        raise MnasfpnError(
            f"--arch {arch!r} holds {len(genotypes)} genotypes; export takes exactly one"
        )
    # A genotype file given as --arch is this command's input: never write over it.
    check_output(out, inputs=[] if arch in ARCHITECTURES else [arch], force=force)
    if not out.parent.is_dir():
        raise MnasfpnError(f"--out {str(out)!r}: directory {str(out.parent)!r} not found")
    graph = build_opgraph(genotypes[0], config)
    data = detector_tflite(graph, converter, seed=seed)
    try:
        # Without --force, a file that appeared during the conversion is not replaced either.
        written = write_atomic(out, data, replace=force)
    except OSError as exc:
        raise MnasfpnError(f"cannot write {out}: {exc.strerror or exc}") from None
    size = written.stat().st_size
    click.echo(f"wrote {written} ({size / 1e6:.2f} MB, {size:,} bytes)")
    for name, shape in _output_shapes(written, graph):
        click.echo(f"  {name}: {shape}")


def _output_shapes(path: Path, graph: OpGraph) -> list[tuple[str, list[int]]]:
    """Shapes as the .tflite file declares them, labelled from the IR where the shape says
    which output it is (the converter's own names are opaque); the IR's if no runtime."""
    ir = [
        (label, [1, *graph.ops[o].out_shape])
        for label, o in zip(("box encodings", "class logits"), graph.outputs, strict=True)
    ]
    # LiteRT: only when a model is run
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return ir
    shapes = []
    for d in Interpreter(model_path=str(path)).get_output_details():
        shape = [int(x) for x in d["shape"]]
        labels = [label for label, want in ir if want == shape]
        shapes.append((labels[0] if len(labels) == 1 else str(d["name"]), shape))
    return shapes


@click.command()
@click.option("--space", "space_name", required=True, type=NameChoice(SPACES))
@click.option("--n", "count", required=True, type=click.IntRange(min=1), help="How many.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines file: one genotype document per line.",
)
@click.option("--repeats", type=click.IntRange(1, 8), default=None,
              help="Cell repeats (default: the space's own).")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def sample(
    space_name: str, count: int, seed: int, out: Path, repeats: int | None, force: bool
) -> None:
    """Sample random genotypes of a search space into a .jsonl file (usable as --arch)."""
    check_output(out, force=force)
    if not out.parent.is_dir():
        raise MnasfpnError(f"--out {str(out)!r}: directory {str(out.parent)!r} not found")
    genotypes = sample_genotypes(space_name, count, seed)
    lines = []
    for i, genotype in enumerate(genotypes):
        if repeats is not None:
            genotype = genotype.with_repeats(repeats)
        genotype = dataclasses.replace(genotype, name=f"{space_name}-seed{seed}-{i}")
        lines.append(json.dumps(genotype.to_dict(), separators=(",", ":")))
    try:
        write_atomic(out, "\n".join(lines) + "\n", replace=force)
    except OSError as exc:
        raise MnasfpnError(f"cannot write {out}: {exc.strerror or exc}") from None
    unique = len({(g.channels, g.blocks) for g in genotypes})
    reps = genotypes[0].repeats if repeats is None else repeats
    fixed = " (a fixed cell: every line is the same)" if SPACES[space_name].fixed else ""
    click.echo(
        f"wrote {count} genotypes of space {space_name} (seed {seed}, {reps} repeats, "
        f"{unique} distinct) to {out}{fixed}"
    )


@click.command()
@click.option(
    "--input-size",
    type=int,
    default=DetectorConfig().input_size,
    show_default=True,
    callback=_check_input_size,
    help="Input side the op keys are counted at.",
)
def spaces(input_size: int) -> None:
    """List the search spaces: size and how many op keys a latency table needs."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.ir.enumerate import space_keys

    rows = [("space", "genotypes", f"op keys @{input_size}", "description")]
    for space in SPACES.values():
        card = space.cardinality()
        size = "1 (fixed)" if card == 1 else f"10^{math.log10(card):.1f}"
        rows.append(
            (space.name, size, str(len(space_keys(space, input_size=input_size))),
             space.description)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        )


def register(group: click.Group) -> None:
    for command in (describe, export, sample, spaces):
        group.add_command(command)
