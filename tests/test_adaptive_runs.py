"""Adaptive run counts: the quantile's confidence interval and the stopping rule, on
synthetic samples and against scipy."""

from __future__ import annotations

import inspect
import itertools
import math
import random
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats as sps

from mnasfpn.devices import DeviceError, load_profile
from mnasfpn.devices.adaptive import (
    StopRule,
    mean_half_width,
    min_samples,
    next_chunk,
    order_statistic_ranks,
    quantile_interval,
    relative_half_width,
    run_until_confident,
)


@pytest.mark.parametrize("q", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_ranks_are_the_equal_tailed_order_statistics(q: float, confidence: float) -> None:
    tail = (1 - confidence) / 2
    for n in (5, 20, 36, 41, 60, 150, 777):
        ranks = order_statistic_ranks(n, q, confidence)
        cdf = sps.binom.cdf(np.arange(n + 1), n, q)
        lows = [r for r in range(1, n + 1) if cdf[r - 1] <= tail]
        highs = [r for r in range(1, n + 1) if cdf[r - 1] >= 1 - tail]
        if not lows or not highs:
            assert ranks is None
            continue
        assert ranks == (lows[-1], highs[0])
        lo, hi = ranks
        # Coverage P(lo <= B <= hi - 1) is at least the confidence asked for.
        assert cdf[hi - 1] - cdf[lo - 1] >= confidence - 1e-12


def test_fewest_samples_for_an_interval() -> None:
    for q, confidence in [(0.1, 0.95), (0.1, 0.8), (0.25, 0.9), (0.5, 0.95)]:
        n = min_samples(q, confidence)
        assert order_statistic_ranks(n, q, confidence) is not None
        assert order_statistic_ranks(n - 1, q, confidence) is None
    # The p10 at 95% needs 36 samples: 0.9^35 > 0.025 >= 0.9^36 (the lower bound's rank 1).
    assert min_samples(0.1, 0.95) == 36


@pytest.mark.parametrize(
    ("draw", "true_p10"),
    [
        (lambda rng, shape: rng.exponential(1.0, shape), -math.log(0.9)),
        (lambda rng, shape: 2.0 + rng.lognormal(0.0, 0.5, shape), 2.0 + math.exp(0.5 * -1.2815516)),
        (lambda rng, shape: rng.uniform(3.0, 4.0, shape), 3.1),
    ],
)
def test_the_interval_covers_the_true_quantile_as_often_as_promised(draw, true_p10) -> None:
    rng = np.random.default_rng(0)
    n, trials, confidence = 60, 4000, 0.95
    lo, hi = order_statistic_ranks(n, 0.1, confidence)  # type: ignore[misc]
    s = np.sort(draw(rng, (trials, n)), axis=1)
    covered = np.mean((s[:, lo - 1] <= true_p10) & (true_p10 <= s[:, hi - 1]))
    exact = sps.binom.cdf(hi - 1, n, 0.1) - sps.binom.cdf(lo - 1, n, 0.1)
    # Monte Carlo error at 4000 trials is ~0.35%: the coverage is the binomial one.
    assert covered == pytest.approx(exact, abs=0.015) and covered >= confidence - 0.015
    # And the interval method on one sample agrees with the vectorized ranks.
    one = list(s[0])
    assert quantile_interval(one, 0.1, confidence) == (s[0, lo - 1], s[0, hi - 1])


def test_relative_half_width() -> None:
    xs = [float(x) for x in np.random.default_rng(1).normal(10.0, 0.5, 100)]
    lo, hi = quantile_interval(xs, 0.1, 0.95)  # type: ignore[misc]
    want = (hi - lo) / 2 / np.quantile(xs, 0.1)
    assert relative_half_width(xs, 0.1, 0.95) == pytest.approx(want)
    assert relative_half_width(xs[:20], 0.1, 0.95) == math.inf  # no interval yet


def _stream(draw) -> Iterator[float]:
    while True:
        yield draw()


def test_a_tight_op_stops_at_the_minimum() -> None:
    rng = random.Random(0)
    src = _stream(lambda: 0.5 * (1 + abs(rng.gauss(0, 0.001))))
    rule = StopRule(min_runs=40, max_runs=1000, target=0.01)
    got = run_until_confident(lambda k: [next(src) for _ in range(k)], rule)
    assert got.converged and got.stopped_by == "ci"
    assert got.invocations == 40 and got.half_width <= 0.01


def test_a_noisy_op_hits_the_maximum() -> None:
    rng = random.Random(0)
    src = _stream(lambda: rng.lognormvariate(0.0, 0.8))
    rule = StopRule(min_runs=40, max_runs=300, target=0.005, max_time_s=1e9)
    got = run_until_confident(lambda k: [next(src) for _ in range(k)], rule)
    assert got.stopped_by == "max_runs" and not got.converged
    assert got.invocations == 300 and got.half_width > 0.005
    # Chunks grow (no round trip per invocation), never by more than doubling.
    sizes = [len(r) for r in got.rounds]
    totals = np.cumsum(sizes)
    assert len(sizes) < 10 and all(b <= 2 * a for a, b in itertools.pairwise(totals))


def test_a_moderately_noisy_op_stops_between_the_bounds() -> None:
    rng = random.Random(2)
    src = _stream(lambda: rng.lognormvariate(0.0, 0.1))
    rule = StopRule(min_runs=40, max_runs=5000, target=0.01, max_time_s=1e9)
    got = run_until_confident(lambda k: [next(src) for _ in range(k)], rule)
    assert got.converged and 40 < got.invocations < 5000


def test_the_time_cap_stops_a_slow_model() -> None:
    now = [0.0]

    def run(k: int) -> list[float]:
        now[0] += 0.1 * k  # 100 ms an invocation
        return [100.0 * (1 + 0.2 * random.random()) for _ in range(k)]

    rule = StopRule(min_runs=10, max_runs=1000, target=0.001, max_time_s=3.0)
    got = run_until_confident(run, rule, clock=lambda: now[0])
    assert got.stopped_by == "time" and got.invocations <= 30 and now[0] <= 3.0 + 1e-9


def test_next_chunk_is_bounded() -> None:
    rule = StopRule(min_runs=40, max_runs=100, max_time_s=10.0)
    assert next_chunk(40, math.inf, rule, 0.1) == 40  # no interval yet: double
    assert next_chunk(40, 0.0101, rule, 0.1) == 10  # a near miss: +25%
    assert next_chunk(80, 0.5, rule, 0.1) == 20  # capped by max_runs
    assert next_chunk(100, 0.5, rule, 0.1) == 0
    assert next_chunk(40, 0.02, rule, 9.9) == 0  # one more would pass the time cap


def test_profile_run_policy_fields() -> None:
    p = load_profile("host")
    assert p.replace(runs="fixed").runs == "fixed"
    rule = p.replace(runs="adaptive", target_ci=0.02, min_runs=50).stop_rule("p10")
    assert (rule.quantile, rule.target, rule.min_runs) == (0.1, 0.02, 50)
    with pytest.raises(DeviceError, match="runs must be one of adaptive, fixed"):
        p.replace(runs="sometimes")
    with pytest.raises(DeviceError, match="min_runs <= max_runs"):
        p.replace(min_runs=50, max_runs=10)
    with pytest.raises(DeviceError, match="target_ci"):
        p.replace(target_ci=0.0)
    with pytest.raises(DeviceError, match="runs=fixed"):
        p.stop_rule("mean")


def test_mean_interval_matches_scipy() -> None:
    xs = [10.0, 10.3, 9.9, 10.1]
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    assert mean_half_width(xs, 0.95) == pytest.approx((hi - lo) / 2 / np.mean(xs))
    assert mean_half_width([10.0], 0.95) == math.inf


def test_rounds_of_averages_stop_when_their_mean_is_known() -> None:
    # A phone's benchmark_model runs: one average each; steady ones stop early.
    steady = iter([20.0, 20.02, 19.99, 20.01, 20.0, 20.0])
    rule = StopRule(quantile=None, min_runs=2, max_runs=10, target=0.01, max_time_s=1e9)
    got = run_until_confident(lambda k: [next(steady) for _ in range(k)], rule)
    assert got.converged and 2 <= got.invocations <= 4
    drifting = iter(20.0 * 1.05**i for i in range(100))
    got = run_until_confident(lambda k: [next(drifting) for _ in range(k)], rule)
    assert got.stopped_by == "max_runs" and got.invocations == 10


def test_show_says_how_a_table_was_timed() -> None:
    from mnasfpn.lut.show import _runs_text

    fixed = {"num_runs": 30, "warmup_runs": 10, "min_repeats": 3, "max_repeats": 20}
    assert _runs_text(fixed) == "30 runs after 10 warm-ups (3..20 rounds)"  # an older table
    adaptive = {
        **fixed, "runs": "adaptive", "warmup_s": 0.05, "min_runs": 40, "max_runs": 1000,
        "confidence": 0.95, "target_ci": 0.01, "max_time_s": 2.0,
    }  # fmt: skip
    assert _runs_text(adaptive) == (
        "40..1000 runs after 10 warm-ups (or 0.05 s), until its 95% interval is within ±1% "
        "(at most 2.0 s)"
    )


def test_validate_rounds_default_to_three_for_multi_thread_tables_only() -> None:
    from mnasfpn.lut.cli import validate_command
    from mnasfpn.lut.validate import DEFAULT_ROUNDS, MULTI_THREAD_ROUNDS, default_rounds

    (opt,) = [p for p in validate_command.params if p.name == "rounds"]
    assert opt.default is None  # validate picks by the table's threads
    assert default_rounds({"threads": 1}) == default_rounds({}) == DEFAULT_ROUNDS == 2
    assert default_rounds({"threads": 2}) == MULTI_THREAD_ROUNDS == 3


def test_build_cli_defaults_to_builds_passes() -> None:
    from mnasfpn.lut.build import DEFAULT_PASSES, build_table
    from mnasfpn.lut.cli import build_command

    (opt,) = [p for p in build_command.params if p.name == "passes"]
    assert (
        opt.default == DEFAULT_PASSES == inspect.signature(build_table).parameters["passes"].default
    )
