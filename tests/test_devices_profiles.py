"""Profiles as data files, and the repeat-until-stable statistics."""

from __future__ import annotations

import itertools

import pytest

from mnasfpn.devices import (
    DEVICE_KINDS,
    PROFILES,
    DeviceError,
    DeviceOptions,
    Profile,
    load_profile,
    match_profile,
    open_device,
)
from mnasfpn.devices.stats import dispersion, repeat_until_stable, summarize
from mnasfpn.devices.sysinfo import parse_cpu_count, parse_temperature_c


def test_shipped_profiles() -> None:
    assert PROFILES.names() == [
        "generic-android",
        "host",
        "host-xnnpack",
        "host-xnnpack-2t",
        "pixel1",
        "pixel4",
    ]
    p1, p4 = load_profile("pixel1"), load_profile("pixel4")
    assert p1.kind == p4.kind == "adb"
    assert p1.expected_models == ("Pixel", "Pixel XL") and p1.core in (2, 3)
    assert int(p1.mask(), 16) == 1 << p1.core
    assert p4.core == 7 and p4.mask() == "80"
    assert load_profile("host").kind == "host"
    # The deployment settings: builtin kernels (the paper's 2019 TFLite), XNNPACK at one
    # thread (an app's default) and at two.
    kernels = {n: (load_profile(n).use_xnnpack, load_profile(n).threads) for n in PROFILES.names()}
    assert kernels["host"] == (False, 1) and kernels["host-xnnpack"] == (True, 1)
    assert kernels["host-xnnpack-2t"] == (True, 2)
    for name in PROFILES.names():
        p = load_profile(name)
        assert p.threads == 1 or name == "host-xnnpack-2t"
        assert 1 <= p.min_repeats <= p.max_repeats
        assert p.kind in DEVICE_KINDS  # checked where a device is opened, so here for all


def test_a_profile_of_an_unknown_kind_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Profile(name="quantum", kind="qpu")
    monkeypatch.setattr(DeviceOptions, "profile", lambda self: fake)
    with pytest.raises(DeviceError, match=r"^unknown device kind 'qpu'; known: host, adb$"):
        DeviceOptions("quantum").open()


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("Pixel", "pixel1"),
        ("Pixel XL", "pixel1"),
        ("Pixel 4 XL", "pixel4"),
        ("Pixel 4", "pixel4"),
        ("SM-G960F", "generic-android"),
        ("Pixel 3", "generic-android"),
    ],
)
def test_match_profile(model: str, profile: str) -> None:
    assert match_profile(model) == profile
    assert load_profile("generic-android").matches_model(model)


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(DeviceError) as err:
        open_device("pixel9")
    msg = str(err.value)
    assert "\n" not in msg
    assert "pixel9" in msg
    for name in PROFILES.names():
        assert name in msg


def test_invalid_overrides_are_rejected() -> None:
    p = load_profile("pixel4")
    with pytest.raises(DeviceError, match="min_repeats"):
        p.replace(min_repeats=5, max_repeats=2)
    with pytest.raises(DeviceError, match="not hex"):
        p.replace(taskset_mask="zz")
    with pytest.raises(DeviceError, match="unknown profile field"):
        p.replace(nmu_runs=3)
    assert p.replace(num_runs=7).num_runs == 7


def test_host_rejects_phone_options() -> None:
    with pytest.raises(DeviceError, match="phones only"):
        open_device("host", serial="abc")


def test_repeat_stops_when_round_medians_agree() -> None:
    rounds = iter([[20.0, 20.0], [10.0, 10.0], [10.0, 10.1], [10.0, 10.0], [50.0, 50.0]])
    got, n, stable = repeat_until_stable(
        lambda: next(rounds), min_repeats=2, max_repeats=10, tolerance=0.01
    )
    # Rounds 1-2 disagree (20 vs 10); rounds 2-3 agree within 1 %.
    assert stable and n == 3 and sum(len(r) for r in got) == 6


