"""The README's promises of `mnasfpn search`, `mnasfpn pareto` and the Ray executor, one
test each: bad numbers refused before any store, a --max-ms nothing can meet, data
regenerated in place, --force-new, the ETA, the plot file, and Ray (a private loopback
instance; a real `ray start` cluster on loopback, with token authentication)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_table
from mnasfpn.cli import main
from mnasfpn.errors import MnasfpnError
from mnasfpn.search.cli import ProgressLine, prepare, run_cli_search
from mnasfpn.search.driver import Progress, data_identity, fastest_possible_ms
from mnasfpn.search.evaluators import SurrogateEvaluator
from mnasfpn.search.executors import InlineExecutor
from mnasfpn.search.pareto import load_run
from mnasfpn.searchspace.spaces import SPACES, get_space, sample_genotypes

SRC = Path(__file__).resolve().parents[1] / "src"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lut") / "t.sqlite"
    make_table(path, [n for n, s in SPACES.items() if s.fixed is None])
    return path


def search_args(table_path: Path, tmp_path: Path, *more: str) -> list[str]:
    return ["search", "--lut", str(table_path), "--data", str(tmp_path), "--out",
            str(tmp_path / "o"), *more]  # fmt: skip


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.output


# -- the numbers of the reward ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--w", "nan"], "--w must be a finite number, got nan"),
        (["--w", "inf"], "--w must be a finite number, got inf"),
        (["--target-ms", "inf"], "--target-ms must be a positive number, got inf"),
        (["--target-ms", "nan"], "--target-ms must be a positive number, got nan"),
        (["--target-ms", "-3"], "--target-ms must be a positive number, got -3"),
        (["--max-ms", "nan"], "--max-ms must be a positive number, got nan"),
        (["--max-ms", "inf"], "--max-ms must be a positive number, got inf"),
        (["--max-ms", "0"], "--max-ms must be a positive number, got 0"),
        (["--max-ms", "0.0001"], "--max-ms 0.0001 is below every architecture of space"),
    ],
)
def test_reward_numbers_are_refused_before_any_store(
    tmp_path: Path, table_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, search_args(table_path, tmp_path, *args))
    one_line_error(result, message)
    assert not (tmp_path / "o").exists()


def test_the_latency_floor_is_below_every_architecture(table_path: Path) -> None:
    from mnasfpn.lut.table import LatencyTable

    table = LatencyTable.open(table_path)
    for name in ("mnasfpn", "conn-search"):
        space = get_space(name)
        floor = fastest_possible_ms(table, space, space.repeats)
        assert floor is not None and floor > 0
        lat = table.predict(sample_genotypes(space, 300, seed=1))
        assert lat.min() >= floor


def test_every_trial_rejected_is_an_error_not_an_empty_table(
    tmp_path: Path, table_path: Path
) -> None:
    from mnasfpn.lut.table import LatencyTable

    space = get_space("mnasfpn")
    floor = fastest_possible_ms(LatencyTable.open(table_path), space, space.repeats)
    assert floor is not None
    # above the floor (so the start-up check lets it through) yet below every cell
    setup = prepare(table_path, "mnasfpn", "random", 6, -0.3, None, floor * 1.0001, 0, None,
                    None)  # fmt: skip
    with pytest.raises(MnasfpnError, match=r"every trial \(6\) was predicted slower than"):
        run_cli_search(setup, SurrogateEvaluator(), tmp_path / "s", 6, InlineExecutor, False,
                       True)  # fmt: skip
    assert {t.status for t in load_run(tmp_path / "s").trials} == {"rejected"}


# -- identity: the data, --force-new ------------------------------------------------------


def synth(folder: Path, seed: int) -> None:
    args = ["data", "synth", "--out", str(folder), "--train", "6", "--val", "3", "--size",
            "64", "--seed", str(seed), "--force"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_data_regenerated_in_place_does_not_resume(tmp_path: Path, table_path: Path) -> None:
    from dataclasses import replace

    data = tmp_path / "data"
    synth(data, seed=1)
    setup = prepare(table_path, "mnasfpn", "random", 3, -0.3, None, None, 0, None, None)
    first = replace(setup, data_hash=data_identity(data))
    run_cli_search(first, SurrogateEvaluator(), tmp_path / "s", 3, InlineExecutor, False, True)
    assert data_identity(data) == first.data_hash  # reading it changes nothing
    synth(data, seed=2)  # same folder, other images and boxes
    again = replace(setup, data_hash=data_identity(data))
    assert again.data_hash != first.data_hash
    with pytest.raises(MnasfpnError) as err:
        run_cli_search(again, SurrogateEvaluator(), tmp_path / "s", 5, InlineExecutor, False,
                       True)  # fmt: skip
    text = str(err.value)
    assert "other data" in text and "--force-new" in text and "another --out" in text
    assert "\n" not in text
    assert len(load_run(tmp_path / "s").trials) == 3  # nothing added to the old search


def test_force_new_sets_the_whole_old_search_aside(tmp_path: Path, table_path: Path) -> None:
    out = tmp_path / "s"
    old = prepare(table_path, "mnasfpn", "evolution", 8, -0.3, None, None, 0, None, None)
    run_cli_search(old, SurrogateEvaluator(), out, 8, InlineExecutor, False, True)
    assert CliRunner().invoke(main, ["pareto", str(out)]).exit_code == 0
    old_files = {p.name for p in (out / "frontier").iterdir()}
    assert old_files and (out / "pareto.png").exists()
    new = prepare(table_path, "mnasfpn", "random", 2, -0.5, None, None, 3, None, None)
    run_cli_search(new, SurrogateEvaluator(), out, 2, InlineExecutor, True, True)
    (aside,) = out.glob("old-*")
    assert (aside / "trials.sqlite").exists() and (aside / "pareto.png").exists()
    assert {p.name for p in (aside / "frontier").iterdir()} == old_files
    # beside the new frontier: the new search's files alone
    ids = {t.id for t in load_run(out).trials}
    assert {int(p.stem.split("-")[1]) for p in (out / "frontier").iterdir()} <= ids
    assert len(load_run(out).trials) == 2
    assert not (out / "pareto.png").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["frontier", aside.name,
                                                           "trials.sqlite"])  # fmt: skip


# -- the progress line ---------------------------------------------------------------------


class Tty:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_eta_holds_still_while_a_child_runs() -> None:
    def snapshot(elapsed: float, running_for: float) -> Progress:
        return Progress(trials=10, counts={"done": 2, "running": 1}, cached=0, best=None,
                        bands=[], band_best=[], elapsed=elapsed, finished_now=2,
                        child_seconds=(100.0, 140.0), capacity=1,
                        running_for=running_for)  # fmt: skip

    etas = {snapshot(250.0 + s, 10.0 + s).eta_seconds() for s in range(0, 60, 5)}
    assert etas == {8 * 120.0}  # the 8 trials left at the finished children's mean
    stream = Tty()
    line = ProgressLine(stream)
    line(snapshot(250.0, 10.0))
    first = stream.text.rsplit("\r", 1)[-1]
    line(snapshot(275.0, 35.0))
    second = stream.text.rsplit("\r", 1)[-1]
    assert "ETA 16m" in first and "ETA 16m" in second
    assert "child running 10s" in first and "child running 35s" in second
    # before any child finished there is nothing to estimate from
    blank = Progress(trials=4, counts={"running": 1}, cached=0, best=None, bands=[],
                     band_best=[], elapsed=30.0, finished_now=0)  # fmt: skip
    assert blank.eta_seconds() is None


def test_the_search_times_its_children(tmp_path: Path, table_path: Path) -> None:
    seen: list[Progress] = []
    setup = prepare(table_path, "mnasfpn", "random", 3, -0.3, None, None, 0, None, None)
    from mnasfpn.search.driver import Search

    search = Search(tmp_path / "s", setup.settings(SurrogateEvaluator(0.05)), setup.table,
                    InlineExecutor(SurrogateEvaluator(0.05)), trials=3,
                    on_progress=seen.append)  # fmt: skip
    final = search.run()
    search.close()
    assert len(final.child_seconds) == 3 and min(final.child_seconds) >= 0.05
    assert final.running_for is None and final.eta_seconds() == 0


# -- pareto --------------------------------------------------------------------------------


def test_pareto_plot_never_writes_over_a_file_or_leaves_a_temporary(
    tmp_path: Path, table_path: Path
) -> None:
    out = tmp_path / "s"
    setup = prepare(table_path, "mnasfpn", "random", 5, -0.3, None, None, 0, None, None)
    run_cli_search(setup, SurrogateEvaluator(), out, 5, InlineExecutor, False, True)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's picture")
    runner = CliRunner()
    refused = runner.invoke(main, ["pareto", str(out), "--plot", str(mine)])
    one_line_error(refused, "exists; pass --force")
    assert mine.read_bytes() == b"the user's picture"
    folder = runner.invoke(main, ["pareto", str(out), "--plot", str(tmp_path)])
    one_line_error(folder, "is a folder")
    store = runner.invoke(main, ["pareto", str(out), "--plot", str(out / "trials.sqlite"),
                                 "--force"])  # fmt: skip
    one_line_error(store, "is the input")
    kind = runner.invoke(main, ["pareto", str(out), "--plot", str(tmp_path / "p.xyz")])
    one_line_error(kind, "unknown image type 'xyz'")
    forced = runner.invoke(main, ["pareto", str(out), "--plot", str(mine), "--force"])
    assert forced.exit_code == 0, forced.output
    assert mine.read_bytes().startswith(b"\x89PNG")
    svg = runner.invoke(main, ["pareto", str(out), "--plot", str(tmp_path / "p.svg")])
    assert svg.exit_code == 0 and b"<svg" in (tmp_path / "p.svg").read_bytes()
    left = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]
    assert not left


def test_pareto_on_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["pareto", str(tmp_path / "nothing")])
    one_line_error(result, f"{tmp_path / 'nothing'}: no such folder")
    assert "trials.sqlite" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(CliRunner().invoke(main, ["pareto", str(empty)]), "holds no search")


def test_unknown_space_lists_only_searchable_spaces(tmp_path: Path, table_path: Path) -> None:
    result = CliRunner().invoke(main, search_args(table_path, tmp_path, "--space", "bogus"))
    one_line_error(result, "unknown search space 'bogus'")
    known = result.output.strip().split("known: ", 1)[1].split(", ")
    assert known == [n for n, s in SPACES.items() if s.fixed is None]
    assert "nasfpnlite" not in known  # a fixed cell: a seed, not a space


# -- Ray -----------------------------------------------------------------------------------


def test_help_lists_ray_address_auto() -> None:
    result = CliRunner().invoke(main, ["search", "--help"])
    assert "HOST:PORT|auto" in result.output and "ray start" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def _listening(pids: set[int]) -> list[str]:
    """Local addresses that processes `pids` listen on (ss -ltnp)."""
    text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    out = []
    for line in text.splitlines():
        if any(f"pid={p}," in line for p in pids):
            out.append(line.split()[3])
    return out


def _is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    return host.startswith("127.") or host == "::1"


_LOCAL = textwrap.dedent(
    """
    import sys, time
    from mnasfpn.search.evaluators import SurrogateEvaluator
    from mnasfpn.search.executors import RayExecutor
    from mnasfpn.searchspace.named import get_architecture

    ex = RayExecutor(SurrogateEvaluator(), workers=1)
    ex.submit(1, get_architecture("paper-mnasfpn"))
    while not (done := ex.wait(5.0)):
        pass
    print("result", done[0][1].map, flush=True)
    sys.stdin.readline()  # the test looks at the sockets meanwhile
    ex.close()
    """
)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_a_local_search_starts_a_private_loopback_ray_instance(tmp_path: Path) -> None:
    # a stale cluster address (as an unclean `ray start` leaves) must not be joined
    env = {**os.environ, "PYTHONPATH": str(SRC), "HOME": str(tmp_path),
           "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _LOCAL], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("result 0."), line
        addrs = _listening(_descendants(proc.pid))
        assert addrs, "the Ray instance listens on nothing?"
        assert all(_is_loopback(a) for a in addrs), addrs
        proc.communicate("\n", timeout=120)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop_cluster(temp: Path) -> None:
    """Stop the head started with --temp-dir `temp`, and only it: `ray stop` would stop
    every Ray instance of the machine (another test's, another user's search)."""
    mine = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(temp).encode() in cmdline.read_bytes():
                mine |= _descendants(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    mine.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in mine):
            time.sleep(0.2)


def test_a_search_on_a_real_ray_cluster(tmp_path: Path, table_path: Path) -> None:
    """The README's cluster commands: a token (as any earlier local search leaves in
    ~/.ray), `ray start --head` on loopback (token authentication on, since a token
    exists), a 2-child search with --ray-address HOST:PORT, a driver found by auto (on
    loopback), then that head stopped (its processes alone)."""
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: seconds
        pytest.skip("the proxy children need TensorFlow (the train extra)")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    data = tmp_path / "data"
    synth_args = [str(BIN / "mnasfpn"), "data", "synth", "--out", str(data), "--train", "16",
                  "--val", "4", "--size", "64"]  # fmt: skip
    subprocess.run(synth_args, env=env, check=True, capture_output=True, timeout=300)
    ray = str(BIN / "ray")
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    port = _free_port()
    temp = Path(f"/tmp/mnasfpn-ray-{os.getpid()}-{port}")  # Ray's socket paths are short
    head = [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
            "--temp-dir", str(temp)]  # fmt: skip
    loopback = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    try:
        started = subprocess.run(head, env=loopback, capture_output=True, text=True,
                                 timeout=180)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr

        def search(trials: int, address: str) -> list[str]:
            return [str(BIN / "mnasfpn"), "search", "--lut", str(table_path), "--data",
                    str(data), "--out", str(tmp_path / "s"), "--strategy", "random",
                    "--trials", str(trials), "--workers", "2", "--quiet",
                    "--proxy-input-size", "64", "--proxy-steps", "2", "--proxy-batch-size", "2",
                    "--proxy-backbone-steps", "2", "--proxy-threads", "1",
                    "--cache-dir", str(tmp_path / "cache"), "--ray-address", address]  # fmt: skip

        start = time.perf_counter()
        result = subprocess.run(search(2, f"127.0.0.1:{port}"), env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        seconds = time.perf_counter() - start
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        trials = load_run(tmp_path / "s").trials
        assert [t.status for t in trials] == ["done", "done"], [t.error for t in trials]
        assert "InvalidAuthToken" not in result.stderr
        # auto finds the same cluster (RAY_ADDRESS, as `ray start` tells one to set); the
        # driver stays on loopback
        script = _LOCAL.replace("workers=1)", "workers=2, address='auto'); print(ex.capacity)")
        driver = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  env={**env, "PYTHONPATH": str(SRC),
                                       "RAY_ADDRESS": f"127.0.0.1:{port}"})  # fmt: skip
        try:
            assert driver.stdout is not None
            assert driver.stdout.readline().strip() == "2"  # the cluster's CPUs
            assert driver.stdout.readline().startswith("result 0.")
            if shutil.which("ss"):
                addrs = _listening({driver.pid})
                assert addrs and all(_is_loopback(a) for a in addrs), addrs
            driver.communicate("\n", timeout=120)
            assert driver.returncode == 0
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        print(f"2-child search on the cluster: {seconds:.0f} s")
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)
