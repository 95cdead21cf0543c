"""The search: strategies, the PPO controller, the trial store and resuming, failures,
rejection, seeding, bad input and the frontier, on a fabricated latency table."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_table
from mnasfpn.cli import main
from mnasfpn.errors import MnasfpnError
from mnasfpn.lut.table import LatencyTable
from mnasfpn.search.driver import (
    Search,
    SearchSettings,
    adopt_seed,
    check_table_covers,
    table_identity,
)
from mnasfpn.search.evaluators import SurrogateEvaluator, surrogate_accuracy
from mnasfpn.search.executors import InlineExecutor
from mnasfpn.search.frontier import frontier
from mnasfpn.search.pareto import load_run
from mnasfpn.search.ppo import PPO, PPOConfig
from mnasfpn.search.random_search import RandomSearch
from mnasfpn.search.reward import RewardSpec
from mnasfpn.search.store import ChildResult, TrialStore
from mnasfpn.search.strategies import STRATEGIES, make_strategy
from mnasfpn.search.strategy import Outcome, Proposal, unpack_state
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.genotype_json import load_genotype
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES, SearchSpace, get_space, pruned

SEARCH_SPACES = [n for n, s in SPACES.items() if s.fixed is None]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lut") / "t.sqlite"
    make_table(path, SEARCH_SPACES)
    return path


@pytest.fixture(scope="module")
def table(table_path: Path) -> LatencyTable:
    return LatencyTable.open(table_path)


def settings_for(
    table: LatencyTable,
    strategy: str = "random",
    space: str = "mnasfpn",
    *,
    reward: RewardSpec | None = None,
    seed_arch: Genotype | None = None,
    evaluator: dict | None = None,
) -> SearchSettings:
    return SearchSettings(
        space=space,
        strategy=strategy,
        seed=0,
        reward=reward or RewardSpec(target_ms=100.0),
        repeats=get_space(space).repeats,
        table_hash=table_identity(table),
        evaluator=evaluator or {"kind": "test"},
        seed_arch=seed_arch,
    )


def run_search(folder: Path, table: LatencyTable, evaluator, trials: int, **kw) -> Search:
    search = Search(
        folder,
        kw.pop("settings", None) or settings_for(table, **kw),
        table,
        InlineExecutor(evaluator),
        trials=trials,
    )
    search.run()
    search.close()
    return search


def stored(folder: Path) -> list[tuple]:
    con = sqlite3.connect(folder / "trials.sqlite")
    rows = con.execute(
        "SELECT id, status, genotype, reward, latency_ms, error FROM trials ORDER BY id"
    ).fetchall()
    con.close()
    return rows


# -- reward ----------------------------------------------------------------------------


def test_reward_is_map_times_latency_ratio_power() -> None:
    spec = RewardSpec(w=-0.3, target_ms=80.0, max_ms=120.0)
    assert spec.reward(0.3, 80.0) == pytest.approx(0.3)
    assert spec.reward(0.3, 160.0) == pytest.approx(0.3 * 2**-0.3)
    assert spec.rejects(121.0) and not spec.rejects(120.0)
    assert not RewardSpec().rejects(1e9)
    with pytest.raises(MnasfpnError, match="--target-ms must be a positive number"):
        RewardSpec(target_ms=0)


# -- strategies ------------------------------------------------------------------------


@pytest.mark.parametrize("space", SEARCH_SPACES)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_proposes_valid_genotypes_of_its_space(strategy: str, space: str) -> None:
    sp = get_space(space)
    s = make_strategy(strategy, sp, seed=3)
    if strategy == "evolution":
        s.population_size, s.tournament = 8, 3  # type: ignore[attr-defined]
    if strategy == "ppo":
        s.cfg = replace(s.cfg, batch=8)  # type: ignore[attr-defined]
    for _round in range(3):
        proposals = s.propose(8)
        assert len(proposals) == 8
        for p in proposals:
            sp.validate(p.genotype)
            assert p.genotype.space == space
            assert p.genotype == pruned(sp.decode(p.indices))
            assert pruned(p.genotype) == p.genotype
        s.learn([Outcome(p, surrogate_accuracy(p.genotype)) for p in proposals])
    if strategy == "ppo":
        assert s.updates == 3  # type: ignore[attr-defined]


def test_evolution_child_differs_from_its_parent_in_one_decision() -> None:
    sp = get_space("mnasfpn")
    evo = make_strategy("evolution", sp, seed=1)
    parent = evo.sample_uniform()
    for _ in range(20):
        child = evo.mutated(parent)  # type: ignore[attr-defined]
        # One decision takes another value; a later one only differs where the change
        # took the parent's value away: the block's other input slot, given the node the
        # mutated slot now reads.
        was, now = _values(sp, parent), _values(sp, child)
        assert was.keys() == now.keys()
        changed = [name for name in was if was[name] != now[name]]
        assert 1 <= len(changed) <= 2, changed
        if len(changed) == 2:
            first, second = changed
            assert first.split(".")[0] == second.split(".")[0], changed
            assert ".input" in first and ".input" in second and now[first] == was[second]


def _values(space: SearchSpace, indices: tuple[int, ...]) -> dict[str, int | str]:
    """Decision name → the value a sequence of indices chooses."""
    decisions = space.decode_decisions(indices)
    return {d.name: d.choices[i] for d, i in zip(decisions, indices, strict=True)}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_state_restores_exactly_from_its_checkpoint_parts(name: str) -> None:
    """What the driver stores (`save_parts`) restores (`restore_parts`) a strategy that
    proposes exactly what the original does; so do the JSON part alone and the arrays part
    saved before, while the arrays did not change (the driver's checkpoint between two
    PPO updates)."""
    sp = get_space("conn-search")
    a = make_strategy(name, sp, seed=5)
    first = a.propose(6)
    a.learn([Outcome(p, surrogate_accuracy(p.genotype)) for p in first])
    state, arrays = a.save_parts(arrays=True)
    assert arrays is not None
    version = a.arrays_version()
    b = make_strategy(name, sp, seed=99)
    b.restore_parts(state, arrays)
    assert [p.indices for p in a.propose(5)] == [p.indices for p in b.propose(5)]
    assert a.arrays_version() == version  # proposing changes no array
    light, none = a.save_parts(arrays=False)
    assert none is None and light != state
    c = make_strategy(name, sp, seed=77)
    c.restore_parts(light, arrays)
    assert [p.indices for p in a.propose(5)] == [p.indices for p in c.propose(5)]


def _first_decision_probs(ppo: PPO) -> np.ndarray:
    pol = ppo.policy
    mask = np.zeros((1, pol.vmax), dtype=bool)
    mask[0, : len(pol.vocab[0])] = True
    h = np.zeros((1, pol.hidden))
    _, _, probs, _, _ = pol._step(0, np.zeros(1, dtype=np.int64), h, h.copy(), mask)
    return probs[0, : len(pol.vocab[0])]


def test_ppo_update_raises_the_probability_of_a_rewarded_decision() -> None:
    space = get_space("mnasfpn")
    ppo = PPO(space, seed=0, config=PPOConfig(batch=16))
    good = ppo.policy.vocab[0].index(96)  # the first decision: channels
    before = _first_decision_probs(ppo)[good]
    assert before == pytest.approx(1 / 6)

    # Rewarded: C = 96, and a deeper decision too: kernel 7 in the first block.
    def reward(p: Proposal) -> float:
        g = space.decode(p.indices)
        return float(g.channels == 96) + 0.5 * float(g.blocks[0].kernel == 7)

    def kernel7_rate(n: int = 100) -> float:
        return float(
            np.mean([space.decode(p.indices).blocks[0].kernel == 7 for p in ppo.propose(n)])
        )

    rate_before = kernel7_rate()
    for _ in range(8):
        props = ppo.propose(16)
        ppo.learn([Outcome(p, reward(p)) for p in props])
    after = _first_decision_probs(ppo)[good]
    assert after > 0.5 > before
    assert kernel7_rate() > rate_before + 0.2
    assert ppo.updates == 8


def test_ppo_log_prob_of_a_proposal_is_its_sampling_log_prob() -> None:
    ppo = PPO(get_space("conn-search"), seed=2)
    for k in ppo.policy.params:  # a non-uniform policy
        ppo.policy.params[k] = ppo.policy.params[k] + np.random.default_rng(1).normal(
            0, 0.2, ppo.policy.params[k].shape
        )
    props = ppo.propose(5)
    np.testing.assert_allclose(
        ppo.log_prob([p.indices for p in props]), [p.info["logp"] for p in props]
    )


# -- the search loop and the store -----------------------------------------------------


def test_search_records_every_trial_once(tmp_path: Path, table: LatencyTable) -> None:
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 30, strategy="evolution")
    rows = stored(tmp_path / "s")
    assert [r[0] for r in rows] == list(range(1, 31))
    assert {r[1] for r in rows} == {"done"}
    assert all(reward is not None and latency > 0 for _, _, _, reward, latency, _ in rows)
    # latency is the table's prediction of the (pruned) genotype
    run = load_run(tmp_path / "s")
    lat = table.predict([t.genotype for t in run.trials])
    np.testing.assert_allclose(lat, [t.latency_ms for t in run.trials])
    # running again with the same settings does nothing more; more trials extend it
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 30, strategy="evolution")
    assert len(stored(tmp_path / "s")) == 30
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 35, strategy="evolution")
    assert len(stored(tmp_path / "s")) == 35


class FailsOnWideCells:
    """Raises for C >= 80 (a child failure), as a proxy run might."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, g: Genotype) -> ChildResult:
        self.calls += 1
        if g.channels >= 80:
            raise RuntimeError(f"out of memory training C={g.channels}")
        return ChildResult(map=surrogate_accuracy(g), total_seconds=0.0)