def test_repeat_hits_the_cap_on_drifting_timings() -> None:
    counter = itertools.count(1)
    got, n, stable = repeat_until_stable(
        lambda: [float(next(counter)) ** 3], min_repeats=2, max_repeats=6, tolerance=0.001
    )
    assert (n, stable, len(got)) == (6, False, 6)


def test_slow_drift_is_not_called_stable() -> None:
    # Each round 3 % slower than the last (a phone heating up): never within 2 %.
    level = iter(100.0 * 1.03**i for i in range(100))
    _, n, stable = repeat_until_stable(
        lambda: [next(level)] * 5, min_repeats=3, max_repeats=12, tolerance=0.02
    )
    assert (n, stable) == (12, False)


def test_repeat_respects_min_repeats() -> None:
    _, n, stable = repeat_until_stable(lambda: [1.0], min_repeats=4, max_repeats=9, tolerance=0.5)
    assert (n, stable) == (4, True)


def test_summary_statistics() -> None:
    r = summarize("m", [4.0, 1.0, 2.0, 3.0, 100.0], repeats=1, stable=True)
    assert r.ok and r.median_ms == 3.0 and r.min_ms == 1.0 and r.runs == 5
    assert r.dispersion == pytest.approx((4.0 - 2.0) / 3.0)
    assert dispersion([5.0]) == 0.0
    assert not summarize("m", [], repeats=0, stable=False).ok


def test_sysfs_parsers() -> None:
    assert parse_cpu_count("0-7") == 8
    assert parse_cpu_count("0-3,6") == 5
    assert parse_cpu_count("") is None
    assert parse_temperature_c("36500") == 36.5
    assert parse_temperature_c("41") == 41.0
    assert parse_temperature_c("n/a") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("False", False), ("false", False), ("0", False), ("no", False), ("off", False),
     ("True", True), ("1", True), ("yes", True)],
)  # fmt: skip
def test_bool_overrides_are_parsed_not_truthy(text: str, value: bool) -> None:
    # "False" used to stay a (truthy) string: XNNPACK ran while the table said it did not.
    assert load_profile("host").replace(use_xnnpack=text).use_xnnpack is value


def test_overrides_are_typed_by_the_schema() -> None:
    p = load_profile("pixel1")
    assert p.replace(num_runs="20").num_runs == 20
    assert p.replace(cooldown_s="2.5").cooldown_s == 2.5
    assert p.replace(cooldown_s=3).cooldown_s == 3.0
    assert p.replace(expected_models="Pixel, Pixel XL").expected_models == ("Pixel", "Pixel XL")
    bad_values = [("num_runs", 1.5), ("num_runs", "1.5"), ("num_runs", "abc"),
                  ("use_xnnpack", 1), ("use_xnnpack", "maybe"), ("threads", True)]  # fmt: skip
    for field, bad in bad_values:
        with pytest.raises(DeviceError, match=f"profile field {field} takes"):
            p.replace(**{field: bad})
    with pytest.raises(DeviceError, match="cannot be overridden"):
        p.replace(kind="host")
    with pytest.raises(DeviceError, match="cooldown_s finite"):
        p.replace(cooldown_s="inf")
    with pytest.raises(DeviceError, match="core must be"):
        p.replace(core=-3)


def test_parse_overrides_from_the_command_line() -> None:
    from mnasfpn.devices.profiles import parse_overrides

    got = parse_overrides(["use_xnnpack=False", "num_runs=7", "stability_tolerance=0.05"])
    assert got == {"use_xnnpack": False, "num_runs": 7, "stability_tolerance": 0.05}
    with pytest.raises(DeviceError, match="given twice"):
        parse_overrides(["num_runs=1", "num_runs=2"])
    with pytest.raises(DeviceError, match="expected FIELD=VALUE"):
        parse_overrides(["=3"])
