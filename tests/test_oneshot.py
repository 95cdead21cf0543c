"""The one-shot evaluator on a tiny synthetic set: the supernet's cache (keyed, refused
when it names another supernet), its checkpoints (a stopped or killed training resumes
and ends at the same step and weights), scoring, the search CLI's one-shot options, a
one-shot search resumed after SIGKILL, and finalists recorded beside their one-shot
scores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_table
from mnasfpn.cli import main
from mnasfpn.data import SynthSpec, write_synthetic
from mnasfpn.errors import MnasfpnError
from mnasfpn.search.driver import Search, SearchSettings, table_identity
from mnasfpn.search.evaluators import (
    EVALUATORS,
    SearchInputs,
    SurrogateEvaluator,
    surrogate_accuracy,
)
from mnasfpn.search.executors import InlineExecutor
from mnasfpn.search.finalists import FinalistSpec, choose, run_finalists
from mnasfpn.search.frontier import frontier
from mnasfpn.search.pareto import frontier_points, frontier_table, load_run
from mnasfpn.search.reward import RewardSpec
from mnasfpn.search.store import ChildResult, TrialStore
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SPACES
from mnasfpn.train.oneshot_config import OneShotBudget, OneShotError, SupernetKey
from mnasfpn.train.proxy_config import ProxyBudget

SRC = Path(__file__).resolve().parents[1] / "src"
PROXY = ProxyBudget(input_size=64, steps=3, batch_size=4, backbone_steps=3,
                    backbone_batch_size=4, threads=1)  # fmt: skip
BUDGET = OneShotBudget(proxy=PROXY, steps=6, batch_size=4, checkpoint_every=2, bn_batches=2,
                       bn_batch_size=4)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oneshotdata")
    write_synthetic(out, SynthSpec(train=12, val=6, size=64, classes=3, seed=2), force=True)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oneshotcache")


def _key(data: Path, **changes: object) -> SupernetKey:
    return SupernetKey(str(data), "no-expand", 1, replace(BUDGET, **changes))


def test_supernet_resumes_to_the_same_step_and_weights(tiny_data: Path, cache: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """Stopped after step 5 (its last checkpoint at step 4), the training resumes from
    step 4 and ends with the uninterrupted training's weights; a kill loses at most one
    checkpoint interval."""
    pytest.importorskip("tensorflow")
    from mnasfpn.train.checkpoint import read_latest
    from mnasfpn.train.oneshot_worker import WEIGHTS_FILE, load_data, train_supernet

    key = _key(tiny_data)
    data = load_data(tiny_data, key.budget, cache)
    whole = train_supernet(tmp_path / "a", key, data)
    assert whole is not None and whole["resumed_from"] == 0
    assert train_supernet(tmp_path / "b", key, data, stop_after=5) is None
    latest = read_latest(tmp_path / "b")
    assert latest is not None and latest.step == 4
    resumed = train_supernet(tmp_path / "b", key, data, echo=lambda s: None)
    assert resumed is not None and resumed["resumed_from"] == 4
    with np.load(tmp_path / "a" / WEIGHTS_FILE) as a, np.load(tmp_path / "b" / WEIGHTS_FILE) as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)



def test_supernet_resumes_from_the_older_checkpoint_when_the_newest_is_damaged(
    tiny_data: Path, cache: Path, tmp_path: Path
) -> None:
    """A write killed half-way leaves the newest checkpoint truncated: the training says so
    and resumes from the older one kept beside it instead of stopping with a traceback."""
    pytest.importorskip("tensorflow")
    from mnasfpn.train.checkpoint import read_latest
    from mnasfpn.train.oneshot_worker import load_data, train_supernet
    from mnasfpn.train.run import checkpoint_dir

    key = _key(tiny_data)
    data = load_data(tiny_data, key.budget, cache)
    assert train_supernet(tmp_path / "b", key, data, stop_after=5) is None
    latest = read_latest(tmp_path / "b")
    assert latest is not None and latest.step == 4
    shards = sorted(checkpoint_dir(tmp_path / "b").glob(f"{latest.prefix}.data-*"))
    assert shards
    shards[0].write_bytes(shards[0].read_bytes()[: shards[0].stat().st_size // 2])
    said: list[str] = []
    resumed = train_supernet(tmp_path / "b", key, data, echo=said.append)
    assert resumed is not None and resumed["resumed_from"] == 2
    assert any("truncated" in line and "older one" in line for line in said), said

def test_supernet_cache_is_keyed_and_never_reused_for_another(tiny_data: Path, cache: Path) -> None:
    pytest.importorskip("tensorflow")
    from mnasfpn.train.oneshot_worker import DONE_FILE, ensure_supernet

    key = _key(tiny_data)
    folder, record = ensure_supernet(key, cache)
    assert (folder / DONE_FILE).exists() and record["identity"] == key.identity()
    again, _ = ensure_supernet(key, cache)  # reused, not retrained
    assert again == folder
    other = _key(tiny_data, steps=4)
    assert other.folder(cache) != folder
    assert _key(tiny_data, sampling="sandwich").folder(cache) != folder
    assert SupernetKey(str(tiny_data), "mnasfpn", 1, BUDGET).folder(cache) != folder
    # a folder of another supernet in this one's place (copied, say) is refused in one line
    shutil.copytree(folder, other.folder(cache))
    with pytest.raises(OneShotError, match="made for another data set, space or budget") as e:
        ensure_supernet(other, cache)
    assert "\n" not in str(e.value)
    shutil.rmtree(other.folder(cache))
    # a scoring setting is not a training setting: the same supernet serves both
    assert _key(tiny_data, bn_batches=3).folder(cache) == folder


def test_scoring_is_repeatable_and_leaves_the_supernet_as_it_was(tiny_data: Path,
                                                                 cache: Path) -> None:  # fmt: skip
    pytest.importorskip("tensorflow")
    import hashlib

    from mnasfpn.train.oneshot import oneshot_score
    from mnasfpn.train.oneshot_worker import WEIGHTS_FILE, ensure_supernet

    key = _key(tiny_data)
    folder, _ = ensure_supernet(key, cache)
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    seed = replace(get_architecture("paper-mnasfpn", 1), space="no-expand", blocks=tuple(
        replace(b, expansion=48) for b in get_architecture("paper-mnasfpn", 1).blocks))
    first = oneshot_score(seed, key, cache)
    second = oneshot_score(seed, key, cache)
    assert first.map == second.map and first.metrics == second.metrics
    assert 0 <= first.map <= 1 and first.val_images == 6
    assert hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest() == digest
    with pytest.raises(OneShotError, match="ties it to channels"):
        oneshot_score(get_architecture("paper-mnasfpn", 1), key, cache)


# -- the search CLI: one line before anything trains ----------------------------------------


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lut") / "t.sqlite"
    make_table(path, [n for n, s in SPACES.items() if s.fixed is None])
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--oneshot-steps", "10"], "--oneshot-steps: these apply only with --evaluator oneshot"),
        (["--evaluator", "oneshot", "--oneshot-sampling", "greedy"],
         "sampling rule 'greedy' is not one of uniform, sandwich, distill"),
        (["--evaluator", "oneshot", "--oneshot-steps", "0"], "one-shot steps must be positive"),
        (["--evaluator", "oneshot", "--space", "no-expand", "--seed-arch", "paper-mnasfpn"],
         "ties it to channels"),
        (["--evaluator", "nope"], "unknown evaluator 'nope'; known: proxy, oneshot"),
        (["--evaluator", "surrogate"], "evaluator 'surrogate' is a synthetic stand-in"),
    ],
    ids=["without-oneshot", "sampling", "steps", "seed-arch", "evaluator", "surrogate"],
)  # fmt: skip
def test_search_cli_oneshot_bad_input_is_one_line(
    tmp_path: Path, table_path: Path, args: list[str], message: str
) -> None:
    base = ["search", "--lut", str(table_path), "--data", str(tmp_path), "--out",
            str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output, result.output
    if result.exit_code == 1:
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "trials.sqlite").exists()


class _ProbeEvaluator:
    """A registered evaluator that says what `mnasfpn search` built it from."""

    kind = "probe"

    @classmethod
    def from_search(cls, inputs: SearchInputs) -> _ProbeEvaluator:
        raise MnasfpnError(
            f"probe built for {inputs.space} x{inputs.repeats}, {inputs.proxy.steps} proxy steps"
        )


def test_search_builds_the_evaluator_the_registry_names(
    tmp_path: Path, table_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind registered later is offered by --evaluator and built from its own entry (not
    silently replaced by the proxy)."""
    monkeypatch.setitem(EVALUATORS, "probe", _ProbeEvaluator)
    result = CliRunner().invoke(main, [
        "search", "--lut", str(table_path), "--data", str(tiny_data), "--out",
        str(tmp_path / "o"), "--evaluator", "probe", "--proxy-steps", "7",
        "--space", "no-expand"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "probe built for no-expand x4, 7 proxy steps" in result.output
    assert not (tmp_path / "o" / "trials.sqlite").exists()


def test_search_cli_oneshot_refuses_a_table_lacking_the_space(tmp_path: Path,
                                                              tiny_data: Path) -> None:  # fmt: skip
    """As for the proxy: a table that does not cover the space (made for another one, or
    at another input size) is refused before a supernet trains."""
    small = tmp_path / "small.sqlite"
    make_table(small, ("nasfpnlite-s",))
    result = CliRunner().invoke(main, [
        "search", "--lut", str(small), "--data", str(tiny_data), "--out", str(tmp_path / "o"),
        "--evaluator", "oneshot", "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 1 and "lacks" in result.output, result.output
    assert not (tmp_path / "c").exists()


# -- finalists ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    seed: int = 0


@dataclass(frozen=True)
class SeededSurrogate:
    """A stand-in for the stand-alone proxy whose score moves with the seed."""

    budget: _Budget = _Budget()

    def identity(self) -> dict[str, object]:
        return {"kind": "seeded-surrogate", "budget": {"seed": self.budget.seed}}

    def __call__(self, genotype: object) -> ChildResult:
        return ChildResult(map=surrogate_accuracy(genotype) + 0.01 * self.budget.seed)


def _search(folder: Path, table_path: Path, trials: int = 12) -> None:
    from mnasfpn.lut.table import LatencyTable

    table = LatencyTable.open(table_path)
    settings = SearchSettings("mnasfpn", "random", 3, RewardSpec(target_ms=100.0), 4,
                              table_identity(table), {"kind": "test"})  # fmt: skip
    search = Search(folder, settings, table, InlineExecutor(SurrogateEvaluator()), trials=trials)
    search.run()
    search.close()


def test_finalists_are_recorded_beside_their_search_scores(tmp_path: Path,
                                                           table_path: Path) -> None:  # fmt: skip
    _search(tmp_path, table_path)
    spec = FinalistSpec(2, (0, 1, 2), SeededSurrogate())
    with TrialStore.open(tmp_path) as store:
        chosen = choose(store.trials(), 2)
        rows = run_finalists(store, spec, lambda: InlineExecutor(SeededSurrogate()))
    assert len(chosen) == 2 and len(rows) == 6
    assert {(f.trial_id, f.seed) for f in rows} == {(t.id, s) for t in chosen for s in (0, 1, 2)}
    for f in rows:
        t = next(t for t in chosen if t.id == f.trial_id)
        assert f.status == "done" and f.map == pytest.approx(t.map + 0.01 * f.seed)
    run = load_run(tmp_path)
    points = frontier_points(run)
    assert {p.trial.id for p in points} <= {t.id for t in chosen}
    for p in points:  # the finalists' mean beside the search's own score
        t = next(t for t in chosen if t.id == p.trial.id)
        assert p.search_map == t.map and p.trial.map == pytest.approx(t.map + 0.01)
        assert p.finalist_seeds == 3 and p.finalist_std == pytest.approx(np.std([0, 0.01, 0.02]))
    table = frontier_table(points)
    assert "± std" in table and "finalists' mean" in table


def test_finalists_resume_and_take_all_of_a_small_frontier(tmp_path: Path,
                                                           table_path: Path) -> None:  # fmt: skip
    _search(tmp_path, table_path)
    with TrialStore.open(tmp_path) as store:
        front = frontier(store.trials())
        spec = FinalistSpec(len(front) + 5, (0, 1), SeededSurrogate())  # more than there is
        assert len(choose(store.trials(), spec.k)) == len(front)
        store.start_finalists([(front[0].id, 0)])  # as if killed while it trained
        rows = run_finalists(store, spec, lambda: InlineExecutor(SeededSurrogate()))
        assert len(rows) == 2 * len(front) and all(f.status == "done" for f in rows)
        assert next(f for f in rows if (f.trial_id, f.seed) == (front[0].id, 0)).attempts == 2
        calls: list[int] = []

        def executor() -> InlineExecutor:
            calls.append(1)
            return InlineExecutor(SeededSurrogate())

        assert run_finalists(store, spec, executor) == rows
        assert not calls  # nothing left: no executor started
        other = FinalistSpec(1, (0,), _Other())
        with pytest.raises(MnasfpnError, match="other proxy settings"):
            run_finalists(store, other, executor)


@dataclass(frozen=True)
class _Other(SeededSurrogate):
    def identity(self) -> dict[str, object]:
        return {"kind": "other", "budget": {}}


# -- a one-shot search resumes after SIGKILL ----------------------------------------------

_RESUMABLE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.search.driver import Search, SearchSettings, table_identity
    from mnasfpn.search.evaluators import OneShotEvaluator
    from mnasfpn.search.executors import InlineExecutor
    from mnasfpn.search.reward import RewardSpec
    from mnasfpn.train.oneshot_config import OneShotBudget

    table = LatencyTable.open(sys.argv[1])
    folder, trials, cache = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
    ev = OneShotEvaluator(sys.argv[4], OneShotBudget(**json.loads(sys.argv[6])), "no-expand", 1,
                          cache)
    settings = SearchSettings("no-expand", "evolution", 5, RewardSpec(target_ms=100.0), 1,
                              table_identity(table), ev.identity())
    search = Search(folder, settings, table, InlineExecutor(ev), trials=trials)
    search.run()
    search.close()
    """
)


def _stored(folder: Path) -> list[tuple[object, ...]]:
    with TrialStore.open(folder, readonly=True) as store:
        return [(t.id, t.status, t.decisions, t.map, t.reward) for t in store.trials()]


@pytest.mark.slow
def test_oneshot_search_resumes_after_sigkill(tiny_data: Path, cache: Path, table_path: Path,
                                              tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("tensorflow")
    from mnasfpn.train.oneshot_worker import ensure_supernet
    from test_search import _finished

    ensure_supernet(_key(tiny_data), cache)
    script = tmp_path / "search.py"
    script.write_text(_RESUMABLE)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    trials = 10

    def start(folder: Path) -> subprocess.Popen:
        args = [str(table_path), str(folder), str(trials), str(tiny_data), str(cache),
                json.dumps(BUDGET.to_dict())]  # fmt: skip
        return subprocess.Popen([sys.executable, str(script), *args], env=env)

    assert start(tmp_path / "ref").wait(timeout=600) == 0
    proc = start(tmp_path / "killed")
    deadline = time.monotonic() + 300
    while _finished(tmp_path / "killed") < 4 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _finished(tmp_path / "killed") < trials
    assert start(tmp_path / "killed").wait(timeout=600) == 0
    assert _stored(tmp_path / "killed") == _stored(tmp_path / "ref")


_TRAIN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mnasfpn.train.oneshot_config import OneShotBudget, SupernetKey
    from mnasfpn.train.oneshot_worker import ensure_supernet

    key = SupernetKey(sys.argv[1], "no-expand", 1, OneShotBudget(**json.loads(sys.argv[3])))
    folder, record = ensure_supernet(key, Path(sys.argv[2]))
    print(json.dumps({"resumed_from": record["resumed_from"]}))
    """
)


@pytest.mark.slow
def test_killed_supernet_training_resumes_from_its_checkpoint(tiny_data: Path, cache: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    key = _key(tiny_data, steps=40, checkpoint_every=5)
    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    args = [sys.executable, str(script), str(tiny_data), str(cache),
            json.dumps(key.budget.to_dict())]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    latest = key.folder(cache).parent / f"{key.folder(cache).name}.part" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (latest / "latest.json").exists() and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (key.folder(cache) / "done.json").exists()
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=True)
    resumed = json.loads(out.stdout.strip().splitlines()[-1])["resumed_from"]
    assert resumed > 0 and resumed % 5 == 0  # from a checkpoint: at most one interval lost
    assert (key.folder(cache) / "done.json").exists()


def test_driver_side_does_not_load_tensorflow() -> None:
    """The search's driver builds the one-shot evaluator, its identity and its finalists
    without TensorFlow (it loads in the workers and the supernet's spawned trainer)."""
    code = (
        "import sys\n"
        "from mnasfpn.search.evaluators import OneShotEvaluator\n"
        "from mnasfpn.search.finalists import FinalistSpec\n"
        "from mnasfpn.train.oneshot_config import OneShotBudget, check_child\n"
        "from mnasfpn.searchspace.named import get_architecture\n"
        "check_child('mnasfpn', 4, get_architecture('paper-mnasfpn'))\n"
        "OneShotEvaluator('d', OneShotBudget(), 'mnasfpn', 4).budget.scoring_fields()\n"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