def test_a_failing_child_is_recorded_and_the_search_finishes(
    tmp_path: Path, table: LatencyTable
) -> None:
    ev = FailsOnWideCells()
    run_search(tmp_path / "s", table, ev, 25, strategy="ppo")
    rows = stored(tmp_path / "s")
    assert len(rows) == 25
    failed = [r for r in rows if r[1] == "failed"]
    assert failed and len(failed) < 25
    assert all("RuntimeError: out of memory training C=" in r[5] and r[3] is None for r in failed)
    assert all(r[1] == "done" for r in rows if r not in failed)
    assert ev.calls == 25  # each child ran once: failures are not retried


def test_max_ms_rejects_before_training(tmp_path: Path, table: LatencyTable) -> None:
    gs = [p.genotype for p in make_strategy("random", get_space("mnasfpn"), seed=0).propose(50)]
    limit = float(np.median(table.predict(gs)))
    ev = FailsOnWideCells()
    spec = RewardSpec(target_ms=limit, max_ms=limit)
    run_search(tmp_path / "s", table, ev, 20, reward=spec)
    rows = stored(tmp_path / "s")
    rejected = [r for r in rows if r[1] == "rejected"]
    assert rejected
    assert all(r[4] > limit and "--max-ms" in r[5] for r in rejected)
    assert all(r[4] <= limit for r in rows if r[1] != "rejected")
    assert ev.calls == 20 - len(rejected)


