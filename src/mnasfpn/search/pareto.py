"""The accuracy-latency frontier of one or more searches: table, plot and genotype files.

A trial is on the frontier when no other finished trial of its search is at least as fast
and strictly more accurate (or as accurate and strictly faster); cached repeats of an
architecture count once. A search with finalists (`--finalists`: frontier trials retrained
stand-alone) reports the finalists' frontier, by their mean mAP over seeds, each point
beside its search (one-shot) score.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.search.evaluators import SurrogateEvaluator
from mnasfpn.search.finalists import summarize
from mnasfpn.search.frontier import frontier
from mnasfpn.search.reward import RewardSpec
from mnasfpn.search.store import STORE_NAME, Finalist, Trial, TrialStore
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture


@dataclass(frozen=True)
class SearchRun:
    folder: Path
    label: str
    settings: dict[str, Any]
    table: dict[str, Any]
    trials: list[Trial]
    finalists: list[Finalist] = field(default_factory=list)

    def finalist_trials(self) -> list[Trial]:
        """The retrained trials with their finalists' mean mAP (and the reward of it) in
        place of their search score."""
        scores = summarize(self.finalists)
        spec = RewardSpec(w=float(self.settings.get("w", -0.3)),
                          target_ms=float(self.settings.get("target_ms") or 1.0))  # fmt: skip
        out = []
        for t in self.trials:
            s = scores.get(t.id)
            if s is not None and t.latency_ms is not None:
                out.append(
                    replace(t, map=s.mean, map50=None, reward=spec.reward(s.mean, t.latency_ms))
                )
        return out


@dataclass(frozen=True)
class FrontierPoint:
    run: SearchRun
    trial: Trial  # with finalists: its mean mAP over their seeds in place of the search's
    params: int
    madds: int
    file: Path | None = None
    search_map: float | None = None  # the search's own (one-shot) score, beside finalists'
    finalist_std: float | None = None
    finalist_seeds: int = 0

    def to_dict(self) -> dict[str, Any]:
        t = self.trial
        return {
            "search": str(self.run.folder),
            "trial": t.id,
            "latency_ms": t.latency_ms,
            "map": t.map,
            "map50": t.map50,
            "reward": t.reward,
            "search_map": self.search_map,
            "finalist_std": self.finalist_std,
            "finalist_seeds": self.finalist_seeds,
            "params": self.params,
            "madds": self.madds,
            "genotype_file": None if self.file is None else str(self.file),
            "genotype": t.genotype.to_dict(),
        }


def load_run(folder: str | Path) -> SearchRun:
    folder = Path(folder)
    if not folder.exists():
        raise MnasfpnError(f"{folder}: no such folder; give a search folder (mnasfpn search --out)")
    if not folder.is_dir():
        raise MnasfpnError(f"{folder} is not a folder; give a search folder (mnasfpn search --out)")
    if not (folder / STORE_NAME).exists():
        raise MnasfpnError(f"{folder} holds no search ({STORE_NAME} missing); run mnasfpn search")
    with TrialStore.open(folder, readonly=True) as store:
        meta = store.meta()
        trials = store.trials()
        finalists = store.finalists()
    settings = meta.get("settings") or {}
    label = f"{folder.name} ({settings.get('space', '?')}, {settings.get('strategy', '?')})"
    return SearchRun(folder, label, settings, meta.get("table") or {}, trials, finalists)


def detector_config(run: SearchRun) -> DetectorConfig:
    t = run.table
    return DetectorConfig(
        input_size=int(t.get("input_size", 320)),
        num_classes=int(t.get("num_classes", 90)),
        alpha=float(t.get("alpha", 1.0)),
        depth=int(t.get("depth", 64)),
    )


def frontier_points(run: SearchRun) -> list[FrontierPoint]:
    """The search's frontier; with finalists, theirs (by mean mAP), each point with its
    search score beside it."""
    cfg = detector_config(run)
    scores = summarize(run.finalists)
    by_id = {t.id: t for t in run.trials}
    trials = run.finalist_trials() if scores else run.trials
    out = []
    for t in frontier(trials):
        graph = build_opgraph(t.genotype, cfg)
        s = scores.get(t.id)
        out.append(FrontierPoint(
            run, t, graph.keras_params(), graph.madds(),
            search_map=by_id[t.id].map if s else None,
            finalist_std=s.std if s else None, finalist_seeds=s.n if s else 0,
        ))  # fmt: skip
    return out


def write_genotypes(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """Each frontier genotype as <search>/frontier/trial-<id>.json (for mnasfpn train,
    mnasfpn export and mnasfpn-lut predict --arch FILE)."""
    out = []
    for p in points:
        folder = p.run.folder / "frontier"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"trial-{p.trial.id}.json"
        name = f"{p.run.settings.get('space', 'search')}-trial-{p.trial.id}"
        g = Genotype(
            p.trial.genotype.space,
            p.trial.genotype.channels,
            p.trial.genotype.blocks,
            p.trial.genotype.repeats,
            p.trial.genotype.sdo,
            name,
        )
        write_atomic(path, (g.to_json() + "\n").encode())
        out.append(replace(p, file=path))
    return out


def named_match(g: Genotype) -> str | None:
    """The named architecture (paper-mnasfpn, ...) a trial's cell is, if any."""
    for name in ARCHITECTURES:
        named = get_architecture(name, g.repeats)
        if named.blocks == g.blocks and named.channels == g.channels and named.sdo == g.sdo:
            return name
    return None


