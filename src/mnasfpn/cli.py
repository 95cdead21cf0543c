"""Console entry points. Subcommands live next to what they drive and import TensorFlow
only inside their bodies, so `--help` and table look-ups start instantly."""

from __future__ import annotations

import click

from mnasfpn import __version__
from mnasfpn.arch_cli import register as register_arch
from mnasfpn.cli_common import ErrorHandlingGroup
from mnasfpn.data.cli import register as register_data
from mnasfpn.devices.cli import register as register_devices
from mnasfpn.lut.cli import register as register_lut
from mnasfpn.search.cli import register as register_search
from mnasfpn.train.cli import register as register_train


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnasfpn")
def main() -> None:
    """MnasFPN detectors: describe, export and sample architectures of the search spaces."""


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnasfpn-lut")
def lut_main() -> None:
    """Per-op latency lookup tables: measure ops on a device, predict, validate."""


def _register() -> None:
    register_arch(main)
    register_data(main)
    register_train(main)
    register_devices(lut_main)
    register_lut(lut_main)
    register_search(main)


_register()
