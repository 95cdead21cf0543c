"""`mnasfpn search` and `mnasfpn pareto`.

Start-up stays light: Ray, matplotlib and the proxy load inside the commands, and
TensorFlow only inside the workers that train children."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mnasfpn.archs import resolve_archs
from mnasfpn.cli_common import NameChoice
from mnasfpn.data.coco import load_coco
from mnasfpn.errors import MnasfpnError
from mnasfpn.search.evaluators import EVALUATORS, SEARCH_EVALUATORS, ProxyEvaluator, SearchInputs
from mnasfpn.search.store import TrialStore
from mnasfpn.search.strategies import STRATEGIES
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import SEARCHABLE

if TYPE_CHECKING:
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.search.driver import SearchSettings
    from mnasfpn.search.executors import Executor
    from mnasfpn.search.reward import RewardSpec
    from mnasfpn.searchspace.genotype import Genotype

DEFAULT_TRIALS = 100


def _workers_default() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class ProgressLine:
    """One status line: rewritten in place on a terminal, printed on change otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = ""

    def __call__(self, p: Any) -> None:
        c = p.counts
        parts = [
            f"trials {p.finished}/{p.trials}",
            f"done {c.get('done', 0)} (cached {p.cached})",
            f"failed {c.get('failed', 0)}",
            f"rejected {c.get('rejected', 0)}",
            f"running {c.get('running', 0)}",
        ]
        if p.best is not None:
            tid, reward, map_value, lat = p.best
            parts.append(f"best reward {reward:.4f} (mAP {map_value:.4f} @ {lat:.1f} ms, #{tid})")
        bands = []
        for (lo, hi), best in zip(p.bands, p.band_best, strict=True):
            if best is not None:
                span = (
                    f"<{hi:.0f}"
                    if lo == 0
                    else (f">{lo:.0f}" if hi == float("inf") else f"{lo:.0f}-{hi:.0f}")
                )
                bands.append(f"{span}ms {best:.3f}")
        if bands:
            parts.append("best mAP " + " | ".join(bands))
        parts.append(f"ETA {_fmt_eta(p.eta_seconds())}")
        # the clock that moves while a child runs; on a terminal only (a log would get a
        # line a second)
        if self.tty and p.running_for is not None:
            parts.append(f"child running {_fmt_eta(p.running_for)}")
        line = " · ".join(parts)
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _proxy_budget(options: dict[str, Any]) -> Any:
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.proxy_config import ProxyBudget

    given = {k: v for k, v in options.items() if v is not None}
    try:
        return ProxyBudget(**given)
    except (TypeError, ValueError) as exc:
        raise MnasfpnError(f"bad proxy settings: {exc}") from None


