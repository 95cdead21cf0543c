"""Device profiles: TOML data files shipped in ``mnasfpn/devices/profiles``, one
`PROFILES` entry each (a new profile is a new file)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mnasfpn.devices.adaptive import QUANTILE_OF, RUN_POLICIES, StopRule
from mnasfpn.devices.errors import DeviceError
from mnasfpn.devices.stats import STATISTICS
from mnasfpn.registry import Registry


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str
    description: str = ""
    expected_models: tuple[str, ...] = ()
    core: int = -1
    taskset_mask: str = ""
    threads: int = 1
    warmup_runs: int = 10
    num_runs: int = 50
    min_repeats: int = 3
    max_repeats: int = 10
    stability_tolerance: float = 0.02
    use_xnnpack: bool = False
    benchmark_binary: str = ""
    cooldown_s: float = 0.0
    # How many invocations a model gets. "adaptive": until the confidence interval of the
    # timing statistic has a relative half-width <= target_ci (at `confidence`), between
    # min_runs and max_runs invocations and within max_time_s (devices/adaptive.py);
    # "fixed": rounds of num_runs until min_repeats of them agree within
    # stability_tolerance (at most max_repeats rounds).
    runs: str = "fixed"
    target_ci: float = 0.01
    confidence: float = 0.95
    min_runs: int = 40
    max_runs: int = 1000
    max_time_s: float = 2.0
    # Warm-up ends after warmup_runs invocations or warmup_s seconds, whichever comes
    # first (at least one invocation; 0 = by count only).
    warmup_s: float = 0.0
    # The timing statistic (devices/stats.py); "" = the device's default (the host:
    # pace-p10, each invocation divided by the machine's pace; p10 keeps the raw one).
    statistic: str = ""

    def matches_model(self, model: str) -> bool:
        """Empty ``expected_models`` accepts any phone (the generic profile)."""
        return not self.expected_models or model.strip() in self.expected_models

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed (e.g. fewer runs in a quick check). Values are
        typed by the schema: a string (as from ``--set``) is parsed, e.g. "False" → False;
        a value of the wrong type, an unknown or fixed field, or a value out of range is
        refused in one line."""
        typed = {name: coerce_field(name, value) for name, value in changes.items()}
        return _validated(dataclasses.replace(self, **typed))

    def stop_rule(self, statistic: str) -> StopRule:
        """The adaptive stopping rule of this profile for a quantile ``statistic``."""
        if statistic not in QUANTILE_OF:
            raise DeviceError(
                f"runs = adaptive bounds a quantile statistic ({', '.join(QUANTILE_OF)}), "
                f"not {statistic!r}; use --set runs=fixed"
            )
        return StopRule(
            quantile=QUANTILE_OF[statistic],
            target=self.target_ci,
            confidence=self.confidence,
            min_runs=self.min_runs,
            max_runs=self.max_runs,
            max_time_s=self.max_time_s,
        )

    def mask(self) -> str:
        """The taskset mask in hex, derived from ``core`` when not given."""
        if self.taskset_mask:
            return self.taskset_mask
        return format(1 << max(self.core, 0), "x")


def _shipped() -> dict[str, Any]:
    folder = resources.files("mnasfpn.devices").joinpath("profiles")
    files = {p.name.removesuffix(".toml"): p for p in folder.iterdir() if p.name.endswith(".toml")}
    return dict(sorted(files.items()))


# Profile name → its TOML file; a user picks one with --device.
PROFILES: Registry[Any] = Registry("device", _shipped(), error=DeviceError)


# Fields an override may not change: they say which device this is, not how it is timed.
_FIXED = frozenset({"name", "kind"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(Profile)
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def overridable_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Profile) if f.name not in _FIXED]