def plot(runs: list[SearchRun], path: Path) -> None:
    """Latency vs mAP of every finished trial, each search's frontier as a step line, the
    seed and any named cell (the paper's) marked (paper Fig. 6)."""
    # matplotlib: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for k, run in enumerate(runs):
        color = f"C{k}"
        done = [t for t in run.trials if t.status == "done" and t.map is not None]
        ax.scatter(
            [t.latency_ms for t in done],
            [t.map for t in done],
            s=10,
            alpha=0.35,
            color=color,
            label=f"{run.label}: {len(done)} trials",
        )
        front = frontier(run.trials)
        if front:
            ax.step(
                [t.latency_ms for t in front],
                [t.map for t in front],
                where="post",
                color=color,
                lw=1.5,
                marker="o",
                ms=4,
                ls="--" if run.finalists else "-",
            )
        if run.finalists:  # the retrained frontier points, mean ± std over seeds
            scores = summarize(run.finalists)
            finals = run.finalist_trials()
            ax.errorbar([t.latency_ms for t in finals], [t.map for t in finals],
                        yerr=[scores[t.id].std for t in finals], fmt="D", ms=5, color=color,
                        mec="k", capsize=3,
                        label=f"{run.label}: finalists (stand-alone)")  # fmt: skip
            front = frontier(finals)
            ax.step([t.latency_ms for t in front], [t.map for t in front], where="post",
                    color=color, lw=2)  # fmt: skip
        for t in done:
            name = named_match(t.genotype)
            if name is not None or t.info.get("seed"):
                ax.scatter([t.latency_ms], [t.map], marker="*", s=160, color=color, edgecolor="k")
                ax.annotate(
                    name or "seed",
                    (t.latency_ms or 0.0, t.map or 0.0),
                    textcoords="offset points",
                    xytext=(6, 4),
                    fontsize=8,
                )
    ax.set_xlabel("predicted latency (ms, from the table)")
    kinds = {run.settings.get("evaluator", {}).get("kind") for run in runs}
    # a benchmark's surrogate is not a measurement: say so on the axis
    ylabel = {frozenset({SurrogateEvaluator.kind}): "synthetic accuracy (surrogate)",
              frozenset({"oneshot"}): "mAP (one-shot; finalists: stand-alone proxy)"}  # fmt: skip
    ax.set_ylabel(ylabel.get(frozenset(kinds), "proxy mAP"))
    ax.set_title("Search trials and frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=plot_format(path))
    finally:
        plt.close(fig)
    # whole or not at all, never a temporary file left beside it (`check_output` has
    # refused a folder, an input and, without --force, an existing file)
    write_atomic(path, buf.getvalue())


def plot_format(path: Path) -> str:
    """The image format a plot file's suffix names (png without one), or a one-line error."""
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in PLOT_FORMATS:
        raise MnasfpnError(
            f"--plot {path}: unknown image type {fmt!r}; use one of {', '.join(PLOT_FORMATS)}"
        )
    return fmt


# What matplotlib's Agg canvas writes without extra packages.
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "webp", "tif", "tiff")


def frontier_table(points: list[FrontierPoint]) -> str:
    """The frontier; with finalists, their mean mAP ± std (over n seeds) beside the
    search's own score of each point."""
    finals = any(p.finalist_seeds for p in points)
    extra = f" {'± std':>7} {'n':>2} {'search':>7}" if finals else ""
    head = (
        f"{'search':<28} {'trial':>5} {'lat ms':>8} {'mAP':>7}{extra} {'reward':>7} "
        f"{'params':>8} {'MAdds':>8}  genotype"
    )
    lines = [head]
    for p in points:
        t = p.trial
        more = ""
        if finals:
            searched = p.search_map if p.search_map is not None else float("nan")
            more = f" {p.finalist_std or 0:>7.4f} {p.finalist_seeds:>2} {searched:>7.4f}"
        lines.append(
            f"{p.run.folder.name[:28]:<28} {t.id:>5} {t.latency_ms or 0:>8.2f} {t.map or 0:>7.4f}"
            f"{more} {t.reward or 0:>7.4f} {p.params / 1e6:>7.2f}M {p.madds / 1e9:>7.3f}B  "
            f"{p.file or ''}"
        )
    if finals:
        lines.append("mAP: the finalists' mean over their seeds (stand-alone proxy); search: "
                     "the search's own score of the point")  # fmt: skip
    return "\n".join(lines)


def frontier_json(points: list[FrontierPoint]) -> str:
    return json.dumps([p.to_dict() for p in points], indent=2)
