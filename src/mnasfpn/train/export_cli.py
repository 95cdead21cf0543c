"""`mnasfpn export --run`: the body behind arch_cli's export option (TensorFlow loads here)."""

from __future__ import annotations

from pathlib import Path

import click

from mnasfpn.atomic import check_output
from mnasfpn.errors import MnasfpnError
from mnasfpn.train.checkpoint import require_checkpoint
from mnasfpn.train.cli import require_tensorflow
from mnasfpn.train.export import export_run
from mnasfpn.train.run import load_run, run_files


def export_run_command(
    run_dir: Path | None, out: Path, *, with_postprocess: bool, arch: str | None, force: bool
) -> None:
    if run_dir is None:
        raise MnasfpnError("--with-postprocess needs --run RUN_DIR (a trained detector)")
    if arch is not None:
        raise MnasfpnError("give --arch or --run, not both (a run knows its architecture)")

    info = load_run(run_dir)
    # Never over any file of the run it reads (run.json, a checkpoint), even with --force.
    check_output(out, inputs=run_files(run_dir), force=force)
    require_checkpoint(run_dir)
    if not out.parent.is_dir():
        raise MnasfpnError(f"--out {str(out)!r}: directory {str(out.parent)!r} not found")
    require_tensorflow("export --run")
    written, step = export_run(info, run_dir, out, with_postprocess=with_postprocess, replace=force,
                               echo=lambda s: click.echo(s, err=True))  # fmt: skip
    size = written.stat().st_size
    what = "with detection post-process" if with_postprocess else "before NMS"
    click.echo(f"wrote {written} ({size / 1e6:.2f} MB, {size:,} bytes): {run_dir} at step "
               f"{step}, {what}; input: image [1,{info.detector.input_size},"
               f"{info.detector.input_size},3] scaled to [-1, 1] (2/255·x − 1)")  # fmt: skip
    if with_postprocess:
        n = info.detector.num_classes
        click.echo("  outputs (signature order): boxes [1,100,4] normalized ymin,xmin,ymax,xmax; "
                   f"classes [1,100] (0..{n - 1}); scores [1,100]; count [1]")  # fmt: skip
        return
    # LiteRT: only to list the written model's outputs
    from ai_edge_litert.interpreter import Interpreter

    for d in Interpreter(model_path=str(written)).get_output_details():
        click.echo(f"  {d['name']}: {[int(x) for x in d['shape']]}")
