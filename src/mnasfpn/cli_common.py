"""What every CLI of the project shares: the one place a `MnasfpnError` becomes
``Error: <one line>`` and an exit status, choices read from the registries, the device
options and the model options.

Only click and light modules load here (no TensorFlow, no adb libraries): ``--help`` of
every command stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.options import DeviceOptions
from mnasfpn.devices.profiles import PROFILES, parse_overrides
from mnasfpn.devices.transport import TRANSPORTS
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.config import ConfigError, DetectorConfig
from mnasfpn.model.convert import CONVERTERS, DEFAULT_CONVERTER, converters_help
from mnasfpn.registry import Registry, Subset

F = TypeVar("F", bound=Callable[..., Any])

# A user-caused error: the usual click failure status (usage errors exit 2).
ERROR_EXIT_CODE = 1


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (its type's name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class ProjectError(click.ClickException):
    """How click prints a `MnasfpnError`: ``Error: <one line>``."""

    exit_code = ERROR_EXIT_CODE


class ErrorHandlingGroup(click.Group):
    """The one error path of the CLIs: a `MnasfpnError` escaping any subcommand (its
    body, an option's check, a nested group's command, a command registered later) is
    printed as ``Error: <one line>`` with exit status 1. Anything else is a bug and keeps
    its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MnasfpnError as exc:
            raise ProjectError(one_line(exc)) from None


class NameChoice(click.Choice):  # type: ignore[type-arg]
    """One of a registry's names. The names are read when ``--help`` or a value needs
    them, so a name registered after the command was made is offered too; an unknown
    name is the registry's own one-line error (which lists the known ones)."""

    def __init__(self, registry: Registry[Any] | Subset[Any]) -> None:
        self.registry = registry
        self.case_sensitive = True

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(self.registry.names())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        self.registry.get(value)
        return value


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def _parse_set(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    try:
        return parse_overrides(value)
    except DeviceError as exc:
        raise click.BadParameter(one_line(exc), ctx=ctx, param=param) from None


def device_options(
    *, multiple_serials: bool = False, device_required: bool = True
) -> Callable[[F], F]:
    """``--device``, ``--serial`` (repeatable with `multiple_serials`: identical phones
    share the work), ``--adb-transport``, ``--adb-host``, ``--benchmark-binary`` and
    ``--set FIELD=VALUE``, given to the command as one ``device: DeviceOptions``. Given
    ``--device``, the profile and its overrides are checked before the command runs, so a
    typo fails at once rather than after minutes of conversion; without it
    (``device_required=False``: the command has its own default), check
    ``device.profile()`` once the name is known."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(
            *args: Any,
            device_name: str | None,
            serials: tuple[str, ...] | str | None,
            adb_transport: str,
            adb_host: str | None,
            benchmark_binary: str | None,
            overrides: dict[str, Any],
            **kwargs: Any,
        ) -> Any:
            if not isinstance(serials, tuple):  # one --serial
                serials = (serials,) if serials else ()
            device = DeviceOptions(
                device_name, serials, adb_transport, adb_host, benchmark_binary, overrides
            )
            if device_name is not None:
                device.profile()
            return func(*args, device=device, **kwargs)

        serial = (
            click.option(
                "--serial",
                "serials",
                multiple=True,
                help="Phone serial; give several identical phones to shard the work.",
            )
            if multiple_serials
            else click.option(
                "--serial", "serials", default=None, help="Phone serial (adb server)."
            )
        )
        options = [
            click.option(
                "--device",
                "device_name",
                type=NameChoice(PROFILES),
                required=device_required,
                default=None,
                help="Device profile.",
            ),
            serial,
            click.option(
                "--adb-transport",
                type=NameChoice(TRANSPORTS),
                default="server",
                show_default=True,
                help="adb server (adbutils) or straight to adbd (adb-shell).",
            ),
            click.option(
                "--adb-host", default=None, help="HOST:PORT of adbd for --adb-transport direct."
            ),
            click.option(
                "--benchmark-binary",
                type=click.Path(dir_okay=False),
                default=None,
                help="Local benchmark_model binary to push to the phone.",
            ),
            click.option(
                "--set",
                "overrides",
                multiple=True,
                metavar="FIELD=VALUE",
                callback=_parse_set,
                help="Override a device profile field, e.g. --set num_runs=20 "
                "--set use_xnnpack=false (typed and range-checked).",
            ),
        ]
        return _apply(wrapper, options)  # type: ignore[arg-type]

    return decorate


def converter_option(what: str) -> Callable[[F], F]:
    """``--converter``: what writes the .tflite files (`what`, e.g. "Micro-model writer")."""
    return click.option(
        "--converter",
        type=NameChoice(CONVERTERS),
        default=DEFAULT_CONVERTER,
        show_default=True,
        help=f"{what}: {converters_help()}. They give the same ops.",
    )


def repeats_option(func: F) -> F:
    """``--repeats``: cell repeats, default the architecture's own."""
    return click.option(
        "--repeats",
        type=click.IntRange(1, 8),
        default=None,
        help="Cell repeats (default: the architecture's own).",
    )(func)


def model_options(func: F | None = None, *, classes: bool = True) -> Any:
    """``--input-size``, ``--num-classes``, ``--alpha``, ``--depth``, given to the command
    as one checked ``config: DetectorConfig`` (the paper's defaults). With
    ``classes=False`` there is no ``--num-classes`` (the command reads the classes from
    its data and replaces the default the config carries)."""
    if func is None:
        return functools.partial(model_options, classes=classes)

    defaults = DetectorConfig()
    fields = ("input_size", "num_classes", "alpha", "depth")
    if not classes:
        fields = tuple(f for f in fields if f != "num_classes")

    def check(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
        # Each value is checked by DetectorConfig itself, so the error names the option.
        def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            try:
                DetectorConfig(**{field: value})
            except ConfigError as exc:
                raise click.BadParameter(one_line(exc), ctx=ctx, param=param) from None
            return value

        return callback

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {f: kwargs.pop(f) for f in fields}
        try:
            config = DetectorConfig(**values)
        except ConfigError as exc:
            raise click.UsageError(one_line(exc)) from None
        return func(*args, config=config, **kwargs)

    options = {
        "input_size": click.option(
            "--input-size",
            callback=check("input_size"),
            type=int,
            default=defaults.input_size,
            show_default=True,
            help="Square input side; a multiple of 64.",
        ),
        "num_classes": click.option(
            "--num-classes",
            callback=check("num_classes"),
            type=click.IntRange(min=1),
            default=defaults.num_classes,
            show_default=True,
        ),
        "alpha": click.option(
            "--alpha",
            callback=check("alpha"),
            type=float,
            default=defaults.alpha,
            show_default=True,
            help="MobileNetV2 depth multiplier, in (0, 2].",
        ),
        "depth": click.option(
            "--depth",
            callback=check("depth"),
            type=click.IntRange(min=1),
            default=defaults.depth,
            show_default=True,
            help="Predictor tower depth D.",
        ),
    }
    return _apply(wrapper, [options[f] for f in fields])  # type: ignore[arg-type]
