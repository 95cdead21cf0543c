"""The search loop: propose, predict latency (in batches), reject or reuse, run children,
learn from each result as it arrives, and commit every step to the trial store.

Asynchronous: whenever a worker is free the strategy proposes from what it knows now;
each finished child is learned from at once (PPO buffers them into batches, see ppo.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.enumerate import space_keys
from mnasfpn.lut.table import LatencyTable
from mnasfpn.search.executors import Executor
from mnasfpn.search.reward import RewardSpec
from mnasfpn.search.store import (
    STORE_NAME,
    Checkpoint,
    ChildResult,
    TrialStore,
    genotype_key,
    now,
)
from mnasfpn.search.strategies import make_strategy
from mnasfpn.search.strategy import Outcome, Proposal, Strategy
from mnasfpn.searchspace.genotype import Genotype, GenotypeError
from mnasfpn.searchspace.spaces import SearchSpace, get_space

# A trial still running after this many starts (the search was killed while it ran each
# time, perhaps because of it) is recorded as failed instead of run again.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class SearchSettings:
    """What defines a search: resuming with other settings would mix incomparable trials."""

    space: str
    strategy: str
    seed: int
    reward: RewardSpec
    repeats: int
    table_hash: str
    evaluator: dict[str, Any]
    seed_arch: Genotype | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "strategy": self.strategy,
            "seed": self.seed,
            "w": self.reward.w,
            "target_ms": self.reward.target_ms,
            "max_ms": self.reward.max_ms,
            "repeats": self.repeats,
            "table_hash": self.table_hash,
            "evaluator": self.evaluator,
            "seed_arch": None if self.seed_arch is None else genotype_key(self.seed_arch),
        }


@dataclass
class Progress:
    """A snapshot for the live display (see `TrialStore.summary`)."""

    trials: int
    counts: dict[str, int]
    cached: int
    best: tuple[int, float, float, float] | None  # id, reward, mAP, latency
    bands: list[tuple[float, float]]
    band_best: list[float | None]
    elapsed: float
    finished_now: int  # finished by this run (for the rate)

    @property
    def finished(self) -> int:
        return sum(n for s, n in self.counts.items() if s != "running")

    def eta_seconds(self) -> float | None:
        if self.finished_now <= 0 or self.elapsed <= 0:
            return None
        return max(0, self.trials - self.finished) * self.elapsed / self.finished_now


def latency_bands(target_ms: float) -> list[tuple[float, float]]:
    """Latency bands around the target for 'best mAP at each latency'."""
    edges = [0.0, 0.8 * target_ms, target_ms, 1.2 * target_ms, float("inf")]
    return list(itertools.pairwise(edges))


def table_identity(table: LatencyTable) -> str:
    """A hash of what the table predicts with: settings, entries and calibration."""
    doc = {
        "settings": table.config.__dict__,  # the key keeps existing searches' hashes
        "latencies": sorted(table.latencies.items()),
        "calibration": None if table.calibration is None else table.calibration.to_dict(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def check_table_covers(table: LatencyTable, space: SearchSpace) -> None:
    config = table.config
    need = space_keys(
        space,
        input_size=config.input_size,
        backbone=config.backbone,
        predictor=config.predictor,
        num_classes=config.num_classes,
    )
    missing = sorted(need - set(table.latencies))
    if missing:
        raise MnasfpnError(
            f"{table.path} lacks {len(missing)} ops of space {space.name!r} (e.g. {missing[0]}); "
            f"add them with mnasfpn-lut build --space {space.name} --out {table.path}"
        )


def adopt_seed(space: SearchSpace, genotype: Genotype, repeats: int) -> Genotype:
    """A known cell (say paper-mnasfpn) as a genotype of `space`, or a one-line error."""
    if genotype.sdo != space.sdo:
        raise MnasfpnError(
            f"seed architecture {genotype.name or ''} has sdo={genotype.sdo}, space "
            f"{space.name!r} searches with sdo={space.sdo}"
        )
    g = replace(genotype, space=space.name, repeats=repeats)
    try:
        space.validate(g, source="--seed-arch")
        space.encode(g)
    except GenotypeError as exc:
        raise MnasfpnError(f"{exc} (the seed must be a cell of --space {space.name})") from None
    return g


def _change(key: str, old: Any, new: Any) -> str:
    """'w -0.3 → -0.5' for short values; just the name for a genotype or a budget."""
    if all(
        v is None or (isinstance(v, int | float | str) and len(str(v)) <= 24) for v in (old, new)
    ):
        return f"{key} {old!r} → {new!r}"
    return f"{key} differs"


def open_store(folder: Path, settings: SearchSettings, *, force_new: bool) -> TrialStore:
    """The folder's trial store for these settings; a folder made with other settings is
    refused, or with `force_new` moved aside (never deleted) and started afresh."""
    store = TrialStore.open(folder)
    old = store.settings()
    new = settings.identity()
    if old is not None and old != new:
        if not force_new:
            diff = ", ".join(
                _change(k, old.get(k), new.get(k))
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            store.close()
            raise MnasfpnError(
                f"{folder} holds a search with other settings ({diff}); rerun with the same "
                "settings to resume it, or add --force-new to start over"
            )
        store.close()
        stamp = now().replace(":", "").replace("+0000", "")
        for suffix in ("", "-wal", "-shm"):
            src = folder / (STORE_NAME + suffix)
            if src.exists():
                shutil.move(src, folder / f"trials.{stamp}.sqlite{suffix}")
        store = TrialStore.open(folder)
    if store.settings() is None:
        store.set_meta({"settings": new, "created_at": now()})
    return store


class Search:
    def __init__(
        self,
        folder: Path,
        settings: SearchSettings,
        table: LatencyTable,
        executor: Executor,
        *,
        trials: int,
        force_new: bool = False,
        strategy: Strategy | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        if trials < 1:
            raise MnasfpnError(f"--trials must be at least 1, got {trials}")
        self.folder = folder
        self.settings = settings
        self.space = get_space(settings.space)
        self.table = table
        self.table_id = (str(Path(table.path).resolve()), settings.table_hash)
        self.executor = executor
        self.trials = trials
        self.strategy = strategy or make_strategy(
            settings.strategy, self.space, seed=settings.seed, repeats=settings.repeats
        )
        self.store = open_store(folder, settings, force_new=force_new)
        self.on_progress = on_progress
        config = table.config
        self.store.set_meta(
            {
                "table": {
                    "path": self.table_id[0],
                    "hash": self.table_id[1],
                    "input_size": config.input_size,
                    "num_classes": config.num_classes,
                    "alpha": config.alpha,
                    "depth": config.depth,
                    "device": table.meta.get("device"),
                }
            }
        )
        self.proposals: dict[int, Proposal] = {}
        self.latency: dict[int, float] = {}
        self._started = time.perf_counter()
        self._finished_before = 0
        self._arrays_saved: str | None = None

    # -- helpers ------------------------------------------------------------------------

    def _checkpoint(self) -> Checkpoint:
        version = self.strategy.arrays_version()
        fresh = version is None or version != self._arrays_saved
        state, arrays = self.strategy.save_parts(arrays=fresh)
        self._arrays_saved = version
        return Checkpoint(self.strategy.name, state, arrays, version)

    def _restore(self) -> None:
        ck = self.store.checkpoint()
        if ck is not None:
            self.strategy.restore_parts(ck.state, ck.arrays)
            self._arrays_saved = ck.arrays_version

    def _progress(self) -> Progress:
        bands = latency_bands(self.settings.reward.target_ms)
        summary = self.store.summary(bands)
        counts = summary["counts"]
        finished = sum(n for s, n in counts.items() if s != "running")
        return Progress(
            trials=self.trials,
            counts=counts,
            cached=summary["cached"],
            best=summary["best"],
            bands=bands,
            band_best=summary["bands"],
            elapsed=time.perf_counter() - self._started,
            finished_now=finished - self._finished_before,
        )

    def _submit(self, trial_id: int, proposal: Proposal, latency: float) -> None:
        self.proposals[trial_id] = proposal
        self.latency[trial_id] = latency
        self.executor.submit(trial_id, proposal.genotype)

    def _resume_running(self) -> None:
        for t in self.store.trials("running"):
            proposal = Proposal(t.decisions, t.genotype, t.info)
            if t.attempts >= MAX_ATTEMPTS:
                error = f"interrupted {t.attempts} times while running; not run again"
                self._finish(t.id, proposal, ChildResult(map=None, error=error), t.latency_ms)
                continue
            assert t.latency_ms is not None
            self.store.start_attempt(t.id)
            self._submit(t.id, proposal, t.latency_ms)

    def _finish(
        self, trial_id: int, proposal: Proposal, result: ChildResult, latency: float | None
    ) -> None:
        reward = None
        if result.error is None:
            if result.map is None or not math.isfinite(result.map) or latency is None:
                error = f"child returned no usable mAP ({result.map})"
                result = ChildResult(**{**result.__dict__, "error": error})
            else:
                reward = self.settings.reward.reward(result.map, latency)
        self.strategy.learn([Outcome(proposal, reward)])
        self.store.finish(trial_id, result, reward, self._checkpoint())

    def _propose(self, n: int, first: bool) -> None:
        proposals: list[Proposal] = []
        if first and self.settings.seed_arch is not None:
            seed = self.strategy.adopt(self.space.encode(self.settings.seed_arch))
            seed.info["seed"] = True
            proposals.append(seed)
        proposals += self.strategy.propose(n - len(proposals))
        breakdown = self.table.breakdown([p.genotype for p in proposals])
        rows: list[dict[str, Any]] = []
        submit: list[int] = []
        learned: list[Outcome] = []
        for k, p in enumerate(proposals):
            parts = {name: float(v[k]) for name, v in breakdown.items()}
            latency = parts["total"]
            row: dict[str, Any] = {
                "status": "running",
                "genotype": p.genotype,
                "decisions": p.indices,
                "info": p.info,
                "latency_ms": latency,
                "breakdown": parts,
            }
            earlier = self.store.finished_by_key(genotype_key(p.genotype))
            if self.settings.reward.rejects(latency):
                row.update(status="rejected", error=f"predicted {latency:.1f} ms > --max-ms")
                # over the limit: the learners see reward 0, so they learn to avoid it
                learned.append(Outcome(p, 0.0))
            elif earlier is not None and earlier.map is not None:
                reward = self.settings.reward.reward(earlier.map, latency)
                row.update(
                    status="done",
                    map=earlier.map,
                    map50=earlier.map50,
                    map75=earlier.map75,
                    metrics=earlier.metrics,
                    reward=reward,
                    cached_from=earlier.id,
                )
                learned.append(Outcome(p, reward))
            else:
                submit.append(k)
            rows.append(row)
        # learn from the finished-at-once ones before the checkpoint that records them
        self.strategy.learn(learned)
        ids = self.store.add_proposals(rows, self.table_id, self._checkpoint())
        for k in submit:
            self._submit(ids[k], proposals[k], rows[k]["latency_ms"])

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> Progress:
        self._restore()
        counts = self.store.counts()
        first = sum(counts.values()) == 0
        self._started = time.perf_counter()
        self._finished_before = sum(n for s, n in counts.items() if s != "running")
        self._resume_running()
        last_shown = 0.0
        while True:
            counts = self.store.counts()
            total = sum(counts.values())
            if total - counts.get("running", 0) >= self.trials:
                break
            free = self.executor.capacity - self.executor.in_flight()
            n = min(free, self.trials - total)
            if n > 0:
                self._propose(n, first)
                first = False
                continue
            for trial_id, result in self.executor.wait(timeout=1.0):
                proposal, latency = self.proposals.pop(trial_id), self.latency.pop(trial_id)
                self._finish(trial_id, proposal, result, latency)
            if self.on_progress is not None and time.perf_counter() - last_shown > 0.5:
                self.on_progress(self._progress())
                last_shown = time.perf_counter()
        final = self._progress()
        if self.on_progress is not None:
            self.on_progress(final)
        return final

    def close(self) -> None:
        self.executor.close()
        self.store.close()