def _check_data(data: Path) -> None:
    """Refuse a data folder the proxy would reject, before any child trains: both
    annotation files present, and the val split readable as COCO."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.proxy_config import data_fingerprint

    if not data.is_dir():
        raise MnasfpnError(f"--data {data} is not a folder; make one with mnasfpn data synth")
    if importlib.util.find_spec("tensorflow") is None:
        raise MnasfpnError(
            "training children needs TensorFlow, which is not installed: "
            "pip install 'mnasfpn[train]'"
        )
    data_fingerprint(data)
    load_coco(data, "val")


@click.command("search")
@click.option(
    "--lut",
    "lut_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Latency table (mnasfpn-lut build) giving LAT(m).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="COCO-format folder for the proxy task (mnasfpn data synth|split).",
)
@click.option(
    "--space",
    type=NameChoice(SEARCHABLE),
    default="mnasfpn",
    show_default=True,
    help="Search space of the children.",
)
@click.option(
    "--strategy",
    type=NameChoice(STRATEGIES),
    default="ppo",
    show_default=True,
    help="What proposes the children.",
)
@click.option(
    "--trials",
    type=int,
    default=DEFAULT_TRIALS,
    show_default=True,
    help="Children to propose in all (trained, reused, rejected or failed).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Search folder (trial store, frontier); rerun the same command to resume.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Children trained at once [default: the CPUs of this machine].",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="HOST:PORT|auto",
    help="An existing Ray cluster: HOST:PORT of its head, or auto (the one Ray's discovery "
    "finds: RAY_ADDRESS, else the last `ray start` on this machine) [default: a new, "
    "private local instance on loopback].",
)
@click.option(
    "--w",
    "w",
    type=float,
    default=-0.3,
    show_default=True,
    help="Latency exponent of the reward mAP·(LAT/T)^w.",
)
@click.option(
    "--target-ms",
    type=float,
    default=None,
    help="T of the reward [default: the table's latency of paper-mnasfpn].",
)
@click.option(
    "--max-ms",
    type=float,
    default=None,
    help="Reject children predicted slower than this, before training.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Strategy random seed.")
@click.option(
    "--seed-arch",
    default=None,
    metavar="NAME|FILE",
    help="Evaluate this cell first (paper-mnasfpn, nasfpnlite, a genotype .json).",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 8),
    default=None,
    help="Cell repeats of every child [default: the space's].",
)
@click.option(
    "--force-new",
    is_flag=True,
    help="Start over in a folder whose search had other settings (kept aside).",
)
@click.option("--proxy-input-size", type=int, default=None, help="Proxy training input size.")
@click.option("--proxy-steps", type=int, default=None, help="Proxy training steps per child.")
@click.option("--proxy-batch-size", type=int, default=None, help="Proxy training batch size.")
@click.option("--proxy-lr", type=float, default=None, help="Proxy training peak learning rate.")
@click.option("--proxy-alpha", type=float, default=None, help="Proxy backbone width.")
@click.option(
    "--proxy-backbone-steps",
    type=int,
    default=None,
    help="Training steps of the proxy's shared backbone (once per data set and settings).",
)
@click.option(
    "--proxy-threads",
    type=click.IntRange(min=1),
    default=None,
    help="TensorFlow threads per child [default: CPUs / --workers on a local instance].",
)
@click.option(
    "--proxy-timeout",
    type=float,
    default=None,
    help="Stop a child running longer than this many seconds (recorded as failed).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Proxy cache of the shared backbone and its features, reused by every search on "
    "the same data [default: ~/.cache/mnasfpn/proxy].",
)
@click.option(
    "--evaluator",
    "evaluator_kind",
    type=NameChoice(SEARCH_EVALUATORS),
    default="proxy",
    show_default=True,
    help="How children are scored: proxy (each trained stand-alone on the proxy task) or "
    "oneshot (weights inherited from a supernet trained once per data, space and budget).",
)
@click.option("--oneshot-steps", type=int, default=None, help="Supernet training steps.")
@click.option("--oneshot-batch-size", type=int, default=None, help="Supernet training batch.")
@click.option("--oneshot-lr", type=float, default=None, help="Supernet peak learning rate.")
@click.option(
    "--oneshot-sampling",
    default=None,
    help="Children each supernet step trains: uniform, sandwich or distill [default: uniform].",
)
@click.option(
    "--oneshot-bn-batches",
    type=int,
    default=None,
    help="Train batches a one-shot child re-estimates its batch-norm statistics on.",
)
@click.option(
    "--oneshot-val-images",
    type=int,
    default=None,
    help="Score one-shot children on the first N val images [default: all].",
)
@click.option(
    "--finalists",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="After the search, retrain its K best frontier points stand-alone with the proxy "
    "(--proxy-* settings); the frontier reported is then theirs.",
)
@click.option(
    "--finalist-seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Seeds each finalist is retrained with (the proxy seed, +1, ...).",
)
@click.option("--quiet", is_flag=True, help="No progress line.")
def search_cmd(
    lut_path: Path,
    data: Path,
    space: str,
    strategy: str,
    trials: int,
    out: Path,
    workers: int | None,
    ray_address: str | None,
    w: float,
    target_ms: float | None,
    max_ms: float | None,
    seed: int,
    seed_arch: str | None,
    repeats: int | None,
    force_new: bool,
    proxy_input_size: int | None,
    proxy_steps: int | None,
    proxy_batch_size: int | None,
    proxy_lr: float | None,
    proxy_alpha: float | None,
    proxy_backbone_steps: int | None,
    proxy_threads: int | None,
    proxy_timeout: float | None,
    cache_dir: Path | None,
    evaluator_kind: str,
    oneshot_steps: int | None,
    oneshot_batch_size: int | None,
    oneshot_lr: float | None,
    oneshot_sampling: str | None,
    oneshot_bn_batches: int | None,
    oneshot_val_images: int | None,
    finalists: int,
    finalist_seeds: int,
    quiet: bool,
) -> None:
    """Latency-aware search: children proposed by a strategy, LAT(m) from the table,
    mAP(m) from the proxy task in Ray workers, Reward = mAP·(LAT/T)^w. Every trial is
    committed to OUT/trials.sqlite; a killed search resumes with the same command."""
    setup = prepare(
        lut_path, space, strategy, trials, w, target_ms, max_ms, seed, seed_arch, repeats
    )
    if ray_address:
        # the command's machinery loads when it runs: --help stays instant
        from mnasfpn.search.executors import check_reachable

        check_reachable(ray_address)
    n_workers = workers or _workers_default()
    if proxy_threads is None and not ray_address:
        # children share this machine's cores: one TensorFlow pool each, not one per core
        proxy_threads = max(1, _workers_default() // n_workers)
    budget = _proxy_budget(
        {
            "input_size": proxy_input_size,
            "steps": proxy_steps,
            "batch_size": proxy_batch_size,
            "lr": proxy_lr,
            "alpha": proxy_alpha,
            "backbone_steps": proxy_backbone_steps,
            "threads": proxy_threads,
            "timeout_s": proxy_timeout,
        }
    )
    oneshot = _oneshot_budget(
        {
            "steps": oneshot_steps,
            "batch_size": oneshot_batch_size,
            "lr": oneshot_lr,
            "sampling": oneshot_sampling,
            "bn_batches": oneshot_bn_batches,
            "val_images": oneshot_val_images,
        },
        budget,
        given=evaluator_kind == "oneshot",
    )
    _check_data(data)
    # the data's content is part of the search's identity: regenerated in place, it is
    # other data (the store refuses to mix them)
    from mnasfpn.search.driver import data_identity

    setup = replace(setup, data_hash=data_identity(data))
    cache = None if cache_dir is None else str(cache_dir.resolve())
    inputs = SearchInputs(str(data.resolve()), budget, oneshot, setup.space, setup.repeats, cache)
    proxy = ProxyEvaluator.from_search(inputs)
    evaluator = EVALUATORS.get(evaluator_kind).from_search(inputs)
    if setup.seed_arch is not None:
        evaluator.check(setup.seed_arch)
    spec = None
    if finalists:
        from mnasfpn.search.finalists import FinalistSpec

        seeds = tuple(budget.seed + i for i in range(finalist_seeds))
        spec = FinalistSpec(finalists, seeds, proxy)

    def ray_executor(ev: Any) -> Executor:
        # the command's machinery loads when it runs: --help stays instant
        from mnasfpn.search.executors import RayExecutor

        return RayExecutor(ev, workers=n_workers, address=ray_address)

    run_cli_search(setup, evaluator, out, trials, ray_executor, force_new, quiet, spec)


def _oneshot_budget(options: dict[str, Any], proxy: Any, *, given: bool) -> Any:
    """The one-shot budget from the --oneshot-* options (refused when given without
    --evaluator oneshot: they would silently do nothing)."""
    chosen = {k: v for k, v in options.items() if v is not None}
    if chosen and not given:
        names = ", ".join("--oneshot-" + k.replace("_", "-") for k in chosen)
        raise MnasfpnError(f"{names}: these apply only with --evaluator oneshot")
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.train.oneshot_config import OneShotBudget

    try:
        return OneShotBudget(proxy=proxy, **chosen)
    except (TypeError, ValueError) as exc:
        raise MnasfpnError(f"bad one-shot settings: {exc}") from None


@dataclass(frozen=True)
class SearchSetup:
    """A search's inputs, checked before any child trains (`prepare`)."""

    table: LatencyTable
    space: str
    strategy: str
    seed: int
    reward: RewardSpec
    repeats: int
    seed_arch: Genotype | None
    table_hash: str
    data_hash: str | None = None  # the --data folder's content (`data_identity`)

    def settings(self, evaluator: Any) -> SearchSettings:
        """What defines the search once its evaluator is chosen (the store checks it)."""
        # the command's machinery loads when it runs: --help stays instant
        from mnasfpn.search.driver import SearchSettings

        return SearchSettings(
            space=self.space,
            strategy=self.strategy,
            seed=self.seed,
            reward=self.reward,
            repeats=self.repeats,
            table_hash=self.table_hash,
            evaluator=evaluator.identity(),
            seed_arch=self.seed_arch,
            data_hash=self.data_hash,
        )


