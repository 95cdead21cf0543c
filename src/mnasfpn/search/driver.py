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
import os
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
    # The content of the --data folder the children are scored on (`data_identity`):
    # the same path regenerated in place is other data.
    data_hash: str | None = None

    def identity(self) -> dict[str, Any]:
        extra = {} if self.data_hash is None else {"data_hash": self.data_hash}
        return {
            **extra,
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
    finished_now: int  # finished by this run
    # Wall seconds of each child this run trained (submitted to result), the children
    # run at once, and how long the oldest running child has run.
    child_seconds: tuple[float, ...] = ()
    capacity: int = 1
    running_for: float | None = None

    @property
    def finished(self) -> int:
        return sum(n for s, n in self.counts.items() if s != "running")

    def eta_seconds(self) -> float | None:
        """The trials left times the mean duration of the children finished so far, over
        the children run at once: it moves when a child finishes, not while one runs (the
        running one's time is `running_for`). None before the first child finished."""
        if not self.child_seconds:
            return None
        mean = sum(self.child_seconds) / len(self.child_seconds)
        return max(0, self.trials - self.finished) * mean / max(1, self.capacity)


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


def data_identity(data: Path) -> str:
    """A digest of what a data folder holds: both annotation files' content, and the name
    and size of every file in its image folders (a COCO train file is read once per
    search start, not per child)."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        ann = data / "annotations" / f"instances_{split}.json"
        h.update(f"{split}\0".encode())
        try:
            with ann.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as exc:
            raise MnasfpnError(
                f"--data {data} needs annotations/instances_{split}.json ({exc.strerror})"
            ) from None
        images = data / split
        if images.is_dir():
            for entry in sorted(os.scandir(images), key=lambda e: e.name):
                if entry.is_file():
                    h.update(f"{entry.name}\0{entry.stat().st_size}\0".encode())
    return h.hexdigest()[:16]


def fastest_possible_ms(table: LatencyTable, space: SearchSpace, repeats: int) -> float | None:
    """A latency no architecture of `space` is predicted below: the cheapest backbone and
    predictor (they depend on the channels alone) plus the table's fixed overhead; every
    other op adds to it. None when a calibration term could subtract (a negative
    structure coefficient), so no such bound holds."""
    if table.calibration is not None and min(table.calibration.structure_coefs()) < 0:
        return None
    genotypes = []
    for c in space.channels:
        g = space.walk(lambda d, c=c: c if d.name == "channels" else d.choices[-1])
        genotypes.append(replace(g, repeats=repeats))
    parts = table.breakdown(genotypes)
    return float(min(parts["backbone"] + parts["predictor"] + parts["overhead"]))


def check_max_ms(table: LatencyTable, space: SearchSpace, repeats: int, reward: RewardSpec) -> None:
    """Refuse a --max-ms below every architecture of the space (each would be rejected:
    an empty search)."""
    if reward.max_ms is None:
        return
    floor = fastest_possible_ms(table, space, repeats)
    if floor is not None and reward.max_ms < floor:
        raise MnasfpnError(
            f"--max-ms {reward.max_ms:g} is below every architecture of space {space.name!r}: "
            f"the table predicts at least {floor:.2f} ms for any (backbone, predictor and "
            "overhead alone); raise --max-ms"
        )


def check_not_all_rejected(store: TrialStore, reward: RewardSpec) -> None:
    """A search whose every trial was over --max-ms found nothing: an error, not an
    empty frontier."""
    counts = store.counts()
    if counts and set(counts) == {"rejected"}:
        fastest = min(t.latency_ms for t in store.trials("rejected") if t.latency_ms is not None)
        raise MnasfpnError(
            f"every trial ({counts['rejected']}) was predicted slower than --max-ms "
            f"{reward.max_ms:g} (the fastest {fastest:.2f} ms): nothing was trained; raise "
            "--max-ms (a new search: add --force-new, or use another --out)"
        )


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
        changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if not force_new and changed == {"data_hash"} and old.get("data_hash") is not None:
            store.close()
            raise MnasfpnError(
                f"{folder} holds a search on other data: the --data folder's annotations or "
                "images changed since it started (regenerated in place?), so new trials "
                "would not compare with its own; start over with --force-new (the old "
                "search is kept aside) or use another --out"
            )
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
        set_aside(folder)
        store = TrialStore.open(folder)
    if store.settings() is None:
        store.set_meta({"settings": new, "created_at": now()})
    return store


# What a search writes in its folder (the store, `pareto`'s genotype files and plot):
# --force-new moves all of it aside, so nothing of the old search stays beside the new.
SEARCH_FILES = (STORE_NAME, STORE_NAME + "-wal", STORE_NAME + "-shm", "frontier", "pareto.png")


def set_aside(folder: Path) -> Path:
    """Move the folder's search (SEARCH_FILES) into folder/old-<time>/ (never deleted)."""
    stamp = now().replace(":", "").replace("+0000", "")
    aside = folder / f"old-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = folder / f"old-{stamp}-{n}"
    aside.mkdir()
    for name in SEARCH_FILES:
        src = folder / name
        if src.exists() or src.is_symlink():
            shutil.move(src, aside / name)
    return aside


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
        self._submitted: dict[int, float] = {}  # trial → when its child was submitted
        self._child_seconds: list[float] = []

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
            child_seconds=tuple(self._child_seconds),
            capacity=self.executor.capacity,
            running_for=(
                time.perf_counter() - min(self._submitted.values()) if self._submitted else None
            ),
        )

    def _submit(self, trial_id: int, proposal: Proposal, latency: float) -> None:
        self.proposals[trial_id] = proposal
        self.latency[trial_id] = latency
        self._submitted[trial_id] = time.perf_counter()
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
                since = self._submitted.pop(trial_id, None)
                if since is not None:
                    self._child_seconds.append(time.perf_counter() - since)
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