def _parse_text(name: str, kind: Any, raw: str) -> Any:
    text = raw.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return raw
    # tuple[str, ...]: a comma-separated list
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def coerce_field(name: str, value: Any) -> Any:
    """`value` as the type of profile field `name`: strings are parsed, other values must
    already have the field's type (an int is accepted where a float is wanted)."""
    if name not in _FIELD_TYPES:
        raise DeviceError(
            f"unknown profile field {name!r}; valid fields: {', '.join(overridable_fields())}"
        )
    if name in _FIXED:
        raise DeviceError(
            f"profile field {name!r} cannot be overridden; choose another --device instead"
        )
    kind = _FIELD_TYPES[name]
    kind_name = _KIND_NAMES.get(kind, "a comma-separated list of names")
    if isinstance(value, str) and kind is not str:
        try:
            return _parse_text(name, kind, value)
        except ValueError:
            raise DeviceError(f"profile field {name} takes {kind_name}, not {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple[str, ...] or typing.get_origin(kind) is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise DeviceError(f"profile field {name} takes {kind_name}, not {value!r}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings (``--set``) → typed profile overrides; ranges are checked
    when they are applied to a profile (`Profile.replace`), as some span two fields."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DeviceError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set num_runs=20")
        if name in out:
            raise DeviceError(f"--set {name} is given twice; give each field once")
        out[name] = coerce_field(name, raw)
    return out


def _validated(p: Profile) -> Profile:
    # `kind` is checked where the device is opened (devices/kinds.py): the kinds build on
    # profiles, not profiles on them.
    problems = []
    if p.threads < 1 or p.num_runs < 1 or p.warmup_runs < 0:
        problems.append("threads and num_runs must be >= 1, warmup_runs >= 0")
    if p.core < -1:
        problems.append("core must be >= 0, or -1 for the last usable core")
    if not 1 <= p.min_repeats <= p.max_repeats:
        problems.append("need 1 <= min_repeats <= max_repeats")
    if not (0 < p.stability_tolerance < 1 and 0 <= p.cooldown_s < math.inf):
        problems.append("stability_tolerance must be in (0, 1) and cooldown_s finite, >= 0")
    if p.runs not in RUN_POLICIES:
        problems.append(f"runs must be one of {', '.join(RUN_POLICIES)}, not {p.runs!r}")
    if not (0 < p.target_ci < 1 and 0 < p.confidence < 1):
        problems.append("target_ci and confidence must be in (0, 1)")
    if not 1 <= p.min_runs <= p.max_runs:
        problems.append("need 1 <= min_runs <= max_runs")
    if not (0 < p.max_time_s < math.inf and 0 <= p.warmup_s < math.inf):
        problems.append("max_time_s must be finite and > 0, warmup_s finite and >= 0")
    if p.taskset_mask:
        try:
            if int(p.taskset_mask, 16) <= 0:
                problems.append("taskset_mask must select at least one cpu")
        except ValueError:
            problems.append(f"taskset_mask {p.taskset_mask!r} is not hex")
    if p.statistic and p.statistic not in STATISTICS:
        problems.append(f"statistic must be one of {', '.join(STATISTICS)}, not {p.statistic!r}")
    if problems:
        raise DeviceError(f"profile {p.name!r} is invalid: {'; '.join(problems)}")
    return p


def load_profile(name: str) -> Profile:
    """Read one shipped profile; an unknown name lists the known ones."""
    raw = tomllib.loads(PROFILES.get(name).read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(Profile)}
    extra = set(raw) - fields
    if extra:
        raise DeviceError(f"profile {name!r} has unknown field(s) {sorted(extra)}; fix the file")
    try:
        typed = {k: v if k in _FIXED else coerce_field(k, v) for k, v in raw.items()}
    except DeviceError as exc:
        raise DeviceError(f"profile file {name}.toml: {exc}; fix the file") from None
    return _validated(Profile(name=name, **typed))


def match_profile(model: str) -> str:
    """The most specific adb profile for a phone model (``generic-android`` otherwise)."""
    for name in PROFILES:
        p = load_profile(name)
        if p.kind == "adb" and p.expected_models and p.matches_model(model):
            return name
    return "generic-android"