def prepare(
    lut_path: Path,
    space_name: str,
    strategy: str,
    trials: int,
    w: float,
    target_ms: float | None,
    max_ms: float | None,
    seed: int,
    seed_arch: str | None,
    repeats: int | None,
) -> SearchSetup:
    """Everything checked before any child trains: one line for each bad input."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.search.driver import adopt_seed, check_max_ms, check_table_covers, table_identity
    from mnasfpn.search.reward import RewardSpec

    if trials < 1:
        raise MnasfpnError(f"--trials must be at least 1, got {trials}")
    # the given numbers (nan, inf, signs) before anything loads; T's default comes later
    RewardSpec(w=w, target_ms=1.0 if target_ms is None else target_ms, max_ms=max_ms)
    STRATEGIES.get(strategy)  # an unknown name fails here, before the table loads
    space = SEARCHABLE.get(space_name)
    if not lut_path.exists():
        raise MnasfpnError(f"--lut {lut_path}: no such table; build one with mnasfpn-lut build")
    table = LatencyTable.open(lut_path)
    check_table_covers(table, space)
    repeats = repeats or space.repeats
    seed_genotype = None
    if seed_arch is not None:
        try:
            (g,) = resolve_archs(seed_arch)[:1]
        except MnasfpnError as exc:
            raise MnasfpnError(f"--seed-arch: {exc}") from None
        seed_genotype = adopt_seed(space, g, repeats)
    if target_ms is None:
        target_ms = float(table.predict([get_architecture("paper-mnasfpn")])[0])
    reward = RewardSpec(w=w, target_ms=target_ms, max_ms=max_ms)
    check_max_ms(table, space, repeats, reward)
    return SearchSetup(
        table=table,
        space=space_name,
        strategy=strategy,
        seed=seed,
        reward=reward,
        repeats=repeats,
        seed_arch=seed_genotype,
        table_hash=table_identity(table),
    )


def run_cli_search(
    setup: SearchSetup,
    evaluator: Any,
    out: Path,
    trials: int,
    make_executor: Callable[[Any], Executor],
    force_new: bool,
    quiet: bool,
    finalists: Any = None,
) -> None:
    """Run (or resume) the search, showing progress; with `finalists` (a FinalistSpec)
    retrain its best frontier points stand-alone; then print its frontier."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.search.driver import Search, check_not_all_rejected, open_store
    from mnasfpn.search.pareto import frontier_points, frontier_table, load_run, write_genotypes

    settings = setup.settings(evaluator)
    # Refuse a folder with other settings before starting any worker or training anything.
    store = open_store(out, settings, force_new=force_new)
    try:
        finished = sum(n for status, n in store.counts().items() if status != "running")
        if finalists is not None:
            from mnasfpn.search.finalists import check_settings

            check_settings(store, finalists)
    finally:
        store.close()
    start = time.perf_counter()
    executor: Executor | None = None

    def get_executor() -> Executor:
        nonlocal executor
        if executor is None:
            executor = make_executor(evaluator)
        return executor

    try:
        if finished < trials:  # else a rerun of a finished search: no workers to start
            prepare = getattr(evaluator, "prepare", None)
            if prepare is not None:  # the one-shot supernet: trained once, then cached
                click.echo("one-shot evaluator: training the supernet if it is not cached "
                           "(once per data, space and budget; resumable)", err=True)  # fmt: skip
                record = prepare(progress=not quiet)
                click.echo(f"supernet ready: {record['folder']} (trained in "
                           f"{record['seconds']:.0f} s)", err=True)  # fmt: skip
            progress = None if quiet else ProgressLine()
            search = Search(
                out, settings, setup.table, get_executor(), trials=trials, on_progress=progress
            )
            try:
                search.run()
            except KeyboardInterrupt:
                raise MnasfpnError(
                    f"interrupted; {out} keeps every finished trial: run the same command to resume"
                ) from None
            finally:
                if progress is not None:
                    progress.end()
                search.store.close()
        if finalists is not None and finalists.k > 0:
            from mnasfpn.search.finalists import run_finalists

            shown = [-1]

            def show(done: int, total: int) -> None:
                if not quiet and done != shown[0]:
                    shown[0] = done
                    click.echo(f"finalists: {done}/{total} retrained", err=True)

            with TrialStore.open(out) as store:
                try:
                    run_finalists(store, finalists, get_executor, on_progress=show)
                except KeyboardInterrupt:
                    raise MnasfpnError(
                        f"interrupted; {out} keeps every finished finalist: run the same "
                        "command to resume"
                    ) from None
    finally:
        if executor is not None:
            executor.close()
    with TrialStore.open(out, readonly=True) as store:
        check_not_all_rejected(store, setup.reward)
    click.echo(f"search finished in {time.perf_counter() - start:.0f}s: {out}")
    points = write_genotypes(frontier_points(load_run(out)))
    click.echo(frontier_table(points))


