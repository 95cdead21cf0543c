"""The fidelity panel's bookkeeping (benchmarks/proxy_fidelity.py): strata, rank metrics,
the resumable results file and what a result's key depends on; and what
benchmarks/search_result.py reads back from a search with finalists. No training here."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_table
from mnasfpn.lut.table import LatencyTable
from mnasfpn.search.driver import Search, SearchSettings, table_identity
from mnasfpn.search.evaluators import SurrogateEvaluator, surrogate_accuracy
from mnasfpn.search.executors import InlineExecutor
from mnasfpn.search.finalists import FinalistSpec, run_finalists
from mnasfpn.search.reward import RewardSpec
from mnasfpn.search.store import ChildResult, TrialStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pf():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "proxy_fidelity", ROOT / "benchmarks" / "proxy_fidelity.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stratified_draws_one_head_per_latency_stratum(pf) -> None:  # type: ignore[no-untyped-def]
    latency = [float((i * 37) % 100) for i in range(100)]  # a permutation of 0..99
    pool = list(range(100))
    picks = pf.stratified(pool, latency, 5, seed=3)
    assert sorted(int(latency[i]) // 20 for i in picks) == [0, 1, 2, 3, 4]
    assert picks == pf.stratified(pool, latency, 5, seed=3)  # fixed by its seed
    with pytest.raises(ValueError):
        pf.stratified(pool, latency, 101, seed=0)


def test_rank_metrics(pf) -> None:  # type: ignore[no-untyped-def]
    ref = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1, "e": 0.0}
    same = pf.rank_metrics(ref, {k: 10 * v for k, v in ref.items()})
    assert same["tau"] == pytest.approx(1) and same["rho"] == pytest.approx(1)
    assert same["top3"] == 1 and same["n"] == 5
    rev = pf.rank_metrics(ref, {k: -v for k, v in ref.items()})
    assert rev["tau"] == pytest.approx(-1) and rev["top3"] == pytest.approx(1 / 3)
    assert math.isnan(pf.rank_metrics(ref, {"a": 1.0, "b": 0.0})["tau"])  # too few shared
    ceiling = pf.seed_ceiling({0: ref, 1: {k: -v for k, v in ref.items()}})
    assert ceiling["tau"] == pytest.approx(-1)


def test_results_file_resumes_and_ignores_a_torn_line(pf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "results.jsonl"
    r = pf.Results(path)
    r.add({"key": "k", "head": "h1", "seed": 0, "map": 0.1})
    r.add({"key": "k", "head": "h1", "seed": 1, "map": 0.2})
    with open(path, "a") as f:
        f.write('{"key": "k", "head": "h2", "se')  # killed mid-write
    again = pf.Results(path)
    assert again.get("k", "h1", 1)["map"] == 0.2
    assert again.get("k", "h2", 0) is None
    assert len(path.read_text().splitlines()) == 3
    for line in path.read_text().splitlines()[:2]:
        json.loads(line)


def test_budget_key_holds_what_a_score_depends_on(pf) -> None:  # type: ignore[no-untyped-def]
    base = {"steps": 100, "lr": 0.1, "threads": 1, "timeout_s": None, "seed": 0}
    k = pf.budget_key("standalone", "data1", base)
    assert k == pf.budget_key("standalone", "data1", {**base, "threads": 2, "seed": 1})
    assert k != pf.budget_key("standalone", "data1", {**base, "steps": 50})
    assert k != pf.budget_key("standalone", "data2", base)
    assert k != pf.budget_key("oneshot", "data1", base)


def test_the_committed_panel_is_fixed_and_spans_the_space(pf) -> None:  # type: ignore[no-untyped-def]
    doc = pf.load_panel(pf.DEFAULT_PANEL)
    heads = pf.panel_heads(doc)
    names = [name for _, name, _, _ in heads]
    assert len(heads) >= 12 and "paper-mnasfpn" in names and "weak-c16" in names
    assert "nasfpnlite" in doc["excluded"]
    strata = [ms for _, name, _, ms in heads if name.startswith("strat-")]
    assert strata == sorted(strata)  # one per stratum, fastest first
    assert len({hid for hid, _, _, _ in heads}) == len(heads)
    for hid, _, g, _ in heads:
        assert pf.head_id(g) == hid


# -- benchmarks/search_result.py: what it reads back from a search with finalists ----------


@dataclass(frozen=True)
class _Budget:
    seed: int = 0


@dataclass(frozen=True)
class _SeededSurrogate:
    """A stand-in for the stand-alone proxy whose score moves with the seed."""

    budget: _Budget = _Budget()

    def identity(self) -> dict[str, object]:
        return {"kind": "seeded-surrogate", "budget": {"seed": self.budget.seed}}

    def __call__(self, genotype: object) -> ChildResult:
        return ChildResult(map=surrogate_accuracy(genotype) + 0.01 * self.budget.seed)


def test_search_result_reads_the_best_finalist_under_a_latency(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "search_result", ROOT / "benchmarks" / "search_result.py"
    )
    assert spec is not None and spec.loader is not None
    sr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sr)

    table_path = tmp_path / "t.sqlite"
    make_table(table_path, ["mnasfpn"])
    table = LatencyTable.open(table_path)
    settings = SearchSettings("mnasfpn", "random", 3, RewardSpec(target_ms=100.0), 4,
                              table_identity(table), {"kind": "test"})  # fmt: skip
    folder = tmp_path / "s"
    search = Search(folder, settings, table, InlineExecutor(SurrogateEvaluator()), trials=16)
    search.run()
    search.close()
    with TrialStore.open(folder) as store:
        run_finalists(store, FinalistSpec(3, (0, 1), _SeededSurrogate()),
                      lambda: InlineExecutor(_SeededSurrogate()))  # fmt: skip
        trials = {t.id: t for t in store.trials()}
        chosen = sorted({f.trial_id for f in store.finalists()})
    lats = sorted(trials[i].latency_ms for i in chosen)
    out = sr.summarize_search(folder, lats[-1])  # every finalist is at or below it
    assert out["trials"] == 16 and out["scored"] + out["failed"] <= 16
    assert sorted(r["trial"] for r in out["finalists"]) == chosen
    best = max(out["finalists"], key=lambda r: r["map"])
    assert out["best_under_paper"] == best
    assert best["map"] == pytest.approx(trials[best["trial"]].map + 0.005)  # mean of seeds 0, 1
    assert sr.summarize_search(folder, lats[0] - 1e-6)["best_under_paper"] is None
