"""The strategies by name."""

from __future__ import annotations

from mnasfpn.registry import Registry
from mnasfpn.search.evolution import Evolution
from mnasfpn.search.ppo import PPO
from mnasfpn.search.random_search import RandomSearch
from mnasfpn.search.strategy import Strategy
from mnasfpn.searchspace.spaces import SearchSpace

STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", {s.name: s for s in (PPO, Evolution, RandomSearch)}
)


def make_strategy(
    name: str, space: SearchSpace, *, seed: int, repeats: int | None = None
) -> Strategy:
    return STRATEGIES.get(name)(space, seed=seed, repeats=repeats)