@click.command("pareto")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the frontier as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Plot file, never written over without --force [default: FOLDER/pareto.png of the "
    "first folder, redrawn each time].",
)
@click.option("--force", is_flag=True, help="Write over an existing --plot file.")
def pareto_cmd(
    folders: tuple[Path, ...], as_json: bool, plot_path: Path | None, force: bool
) -> None:
    """The latency-mAP frontier of one or more search folders: a table (or JSON), a plot
    of every trial with the frontiers, and each frontier genotype as
    FOLDER/frontier/trial-N.json (for mnasfpn train / export, mnasfpn-lut predict)."""
    # the command's machinery loads when it runs: --help stays instant
    from mnasfpn.atomic import check_output
    from mnasfpn.search.driver import SEARCH_FILES
    from mnasfpn.search.pareto import (
        frontier_json,
        frontier_points,
        frontier_table,
        load_run,
        plot,
        plot_format,
        write_genotypes,
    )

    runs = [load_run(f) for f in folders]
    if plot_path is not None:  # the user's file: checked before anything is written
        inputs = [f / name for f in folders for name in SEARCH_FILES if name != "pareto.png"]
        check_output(plot_path, inputs=inputs, force=force, option="--plot")
        plot_format(plot_path)
    points = [p for run in runs for p in write_genotypes(frontier_points(run))]
    # the default is the first search's own plot (SEARCH_FILES), redrawn by every pareto
    target = plot_path or folders[0] / "pareto.png"
    plot(runs, target)
    if as_json:
        click.echo(frontier_json(points))
    else:
        click.echo(frontier_table(points))
        click.echo(f"plot: {target}")


def register(group: click.Group) -> None:
    group.add_command(search_cmd)
    group.add_command(pareto_cmd)