class SameCell(RandomSearch):
    def propose(self, n: int) -> list[Proposal]:
        self.sample_uniform()
        return [
            self.proposal(self.space.encode(get_architecture("paper-mnasfpn"))) for _ in range(n)
        ]


def test_a_repeated_architecture_reuses_its_result(tmp_path: Path, table: LatencyTable) -> None:
    ev = FailsOnWideCells()
    settings = settings_for(table)
    search = Search(
        tmp_path / "s",
        settings,
        table,
        InlineExecutor(ev),
        trials=5,
        strategy=SameCell(get_space("mnasfpn"), seed=0),
    )
    search.run()
    search.close()
    assert ev.calls == 1
    run = load_run(tmp_path / "s")
    assert [t.cached_from for t in run.trials] == [None, 1, 1, 1, 1]
    assert len({t.reward for t in run.trials}) == 1
    assert len(frontier(run.trials)) == 1


def test_seed_arch_is_the_first_trial(tmp_path: Path, table: LatencyTable) -> None:
    space = get_space("mnasfpn")
    seed = adopt_seed(space, get_architecture("paper-mnasfpn"), space.repeats)
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 3, strategy="ppo", seed_arch=seed)
    first = load_run(tmp_path / "s").trials[0]
    assert first.genotype == seed and first.info["seed"] is True
    lite = adopt_seed(get_space("nasfpnlite-s"), get_architecture("nasfpnlite"), 4)
    assert lite.blocks == get_architecture("nasfpnlite").blocks
    with pytest.raises(MnasfpnError, match="space 'no-expand'"):
        adopt_seed(get_space("no-expand"), get_architecture("paper-mnasfpn"), 4)
    with pytest.raises(MnasfpnError, match="sdo=False"):
        adopt_seed(space, get_architecture("paper-mnasfpn-nosdo"), 4)


