"""Device profiles: TOML data files shipped in ``mnasfpn/devices/profiles``."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mnasfpn.devices.errors import DeviceError

_KINDS = ("host", "adb")


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

    def matches_model(self, model: str) -> bool:
        """Empty ``expected_models`` accepts any phone (the generic profile)."""
        return not self.expected_models or model.strip() in self.expected_models

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed (e.g. fewer runs in a quick check)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise DeviceError(
                f"unknown profile field(s) {sorted(unknown)}; "
                f"valid: {[f.name for f in dataclasses.fields(self)]}"
            )
        return _validated(dataclasses.replace(self, **changes))

    def mask(self) -> str:
        """The taskset mask in hex, derived from ``core`` when not given."""
        if self.taskset_mask:
            return self.taskset_mask
        return format(1 << max(self.core, 0), "x")


def _profile_dir() -> Any:
    return resources.files("mnasfpn.devices").joinpath("profiles")


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(
        p.name.removesuffix(".toml") for p in _profile_dir().iterdir() if p.name.endswith(".toml")
    )


def _validated(p: Profile) -> Profile:
    problems = []
    if p.kind not in _KINDS:
        problems.append(f"kind must be one of {_KINDS}")
    if p.threads < 1 or p.num_runs < 1 or p.warmup_runs < 0:
        problems.append("threads and num_runs must be >= 1, warmup_runs >= 0")
    if not 1 <= p.min_repeats <= p.max_repeats:
        problems.append("need 1 <= min_repeats <= max_repeats")
    if p.stability_tolerance <= 0 or p.cooldown_s < 0:
        problems.append("stability_tolerance must be > 0 and cooldown_s >= 0")
    if p.taskset_mask:
        try:
            if int(p.taskset_mask, 16) <= 0:
                problems.append("taskset_mask must select at least one cpu")
        except ValueError:
            problems.append(f"taskset_mask {p.taskset_mask!r} is not hex")
    if problems:
        raise DeviceError(f"profile {p.name!r} is invalid: {'; '.join(problems)}")
    return p


def load_profile(name: str) -> Profile:
    """Read one shipped profile; an unknown name lists the known ones."""
    known = list_profiles()
    if name not in known:
        raise DeviceError(f"unknown device {name!r}; known devices: {', '.join(known)}")
    raw = tomllib.loads(_profile_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(Profile)}
    extra = set(raw) - fields
    if extra:
        raise DeviceError(f"profile {name!r} has unknown field(s) {sorted(extra)}; fix the file")
    raw["expected_models"] = tuple(raw.get("expected_models", ()))
    return _validated(Profile(name=name, **raw))


def match_profile(model: str) -> str:
    """The most specific adb profile for a phone model (``generic-android`` otherwise)."""
    for name in list_profiles():
        p = load_profile(name)
        if p.kind == "adb" and p.expected_models and p.matches_model(model):
            return name
    return "generic-android"
