"""Evaluators: picklable callables genotype → ChildResult that run inside workers.

`ProxyEvaluator` trains and evaluates a child with the training package's proxy task
(TensorFlow loads in the worker that runs it, never in the driver). `OneShotEvaluator`
scores a child with the weights it inherits from a supernet trained once (the training
package's one-shot evaluator: `prepare()` trains the supernet in a spawned process before
any worker starts, each worker loads it once). `SurrogateEvaluator`
is a fixed synthetic accuracy function for benchmarking strategies without training; its
numbers are not measurements of anything and are labelled as such in the store."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, ClassVar

from mnasfpn.registry import Registry
from mnasfpn.search.store import ChildResult
from mnasfpn.searchspace.genotype import LEVELS, NUM_CELL_INPUTS, Genotype
from mnasfpn.searchspace.spaces import pruned


@dataclass(frozen=True)
class SearchInputs:
    """What `mnasfpn search` hands every evaluator kind to build itself from (`from_search`):
    the checked data folder, the proxy and one-shot budgets, the space and repeats."""

    data: str
    proxy: Any  # mnasfpn.train.proxy_config.ProxyBudget
    oneshot: Any  # mnasfpn.train.oneshot_config.OneShotBudget
    space: str
    repeats: int
    cache_dir: str | None = None


@dataclass(frozen=True)
class ProxyEvaluator:
    kind: ClassVar[str] = "proxy"
    data: str
    budget: Any  # mnasfpn.train.proxy.ProxyBudget
    cache_dir: str | None = None

    @classmethod
    def from_search(cls, inputs: SearchInputs) -> ProxyEvaluator:
        return cls(inputs.data, inputs.proxy, inputs.cache_dir)

    def check(self, genotype: Genotype) -> None:
        """Every genotype of the search's space trains stand-alone."""

    def identity(self) -> dict[str, Any]:
        budget = asdict(self.budget) if is_dataclass(self.budget) else {"repr": repr(self.budget)}
        # how a child runs (threads, time limit) does not change what its score means
        for how in ("threads", "timeout_s"):
            budget.pop(how, None)
        return {"kind": self.kind, "data": self.data, "budget": budget}

    def __call__(self, genotype: Genotype) -> ChildResult:
        # the training package loads when an evaluator is used, not with the registry
        from mnasfpn.train.proxy import proxy_evaluate

        r = proxy_evaluate(genotype, self.data, self.budget, cache_dir=self.cache_dir)
        return ChildResult(
            map=float(r.map),
            map50=float(r.map50),
            map75=float(r.map75),
            metrics={k: float(v) for k, v in dict(r.metrics).items()},
            train_seconds=float(r.train_seconds),
            eval_seconds=float(r.eval_seconds),
            total_seconds=float(r.total_seconds),
        )


@dataclass(frozen=True)
class OneShotEvaluator:
    """One-shot scores from the supernet of (data, space, repeats, budget)."""

    kind: ClassVar[str] = "oneshot"
    data: str
    budget: Any  # mnasfpn.train.oneshot.OneShotBudget
    space: str
    repeats: int
    cache_dir: str | None = None

    @classmethod
    def from_search(cls, inputs: SearchInputs) -> OneShotEvaluator:
        return cls(inputs.data, inputs.oneshot, inputs.space, inputs.repeats, inputs.cache_dir)

    def key(self) -> Any:
        # the training package loads when an evaluator is used, not with the registry
        from mnasfpn.train.oneshot_config import SupernetKey

        return SupernetKey(self.data, self.space, self.repeats, self.budget)

    def identity(self) -> dict[str, Any]:
        # the supernet (data fingerprint, space, repeats, training) and how children are
        # scored; not the threads or the checkpoint interval
        return {"kind": self.kind, "data": self.data, "supernet": self.key().identity(),
                "scoring": self.budget.scoring_fields()}  # fmt: skip

    def check(self, genotype: Genotype) -> None:
        """One line (OneShotError) when `genotype` is outside the supernet."""
        # the training package loads when an evaluator is used, not with the registry
        from mnasfpn.train.oneshot_config import check_child

        check_child(self.space, self.repeats, genotype)

    def prepare(self, progress: bool = True) -> dict[str, Any]:
        """Train the supernet if it is not stored yet (a spawned process; resumes a killed
        training); its record."""
        # the training package loads when an evaluator is used, not with the registry
        from mnasfpn.train.oneshot import prepare_supernet

        return prepare_supernet(self.key(), self.cache_dir, progress=progress)

    def __call__(self, genotype: Genotype) -> ChildResult:
        # the training package loads when an evaluator is used, not with the registry
        from mnasfpn.train.oneshot import oneshot_score

        r = oneshot_score(genotype, self.key(), self.cache_dir)
        return ChildResult(
            map=float(r.map),
            map50=float(r.map50),
            map75=float(r.map75),
            metrics={k: float(v) for k, v in dict(r.metrics).items()},
            train_seconds=float(r.bn_seconds),  # no training: the BN re-estimation
            eval_seconds=float(r.eval_seconds),
            total_seconds=float(r.total_seconds),
        )


