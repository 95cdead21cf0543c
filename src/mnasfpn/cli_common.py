"""What every CLI of the project shares: the device options, the model options, and the
one place a `MnasfpnError` becomes ``Error: <one line>`` and an exit status.

Only click and light modules load here (no TensorFlow, no adb libraries): ``--help`` of
every command stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mnasfpn.errors import MnasfpnError

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


def handle_errors(func: F) -> F:
    """Turn a `MnasfpnError` escaping `func` into ``Error: <one line>`` and exit status 1.
    Any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MnasfpnError as exc:
            raise ProjectError(one_line(exc)) from None

    return wrapper  # type: ignore[return-value]


class ErrorHandlingGroup(click.Group):
    """A click group whose subcommands all report `MnasfpnError` the same way, including
    commands other modules register later."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MnasfpnError as exc:
            raise ProjectError(one_line(exc)) from None


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def _parse_set(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    from mnasfpn.devices.errors import DeviceError
    from mnasfpn.devices.profiles import parse_overrides

    try:
        return parse_overrides(value)
    except DeviceError as exc:
        raise click.BadParameter(one_line(exc), ctx=ctx, param=param) from None


def check_overrides(device_name: str, overrides: dict[str, Any]) -> None:
    """DeviceError (one line) unless profile `device_name` exists and takes `overrides`
    (types and ranges, including those that span fields such as min/max repeats)."""
    from mnasfpn.devices.profiles import load_profile

    load_profile(device_name).replace(**overrides)


def device_options(
    *, multiple_serials: bool = False, device_required: bool = True, with_device: bool = True
) -> Callable[[F], F]:
    """``--device`` (as ``device_name``; left out with ``with_device=False``, for commands
    whose device comes from elsewhere, e.g. a table), ``--serial`` (``serial``, or
    ``serials`` when several phones may share the work), ``--adb-transport``,
    ``--adb-host``, ``--benchmark-binary`` and ``--set FIELD=VALUE`` (as ``overrides``: a
    dict typed by the profile schema). Given ``--device``, the profile and its overrides
    are checked before the command runs, so a typo fails at once rather than after
    minutes of conversion; without it, call ``check_overrides`` once the profile is known."""

    from mnasfpn.devices.profiles import list_profiles

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = kwargs.get("device_name")
            if name is not None:
                try:
                    check_overrides(name, kwargs.get("overrides", {}))
                except MnasfpnError as exc:
                    raise ProjectError(one_line(exc)) from None
            return func(*args, **kwargs)

        serial = (
            click.option(
                "--serial",
                "serials",
                multiple=True,
                help="Phone serial; give several identical phones to shard the work.",
            )
            if multiple_serials
            else click.option("--serial", default=None, help="Phone serial (adb server).")
        )
        device = click.option(
            "--device",
            "device_name",
            required=device_required,
            default=None,
            help=f"Device profile: {', '.join(list_profiles())}.",
        )
        options = [
            *([device] if with_device else []),
            serial,
            click.option(
                "--adb-transport",
                type=click.Choice(["server", "direct"]),
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


def repeats_option(func: F) -> F:
    """``--repeats``: cell repeats, default the architecture's own."""
    return click.option(
        "--repeats",
        type=click.IntRange(1, 8),
        default=None,
        help="Cell repeats (default: the architecture's own).",
    )(func)


def model_options(func: F) -> F:
    """``--input-size``, ``--num-classes``, ``--alpha``, ``--depth``, given to the command
    as one checked ``config: DetectorConfig`` (the paper's defaults)."""
    from mnasfpn.ir.config import ConfigError, DetectorConfig

    defaults = DetectorConfig()

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
    def wrapper(
        *args: Any, input_size: int, num_classes: int, alpha: float, depth: int, **kwargs: Any
    ) -> Any:
        try:
            config = DetectorConfig(
                input_size=input_size, num_classes=num_classes, alpha=alpha, depth=depth
            )
        except ConfigError as exc:
            raise click.UsageError(one_line(exc)) from None
        return func(*args, config=config, **kwargs)

    options = [
        click.option(
            "--input-size",
            callback=check("input_size"),
            type=int,
            default=defaults.input_size,
            show_default=True,
            help="Square input side; a multiple of 64.",
        ),
        click.option(
            "--num-classes",
            callback=check("num_classes"),
            type=click.IntRange(min=1),
            default=defaults.num_classes,
            show_default=True,
        ),
        click.option(
            "--alpha",
            callback=check("alpha"),
            type=float,
            default=defaults.alpha,
            show_default=True,
            help="MobileNetV2 depth multiplier, in (0, 2].",
        ),
        click.option(
            "--depth",
            callback=check("depth"),
            type=click.IntRange(min=1),
            default=defaults.depth,
            show_default=True,
            help="Predictor tower depth D.",
        ),
    ]
    return _apply(wrapper, options)  # type: ignore[arg-type]