def test_other_settings_are_refused_unless_force_new(tmp_path: Path, table: LatencyTable) -> None:
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 4)
    with pytest.raises(MnasfpnError, match=r"other settings \(w -0\.3 → -0\.5\).*--force-new"):
        run_search(tmp_path / "s", table, SurrogateEvaluator(), 4, reward=RewardSpec(-0.5, 100.0))
    search = Search(
        tmp_path / "s",
        settings_for(table, reward=RewardSpec(-0.5, 100.0)),
        table,
        InlineExecutor(SurrogateEvaluator()),
        trials=2,
        force_new=True,
    )
    search.run()
    search.close()
    assert len(stored(tmp_path / "s")) == 2
    kept = list((tmp_path / "s").glob("old-*/trials.sqlite"))
    assert len(kept) == 1  # the old search is kept aside, not deleted
    assert sqlite3.connect(kept[0]).execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 4


def test_table_lacking_the_space_ops_names_the_build(tmp_path: Path) -> None:
    make_table(tmp_path / "small.sqlite", ("nasfpnlite-s",))
    small = LatencyTable.open(tmp_path / "small.sqlite")
    check_table_covers(small, get_space("nasfpnlite-s"))
    with pytest.raises(MnasfpnError, match=r"lacks \d+ ops of space 'mnasfpn'.*--space mnasfpn"):
        check_table_covers(small, get_space("mnasfpn"))


# -- resume after SIGKILL --------------------------------------------------------------

_RESUMABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.search.driver import Search, SearchSettings, table_identity
    from mnasfpn.search.evaluators import SurrogateEvaluator
    from mnasfpn.search.executors import InlineExecutor
    from mnasfpn.search.ppo import PPO, PPOConfig
    from mnasfpn.search.reward import RewardSpec
    from mnasfpn.searchspace.spaces import get_space

    table = LatencyTable.open(sys.argv[1])
    folder, trials, pause = Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    space = get_space("conn-search")
    settings = SearchSettings("conn-search", "ppo", 7, RewardSpec(target_ms=100.0), 4,
                              table_identity(table), {"kind": "test"})
    strategy = PPO(space, seed=7, config=PPOConfig(batch=4, epochs=2))
    search = Search(folder, settings, table, InlineExecutor(SurrogateEvaluator(pause)),
                    trials=trials, strategy=strategy)
    search.run()
    search.close()
    """
)


def _run_script(script: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, str(script), *args], env=env)


def _finished(folder: Path) -> int:
    try:
        con = sqlite3.connect(folder / "trials.sqlite", timeout=5)
        n = con.execute("SELECT COUNT(*) FROM trials WHERE status != 'running'").fetchone()[0]
        con.close()
        return int(n)
    except sqlite3.Error:
        return 0


def test_resume_after_sigkill_loses_and_repeats_nothing(tmp_path: Path, table_path: Path) -> None:
    script = tmp_path / "search.py"
    script.write_text(_RESUMABLE)
    trials = 24
    # the reference: one uninterrupted run
    ref = _run_script(script, str(table_path), str(tmp_path / "ref"), str(trials), "0")
    assert ref.wait(timeout=300) == 0
    # killed three times at different moments, then run to the end with the same command
    folder = tmp_path / "killed"
    for stop_at in (3, 9, 15):
        proc = _run_script(script, str(table_path), str(folder), str(trials), "0.05")
        deadline = time.monotonic() + 120
        while _finished(folder) < stop_at and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _finished(folder) < trials
    assert _run_script(script, str(table_path), str(folder), str(trials), "0").wait(300) == 0
    got, want = stored(folder), stored(tmp_path / "ref")
    assert len(got) == trials
    # same trials in the same order with the same results: nothing lost, nothing counted
    # twice, and the controller continued from its checkpoint (its later proposals match)
    assert got == want
    store = TrialStore.open(folder, readonly=True)
    ck_killed = store.checkpoint()
    store.close()
    store = TrialStore.open(tmp_path / "ref", readonly=True)
    ck_ref = store.checkpoint()
    store.close()
    assert ck_killed is not None and ck_ref is not None
    assert ck_killed.state == ck_ref.state  # RNG, reward baseline, batch buffer
    assert ck_killed.arrays_version == ck_ref.arrays_version  # as many updates
    assert ck_killed.arrays is not None and ck_ref.arrays is not None
    killed, ref = unpack_state(ck_killed.arrays), unpack_state(ck_ref.arrays)
    assert killed.keys() == ref.keys()
    for k in ref:  # weights and optimizer moments
        np.testing.assert_array_equal(killed[k], ref[k])


# -- CLI: bad input, one line before any child trains ----------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1, got 0"),
        (["--strategy", "greedy"], "unknown strategy 'greedy'; known: ppo, evolution, random"),
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--space", "nasfpnlite"], "is a fixed cell with nothing to search"),
        (["--space", "bogus"], "known: mnasfpn, no-expand, nasfpnlite-s, conn-search"),
        (["--seed-arch", "nosuch"], "--seed-arch: unknown architecture 'nosuch'; known: paper"),
        (["--ray-address", "127.0.0.1:9"], "--ray-address 127.0.0.1:9: no Ray cluster answers"),
        (["--ray-address", "somewhere"], "is not HOST:PORT"),
    ],
)
def test_search_cli_bad_input_is_one_line(
    tmp_path: Path, table_path: Path, args: list[str], message: str
) -> None:
    base = [
        "search",
        "--lut",
        str(table_path),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o" / "trials.sqlite").exists()


def test_search_cli_table_lacking_ops(tmp_path: Path) -> None:
    small = tmp_path / "small.sqlite"
    make_table(small, ("nasfpnlite-s",))
    result = CliRunner().invoke(
        main, ["search", "--lut", str(small), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "mnasfpn-lut build --space mnasfpn" in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- the frontier ----------------------------------------------------------------------


def test_pareto_frontier_table_plot_and_genotype_files(tmp_path: Path, table: LatencyTable) -> None:
    space = get_space("mnasfpn")
    seed = adopt_seed(space, get_architecture("paper-mnasfpn"), 4)
    run_search(
        tmp_path / "a", table, SurrogateEvaluator(), 25, strategy="evolution", seed_arch=seed
    )
    run_search(
        tmp_path / "b", table, SurrogateEvaluator(), 15, strategy="random", space="conn-search"
    )
    run = load_run(tmp_path / "a")
    front = frontier(run.trials)
    done = [t for t in run.trials if t.status == "done"]
    # nothing on the frontier is dominated; everything off it is, or repeats the genotype
    # of a trial on it
    assert front
    for t in done:
        dominated = any(o.latency_ms <= t.latency_ms and o.map > t.map for o in done if o is not t)
        if t in front:
            assert not dominated
        else:
            assert dominated or any(f.genotype == t.genotype for f in front)
    result = CliRunner().invoke(
        main, ["pareto", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {Path(d["search"]).name for d in doc} == {"a", "b"}
    assert sum(Path(d["search"]).name == "a" for d in doc) == len(front)
    for d in doc:
        g = load_genotype(d["genotype_file"])
        assert g.to_dict()["blocks"] == d["genotype"]["blocks"]
        assert table.predict([g])[0] == pytest.approx(d["latency_ms"])
        assert d["params"] > 0 and d["madds"] > 0
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 10_000
    text = CliRunner().invoke(main, ["pareto", str(tmp_path / "a")])
    assert text.exit_code == 0 and "lat ms" in text.output and "plot:" in text.output
    missing = CliRunner().invoke(main, ["pareto", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no such folder" in missing.output


# -- Ray -------------------------------------------------------------------------------


class ExitsOnWideCells:
    """Kills its own worker process for C >= 80, as an out-of-memory kill would."""

    def __call__(self, g: Genotype) -> ChildResult:
        if g.channels >= 80:
            os._exit(137)
        time.sleep(0.2)
        return ChildResult(map=surrogate_accuracy(g), total_seconds=0.2)


@pytest.mark.slow
def test_ray_children_on_two_workers_and_a_killed_worker(
    tmp_path: Path, table: LatencyTable
) -> None:
    import ray.cloudpickle

    from mnasfpn.search.executors import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = RayExecutor(ExitsOnWideCells(), workers=2)
    assert executor.capacity == 2
    search = Search(tmp_path / "s", settings_for(table), table, executor, trials=12)
    search.run()
    search.close()
    run = load_run(tmp_path / "s")
    assert len(run.trials) == 12
    failed = [t for t in run.trials if t.status == "failed"]
    assert failed and all("Error" in (t.error or "") for t in failed)
    assert all(t.genotype.channels >= 80 for t in failed)
    done = [t for t in run.trials if t.status == "done"]
    assert all(t.genotype.channels < 80 for t in done)
    assert len({t.worker for t in done}) >= 2  # two worker processes took children


def test_a_second_search_in_the_same_folder_is_refused(tmp_path: Path, table: LatencyTable) -> None:
    run_search(tmp_path / "s", table, SurrogateEvaluator(), 2)
    with TrialStore.open(tmp_path / "s"):  # a search still running there
        with pytest.raises(MnasfpnError, match=r"trials\.sqlite is being written by another"):
            run_search(tmp_path / "s", table, SurrogateEvaluator(), 4)
        assert len(load_run(tmp_path / "s").trials) == 2  # pareto reads beside it


def test_cli_search_run_shows_progress_and_prints_the_frontier(
    tmp_path: Path, table_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnasfpn.search.cli import ProgressLine, prepare, run_cli_search

    setup = prepare(
        table_path, "mnasfpn", "evolution", 12, -0.3, None, None, 0, "paper-mnasfpn", None
    )
    # T defaults to the table's latency of the paper cell
    assert setup.reward.target_ms == pytest.approx(
        float(setup.table.predict([get_architecture("paper-mnasfpn")])[0])
    )
    run_cli_search(setup, SurrogateEvaluator(), tmp_path / "s", 12, InlineExecutor, False, False)
    out, err = capsys.readouterr()
    assert "search finished" in out and "lat ms" in out and "frontier/trial-" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("trials 12/12 · done 12") and "best reward" in last, err
    assert "best mAP" in last and "ETA" in last
    # a second run of the same command resumes: nothing more to do
    run_cli_search(setup, SurrogateEvaluator(), tmp_path / "s", 12, InlineExecutor, False, True)
    assert len(load_run(tmp_path / "s").trials) == 12
    assert ProgressLine  # the display class the command uses


def test_search_cli_refuses_a_bad_data_folder(tmp_path: Path, table_path: Path) -> None:
    pytest.importorskip("mnasfpn.train.proxy")
    pytest.importorskip("tensorflow")  # without it the command says TensorFlow is missing
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(
        main,
        [
            "search",
            "--lut",
            str(table_path),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "instances_" in lines[0], result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_search_command_end_to_end_with_the_proxy(tmp_path: Path, table_path: Path) -> None:
    """The real thing at toy size: synthetic data, the proxy's shared backbone, two children
    on a local Ray instance, the frontier; a second run reuses everything."""
    pytest.importorskip("tensorflow")
    runner = CliRunner()
    data = tmp_path / "data"
    synth = ["data", "synth", "--out", str(data), "--train", "24", "--val", "8", "--size", "128"]
    assert runner.invoke(main, synth).exit_code == 0
    args = [
        "search", "--lut", str(table_path), "--data", str(data), "--out", str(tmp_path / "s"),
        "--strategy", "evolution", "--trials", "2", "--workers", "2", "--quiet",
        "--seed-arch", "paper-mnasfpn", "--proxy-steps", "3", "--proxy-backbone-steps", "3",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "lat ms" in result.output and "frontier/trial-" in result.output
    run = load_run(tmp_path / "s")
    assert [t.status for t in run.trials] == ["done", "done"], [t.error for t in run.trials]
    assert run.trials[0].info.get("seed") and run.trials[0].map is not None
    assert all(t.train_seconds and t.train_seconds > 0 for t in run.trials)
    start = time.perf_counter()
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and len(load_run(tmp_path / "s").trials) == 2
    assert time.perf_counter() - start < 60  # nothing trained again