def surrogate_accuracy(genotype: Genotype) -> float:
    """A deterministic stand-in for proxy mAP that rewards what helps detection heads:
    capacity (expansion × kernel area × channels) and multi-scale connectivity (blocks that
    read other levels, outputs fed by intermediate blocks, distinct input levels), each with
    diminishing returns. In 0..0.4."""
    g = pruned(genotype)
    level_of = {n: LEVELS[n] for n in range(NUM_CELL_INPUTS)}
    capacity = 0.0
    cross_edges: set[tuple[int, int]] = set()
    read_levels: set[int] = set()
    fed_by_blocks = 0
    for b, block in enumerate(g.blocks):
        level_of[NUM_CELL_INPUTS + b] = block.level
        capacity += block.expansion * (block.kernel**2 / 9) * len(block.inputs)
        for i in block.inputs:
            if level_of[i] != block.level:
                cross_edges.add((level_of[i], block.level))
            read_levels.add(level_of[i])
            if g.is_output(b) and i >= NUM_CELL_INPUTS:
                fed_by_blocks += 1
        if block.merge == "se":
            capacity += 0.25 * block.expansion
    cap_term = 1 - math.exp(-capacity / 1500.0)
    conn_term = (
        0.5 * (1 - math.exp(-len(cross_edges) / 4.0))
        + 0.3 * (1 - math.exp(-fed_by_blocks / 3.0))
        + 0.2 * len(read_levels) / len(LEVELS)
    )
    width_term = 1 - math.exp(-g.channels / 40.0)
    depth_term = 1 - math.exp(-g.repeats / 2.0)
    return 0.4 * (0.4 * cap_term + 0.35 * conn_term + 0.25 * width_term) * depth_term


@dataclass(frozen=True)
class SurrogateEvaluator:
    """The synthetic accuracy as a child result (for benchmarks and tests of the search
    machinery; optional sleep to stand in for training time)."""

    kind: ClassVar[str] = "surrogate"
    seconds: float = 0.0

    @classmethod
    def from_search(cls, inputs: SearchInputs) -> SurrogateEvaluator:
        return cls()

    def check(self, genotype: Genotype) -> None:
        """Every genotype has a synthetic score."""

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": self.seconds}

    def __call__(self, genotype: Genotype) -> ChildResult:
        start = time.perf_counter()
        if self.seconds:
            time.sleep(self.seconds)
        acc = surrogate_accuracy(genotype)
        spent = time.perf_counter() - start
        return ChildResult(
            map=acc, metrics={"synthetic": 1.0}, train_seconds=spent, total_seconds=spent
        )


# Evaluator classes by the kind their identity records (a search folder's settings).
EVALUATORS: Registry[type[ProxyEvaluator] | type[OneShotEvaluator] | type[SurrogateEvaluator]] = (
    Registry(
        "evaluator",
        {e.kind: e for e in (ProxyEvaluator, OneShotEvaluator, SurrogateEvaluator)},
    )
)
# What `mnasfpn search --evaluator` offers: the surrogate is not a measurement of anything.
SEARCH_EVALUATORS = EVALUATORS.subset(
    lambda e: e is not SurrogateEvaluator,
    refuse=lambda name, _: (
        f"evaluator {name!r} is a synthetic stand-in for benchmarks, not a score; "
        "use proxy or oneshot"
    ),
)
