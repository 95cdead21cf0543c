"""Finalists: the K best frontier points of a search (a one-shot search's guesses),
retrained stand-alone by the proxy with several seeds, recorded in the trial store beside
their search scores; the frontier a search then reports is the finalists'.

Each (trial, seed) is a row from the moment it is submitted (status `running`); a search
killed while finalists train resumes them with the same command: finished ones are kept,
running ones run again (at most `MAX_ATTEMPTS` starts), none is counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.search.executors import Executor
from mnasfpn.search.frontier import frontier
from mnasfpn.search.store import Finalist, Trial, TrialStore

MAX_ATTEMPTS = 3
META = "finalists"


@dataclass(frozen=True)
class FinalistSpec:
    k: int
    seeds: tuple[int, ...]
    evaluator: Any  # a ProxyEvaluator; its budget's seed is replaced by each seed

    def identity(self) -> dict[str, Any]:
        ident = dict(self.evaluator.identity())
        budget = dict(ident.get("budget", {}))
        budget.pop("seed", None)
        return {**ident, "budget": budget}

    def seeded(self, seed: int) -> Any:
        ev = self.evaluator
        if not is_dataclass(ev) or not is_dataclass(ev.budget):
            raise MnasfpnError("finalists need a proxy evaluator with a seeded budget")
        return replace(ev, budget=replace(ev.budget, seed=seed))


def choose(trials: list[Trial], k: int) -> list[Trial]:
    """The `k` best frontier points by reward (all of the frontier when it is smaller)."""
    front = frontier(trials)
    front.sort(key=lambda t: (-(t.reward if t.reward is not None else -math.inf), t.id))
    return front[:k]


def check_settings(store: TrialStore, spec: FinalistSpec) -> None:
    """Finalists retrained under another stand-alone budget are not comparable: refuse."""
    old = store.meta().get(META)
    new = spec.identity()
    if old is not None and old != new:
        raise MnasfpnError(
            f"{store.path.parent} holds finalists retrained under other proxy settings; rerun "
            "with the same --proxy-* settings, or use another --out"
        )
    if old is None:
        store.set_meta({META: new})


def run_finalists(
    store: TrialStore,
    spec: FinalistSpec,
    get_executor: Callable[[], Executor],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Finalist]:
    """Retrain the chosen trials with every seed not done yet (in the executor
    `get_executor()` gives, asked for only when something is left to train); returns every
    finalist row."""
    check_settings(store, spec)
    chosen = choose(store.trials(), spec.k)
    have = {(f.trial_id, f.seed): f for f in store.finalists()}
    todo: list[tuple[Trial, int]] = []
    for t in chosen:
        for seed in spec.seeds:
            f = have.get((t.id, seed))
            if f is not None and f.status != "running":
                continue
            if f is not None and f.attempts >= MAX_ATTEMPTS:
                store.fail_finalist(t.id, seed, f"interrupted {f.attempts} times while "
                                                "running; not run again")  # fmt: skip
                continue
            todo.append((t, seed))
    total = len(chosen) * len(spec.seeds)
    if todo:
        store.start_finalists([(t.id, seed) for t, seed in todo])
    if not todo:
        return store.finalists()
    executor = get_executor()
    # Executor tasks are numbered; a finalist's number is its place in `todo`.
    for n, (t, seed) in enumerate(todo):
        executor.submit(n, t.genotype, spec.seeded(seed))
    left = len(todo)
    while left:
        for n, result in executor.wait(timeout=1.0):
            t, seed = todo[n]
            store.finish_finalist(t.id, seed, result)
            left -= 1
        if on_progress is not None:
            on_progress(total - left, total)
    return store.finalists()


@dataclass(frozen=True)
class FinalistScore:
    """A trial's stand-alone retrainings, summarized."""

    mean: float
    std: float
    n: int
    failed: int


def summarize(finalists: list[Finalist]) -> dict[int, FinalistScore]:
    """Per trial id: the mean and standard deviation of its finished seeds' mAP."""
    by_trial: dict[int, list[Finalist]] = {}
    for f in finalists:
        by_trial.setdefault(f.trial_id, []).append(f)
    out = {}
    for trial_id, rows in by_trial.items():
        maps = [f.map for f in rows if f.status == "done" and f.map is not None]
        failed = sum(1 for f in rows if f.status == "failed")
        if maps:
            mean = sum(maps) / len(maps)
            std = math.sqrt(sum((m - mean) ** 2 for m in maps) / len(maps))
            out[trial_id] = FinalistScore(mean, std, len(maps), failed)
    return out
