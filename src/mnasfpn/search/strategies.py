"""The strategies by name."""

from __future__ import annotations

from mnasfpn.errors import MnasfpnError
from mnasfpn.search.evolution import Evolution
from mnasfpn.search.ppo import PPO
from mnasfpn.search.random_search import RandomSearch
from mnasfpn.search.strategy import Strategy
from mnasfpn.searchspace.spaces import SearchSpace

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (PPO, Evolution, RandomSearch)}


def make_strategy(
    name: str, space: SearchSpace, *, seed: int, repeats: int | None = None
) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise MnasfpnError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return cls(space, seed=seed, repeats=repeats)
