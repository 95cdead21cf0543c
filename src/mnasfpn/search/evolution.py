"""Regularized (aging) evolution (Real et al. 2019): a population of the most recent
children; a parent is the best of a random tournament; its child changes one decision.
The oldest member dies, whatever its reward, so lucky evaluations do not live forever."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mnasfpn.search.strategy import Outcome, Proposal, Strategy
from mnasfpn.searchspace.spaces import Decision, SearchSpace

# A mutation of a decision that only changes a pruned block leaves the child equal to its
# parent; redraw a few times for a child that differs.
_MUTATION_TRIES = 20


class Evolution(Strategy):
    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int,
        repeats: int | None = None,
        population: int = 50,
        tournament: int = 10,
    ) -> None:
        super().__init__(space, seed=seed, repeats=repeats)
        self.population_size = population
        self.tournament = min(tournament, population)
        # (indices, reward), oldest first
        self.population: list[tuple[tuple[int, ...], float]] = []

    def propose(self, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            if len(self.population) < self.population_size:
                out.append(self.proposal(self.sample_uniform()))
            else:
                out.append(self.mutate(self.select_parent()))
        return out

    def select_parent(self) -> tuple[int, ...]:
        picks = self.rng.choice(len(self.population), size=self.tournament, replace=False)
        best = max(picks.tolist(), key=lambda i: self.population[i][1])
        return self.population[best][0]

    def mutate(self, parent: tuple[int, ...]) -> Proposal:
        parent_genotype = self.space.canonical(parent, repeats=self.repeats)
        child = self.proposal(parent)
        for _ in range(_MUTATION_TRIES):
            child = self.proposal(self.mutated(parent))
            if child.genotype != parent_genotype:
                break
        return child

    def mutated(self, parent: Sequence[int]) -> tuple[int, ...]:
        """Change one decision at random; later decisions keep the parent's value where it
        is still allowed (the decisions offered can depend on earlier ones) or are redrawn."""
        decisions = self.space.decode_decisions(parent)
        values = {d.name: d.choices[i] for d, i in zip(decisions, parent, strict=True)}
        mutable = [j for j, d in enumerate(decisions) if len(d.choices) > 1]
        target = decisions[int(self.rng.choice(mutable))].name
        out: list[int] = []

        def pick(d: Decision) -> int | str:
            if d.name == target:
                others = [i for i, c in enumerate(d.choices) if c != values[d.name]]
                i = int(self.rng.choice(others))
            elif d.name in values and values[d.name] in d.choices:
                i = d.choices.index(values[d.name])
            else:
                i = self.pick_uniform(d)
            out.append(i)
            return d.choices[i]

        self.space.walk(pick)
        return tuple(out)

    def learn(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            if o.reward is None:
                continue
            self.population.append((o.proposal.indices, float(o.reward)))
            if len(self.population) > self.population_size:
                self.population.pop(0)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["population"] = [[list(ix), r] for ix, r in self.population]
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.population = [(tuple(ix), float(r)) for ix, r in state["population"]]
