"""Random search: every decision uniform over its choices (the baseline the others must beat)."""

from __future__ import annotations

from collections.abc import Sequence

from mnasfpn.search.strategy import Outcome, Proposal, Strategy


class RandomSearch(Strategy):
    name = "random"

    def propose(self, n: int) -> list[Proposal]:
        return [self.proposal(self.sample_uniform()) for _ in range(n)]

    def learn(self, outcomes: Sequence[Outcome]) -> None:
        """Random search ignores results."""
