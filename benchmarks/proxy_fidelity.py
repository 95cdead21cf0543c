"""The fidelity panel: how well does each cheap evaluator rank heads the way the stand-alone
proxy at a full budget ranks them?

    python benchmarks/proxy_fidelity.py --out build/panel [--lut luts/host.sqlite]
        [--steps 1200] [--seeds 2] [--heads 12] [--fractions 8 4 2] [--workers 2]
        [--oneshot-steps 600] [--oneshot-sampling uniform] [--no-oneshot]
        [--data DIR | --train 600 --val 150] [--publish]

The panel (`--panel`, default benchmarks/panel/panel.json) is fixed once: `--heads` heads of
the `mnasfpn` space stratified by the host table's predicted latency (a pool of random
genotypes sorted by latency, cut into `--heads` equal strata, one head per stratum drawn
with `--select-seed`), plus `paper-mnasfpn` and the weak head of the README and tests
(`mnasfpn.train.proxy.weak_head`). `nasfpnlite` is not a head of the `mnasfpn` space (no
SDO, 6 repeats, F = C): the script says so and leaves it out. When the panel file exists,
its genotypes are used as they are (no table needed).

Reference: each head trained stand-alone by the proxy at `--steps` with `--seeds` seeds;
its seed-to-seed Kendall τ is the ceiling any evaluator can reach. Evaluators scored on the
same panel: stand-alone at steps/8, steps/4, steps/2 (`--fractions`, one seed each, as a
search trains each child once) and the one-shot evaluator (a supernet of the space trained
`--oneshot-steps` on the same data, per sampling rule): Kendall τ and Spearman ρ against
the reference mean, top-3 overlap, cost per child (median wall seconds; the supernet's
training is its fixed cost).

Resumable: every finished (evaluator, head, seed) result is appended to OUT/results.jsonl
and skipped on a rerun with the same settings (the key holds the data digest and the whole
budget). `--publish` writes the reference (genotypes, per-seed scores, budget, data, git
commit, CPU model and load) into the panel file, so the next evaluator is scored against it
without retraining the panel; a published reference whose budget and data match is then
used instead of training (`--retrain-reference` trains it anyway). A run at a smoke budget
must not be published as the reference.

Default budget (`--steps 1200`, 2 seeds, 14 heads, 2 workers, 600/150 synthetic images at
128 px, one-shot supernet 600 uniform steps): chosen to fit 2.5 h on a 2-core machine,
from a child's measured cost at a small budget (README, Search: the fidelity panel).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import get_space, pruned

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PANEL = ROOT / "benchmarks" / "panel" / "panel.json"
SPACE = "mnasfpn"
PANEL_FORMAT = "mnasfpn-fidelity-panel"
NASFPNLITE_REASON = (
    "nasfpnlite is left out: it is not a head of the mnasfpn space (sdo=False where the "
    "space has SDO, 6 repeats where its supernet holds 4, F = C = 64), so neither a search "
    "of the space nor its one-shot supernet can produce or score it"
)


# ---- provenance ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    return {"commit": git_commit(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "load": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


def data_digest(data: Path) -> str:
    """Content digest of both annotation files (the images are named by them; a synthetic
    set rewritten from the same spec has the same digest, unlike the proxy's cache key)."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        h.update((data / "annotations" / f"instances_{split}.json").read_bytes())
    return h.hexdigest()[:16]


# ---- the panel ----------------------------------------------------------------------------


def head_id(g: Genotype) -> str:
    doc = pruned(g).to_dict()
    doc.pop("name", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def stratified(pool: list[Genotype], latency: list[float], n: int, seed: int) -> list[int]:
    """Indices of `n` members of `pool`, one per equal-count stratum of predicted latency
    (fastest first), each drawn at random with `seed`."""
    if n < 1 or n > len(pool):
        raise ValueError(f"cannot draw {n} strata from a pool of {len(pool)}")
    order = sorted(range(len(pool)), key=lambda i: latency[i])
    rng = random.Random(seed)
    picks = []
    for s in range(n):
        lo, hi = len(order) * s // n, len(order) * (s + 1) // n
        picks.append(order[rng.randrange(lo, hi)])
    return picks


def select_panel(lut: Path, n: int, seed: int, pool_size: int) -> dict[str, Any]:
    """A new panel from the table: `n` stratified heads plus the named ones."""
    # the table's module: only when a panel is chosen, not when one is read
    from mnasfpn.lut.table import LatencyTable
    from mnasfpn.search.driver import table_identity
    from mnasfpn.train.proxy import weak_head

    table = LatencyTable.open(lut)
    sp = get_space(SPACE)
    rng = random.Random(seed)
    pool, seen = [], set()
    while len(pool) < pool_size:
        g = pruned(sp.sample(rng))
        if head_id(g) not in seen:
            seen.add(head_id(g))
            pool.append(g)
    lat = [float(x) for x in table.predict(pool)]
    heads = []
    for s, i in enumerate(stratified(pool, lat, n, seed)):
        heads.append(dataclasses.replace(pool[i], name=f"strat-{s:02d}"))
    heads += [get_architecture("paper-mnasfpn"), weak_head()]
    named_lat = [float(x) for x in table.predict(heads)]
    return {
        "format": PANEL_FORMAT, "version": 1, "space": SPACE,
        "selection": {"table": str(lut), "table_hash": table_identity(table),
                      "table_input_size": table.input_size,
                      "pool": pool_size, "strata": n, "seed": seed,
                      "pool_latency_ms": [round(min(lat), 3), round(max(lat), 3)],
                      **provenance()},
        "excluded": {"nasfpnlite": NASFPNLITE_REASON},
        "heads": [{"id": head_id(g), "name": g.name, "latency_ms": round(ms, 3),
                   "genotype": g.to_dict()} for g, ms in zip(heads, named_lat, strict=True)],
        "reference": None,
    }  # fmt: skip


def load_panel(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if doc.get("format") != PANEL_FORMAT:
        sys.exit(f"{path} is not a fidelity panel (format {doc.get('format')!r})")
    return doc


def panel_heads(doc: dict[str, Any]) -> list[tuple[str, str, Genotype, float]]:
    return [(h["id"], h["name"], genotype_from_dict(h["genotype"], source=h["name"]),
             float(h["latency_ms"])) for h in doc["heads"]]  # fmt: skip


# ---- the results file ---------------------------------------------------------------------


class Results:
    """OUT/results.jsonl: one finished (evaluator key, head, seed) per line, appended and
    flushed as it finishes; a torn last line (a kill mid-write) is ignored on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.lock = threading.Lock()
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    self.rows[(row["key"], row["head"], row["seed"])] = row

    def get(self, key: str, head: str, seed: int) -> dict[str, Any] | None:
        return self.rows.get((key, head, seed))

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.rows[(row["key"], row["head"], row["seed"])] = row


def budget_key(kind: str, data: str, budget: dict[str, Any]) -> str:
    """What a score depends on: the evaluator, the data's content and the whole budget (not
    how it runs: threads, time limit, checkpoint interval)."""
    doc = json.loads(json.dumps(budget))
    for d in (doc, doc.get("proxy", {})):
        for how in ("threads", "timeout_s", "checkpoint_every", "seed"):
            d.pop(how, None)
    return kind + "-" + hashlib.sha256(json.dumps([data, doc], sort_keys=True)
                                       .encode()).hexdigest()[:12]  # fmt: skip


# ---- scores -------------------------------------------------------------------------------


def rank_metrics(ref: dict[str, float], got: dict[str, float]) -> dict[str, float]:
    """Kendall τ, Spearman ρ and top-3 overlap of `got` against `ref` on their shared heads."""
    # scipy: only where the table is computed
    from scipy.stats import kendalltau, spearmanr

    common = sorted(set(ref) & set(got))
    a, b = [ref[h] for h in common], [got[h] for h in common]
    if len(common) < 3:
        return {"n": len(common), "tau": math.nan, "rho": math.nan, "top3": math.nan}
    top = lambda d: set(sorted(common, key=lambda h: -d[h])[:3])  # noqa: E731
    return {"n": len(common), "tau": float(kendalltau(a, b).statistic),
            "rho": float(spearmanr(a, b).statistic),
            "top3": len(top(ref) & top(got)) / 3}  # fmt: skip


def seed_ceiling(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """The reference's own seed-to-seed agreement, mean over pairs of seeds."""
    pairs = [rank_metrics(per_seed[a], per_seed[b])
             for a, b in itertools.combinations(sorted(per_seed), 2)]  # fmt: skip
    if not pairs:
        return {"n": 0, "tau": math.nan, "rho": math.nan, "top3": math.nan}
    return {k: statistics.mean(p[k] for p in pairs) for k in ("n", "tau", "rho", "top3")}


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ---- running ------------------------------------------------------------------------------


def run_standalone(
    jobs: list[tuple[str, str, Genotype, int, Any, str]], data: Path, cache: Path,
    results: Results, workers: int, echo: Callable[[str], None], names: dict[str, str],
) -> None:  # fmt: skip
    """Train every job (key, head id, genotype, seed, ProxyBudget, label) not in `results`,
    `workers` at a time (each a spawned proxy child)."""
    from mnasfpn.train.proxy import proxy_evaluate

    todo = [j for j in jobs if results.get(j[0], j[1], j[3]) is None]
    echo(f"stand-alone: {len(jobs) - len(todo)} of {len(jobs)} trainings done before, "
         f"{len(todo)} to run, {workers} at a time")  # fmt: skip

    def one(job: tuple[str, str, Genotype, int, Any, str]) -> tuple[str, dict[str, Any]]:
        key, hid, g, seed, budget, label = job
        r = proxy_evaluate(g, data, budget, cache_dir=cache)
        row = {"key": key, "head": hid, "seed": seed, "evaluator": label, "map": r.map,
               "map50": r.map50, "seconds": r.total_seconds - r.backbone_seconds,
               "train_seconds": r.train_seconds, "eval_seconds": r.eval_seconds,
               "backbone_seconds": r.backbone_seconds, "steps": r.steps,
               "load": os.getloadavg()[0]}  # fmt: skip
        results.add(row)
        return label, row

    if not todo:
        return
    # a missing shared backbone is made by the first child, alone: the others would only
    # wait on its lock holding a worker
    from mnasfpn.train.proxy_config import backbone_cache_dir

    made = (backbone_cache_dir(cache, data, todo[0][4]) / "done.json").exists()
    first, rest = ([], todo) if made else (todo[:1], todo[1:])
    for job in first:
        label, row = one(job)
        echo(f"  [1/{len(todo)}] {label} {names.get(job[1], job[1])} seed {job[3]}: mAP "
             f"{row['map']:.4f} "
             f"({row['seconds']:.0f} s; backbone {row['backbone_seconds']:.0f} s)")  # fmt: skip
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, j): j for j in rest}
        for n, fut in enumerate(as_completed(futures), len(first) + 1):
            job = futures[fut]
            _, row = fut.result()
            echo(f"  [{n}/{len(todo)}] {job[5]} {names.get(job[1], job[1])} seed {job[3]}: "
                 f"mAP {row['map']:.4f} "
                 f"({row['seconds']:.0f} s, load {row['load']:.1f})")  # fmt: skip


def run_oneshot(
    heads: list[tuple[str, str, Genotype, float]], data: Path, cache: Path, results: Results,
    budget: Any, label: str, echo: Callable[[str], None],
) -> tuple[str, float, list[str]]:  # fmt: skip
    """Train `budget`'s supernet once (cached, resumable), then score every head it holds
    in this process; returns the key, the supernet's training seconds, and the heads it
    cannot score with the reason."""
    from mnasfpn.train.oneshot import oneshot_score, prepare_supernet
    from mnasfpn.train.oneshot_config import OneShotError, SupernetKey, check_child

    repeats = get_space(SPACE).repeats
    key = SupernetKey(str(data), SPACE, repeats, budget)
    bkey = budget_key("oneshot", data_digest(data), budget.to_dict())
    outside = []
    todo = []
    for hid, name, g, _ in heads:
        try:
            check_child(SPACE, repeats, g)
        except OneShotError as exc:
            outside.append(f"{name}: {exc}")
            continue
        if results.get(bkey, hid, 0) is None:
            todo.append((hid, name, g))
    meta_row = results.get(bkey, "supernet", 0)
    if not todo and meta_row is not None:
        return bkey, float(meta_row["seconds"]), outside
    echo(f"{label}: supernet of {SPACE} ({repeats} repeats), {budget.steps} {budget.sampling} "
         "steps (cached and resumable)")  # fmt: skip
    record = prepare_supernet(key, cache, progress=True)
    if meta_row is None:
        results.add({"key": bkey, "head": "supernet", "seed": 0, "evaluator": label,
                     "seconds": record["seconds"], "resumed_from": record["resumed_from"],
                     "load": os.getloadavg()[0]})  # fmt: skip
        meta_row = results.get(bkey, "supernet", 0)
    for hid, name, g in todo:
        r = oneshot_score(g, key, cache)
        results.add({"key": bkey, "head": hid, "seed": 0, "evaluator": label, "map": r.map,
                     "map50": r.map50, "seconds": r.total_seconds, "bn_seconds": r.bn_seconds,
                     "eval_seconds": r.eval_seconds, "load": os.getloadavg()[0]})  # fmt: skip
        echo(f"  {label} {name}: mAP {r.map:.4f} ({r.total_seconds:.1f} s)")
    return bkey, float(meta_row["seconds"]), outside


def make_data(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    if args.data is not None:
        return args.data.resolve(), {"path": str(args.data.resolve())}
    from mnasfpn.data.synth import SynthSpec, write_synthetic

    spec = SynthSpec(train=args.train, val=args.val, size=args.size)
    data = out / f"synth-{args.train}-{args.val}-{args.size}"
    if not (data / "annotations" / "instances_val.json").exists():
        write_synthetic(data, spec, force=True)
    return data.resolve(), {"synthetic": dataclasses.asdict(spec)}


def main(argv: Iterable[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results folder (resumable)")
    p.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    p.add_argument("--lut", type=Path, help="host table to choose a new panel from")
    p.add_argument("--heads", type=int, default=12, help="stratified heads of a new panel")
    p.add_argument("--select-seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=2000, help="random genotypes stratified")
    p.add_argument(
        "--max-heads",
        type=int,
        default=None,
        help="use only the first N heads of the panel (a smoke run)",
    )
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=150)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=1200, help="reference steps per child")
    p.add_argument("--seeds", type=int, default=2, help="reference seeds per head")
    p.add_argument(
        "--fractions",
        type=int,
        nargs="*",
        default=[8, 4, 2],
        help="cheaper stand-alone evaluators at steps/N",
    )
    p.add_argument("--backbone-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--oneshot-steps", type=int, default=600)
    p.add_argument("--oneshot-sampling", nargs="*", default=["uniform"])
    p.add_argument("--oneshot-val-images", type=int, default=None)
    p.add_argument("--oneshot-bn-batches", type=int, default=None)
    p.add_argument("--no-oneshot", action="store_true")
    p.add_argument("--cache", type=Path, default=None, help="proxy cache [default: OUT/cache]")
    p.add_argument(
        "--publish",
        action="store_true",
        help="write the reference into --panel (not for a smoke budget)",
    )
    p.add_argument("--retrain-reference", action="store_true")
    p.add_argument("--label", default="", help="printed above the table (e.g. SMOKE BUDGET)")
    args = p.parse_args(None if argv is None else list(argv))

    from mnasfpn.train.oneshot_config import OneShotBudget
    from mnasfpn.train.proxy_config import ProxyBudget

    t_start = time.perf_counter()
    start_prov = provenance()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    echo = lambda s: print(s, flush=True)  # noqa: E731

    if args.panel.exists():
        panel = load_panel(args.panel)
        echo(f"panel: {args.panel} ({len(panel['heads'])} heads, chosen "
             f"{panel['selection']['time']} at {panel['selection']['commit'][:12]})")  # fmt: skip
    else:
        if args.lut is None:
            sys.exit(f"{args.panel} does not exist: give --lut TABLE to choose a panel")
        panel = select_panel(args.lut, args.heads, args.select_seed, args.pool)
        args.panel.parent.mkdir(parents=True, exist_ok=True)
        args.panel.write_text(json.dumps(panel, indent=1) + "\n")
        echo(f"panel: chose {len(panel['heads'])} heads from {args.lut}, written to {args.panel}")
    for name, why in panel.get("excluded", {}).items():
        echo(f"excluded: {why}" if why.startswith(name) else f"excluded {name}: {why}")
    heads = panel_heads(panel)[: args.max_heads]
    names = {hid: name for hid, name, _, _ in heads}
    lat = {hid: ms for hid, _, _, ms in heads}

    data, data_doc = make_data(args, out)
    digest = data_digest(data)
    cache = (args.cache or out / "cache").resolve()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    extra = {} if args.backbone_steps is None else {"backbone_steps": args.backbone_steps}
    base = ProxyBudget(steps=args.steps, threads=threads, **extra)
    results = Results(out / "results.jsonl")

    # the reference: published and matching, or trained here
    ref_doc = panel.get("reference")
    ref_budget = {k: v for k, v in base.to_dict().items() if k not in ("threads", "timeout_s",
                                                                       "seed")}  # fmt: skip
    ref_key = budget_key("standalone", digest, base.to_dict())
    per_seed: dict[int, dict[str, float]] = {}
    reused = (ref_doc is not None and not args.retrain_reference
              and ref_doc["key"] == ref_key and len(ref_doc["seeds"]) >= args.seeds)  # fmt: skip
    jobs = []
    if reused:
        echo(f"reference: the published one ({ref_doc['provenance']['commit'][:12]}, "
             f"{ref_doc['budget']['steps']} steps, {len(ref_doc['seeds'])} seeds)")  # fmt: skip
        for s, scores in ref_doc["scores"].items():
            per_seed[int(s)] = {h: v for h, v in scores.items() if h in names}
    else:
        jobs += [(ref_key, hid, g, seed, dataclasses.replace(base, seed=seed), "reference")
                 for seed in range(args.seeds) for hid, _, g, _ in heads]  # fmt: skip
    cheap = {}
    for frac in args.fractions:
        steps = max(1, args.steps // frac)
        b = dataclasses.replace(base, steps=steps, seed=0)
        key = budget_key("standalone", digest, b.to_dict())
        cheap[f"stand-alone 1/{frac} ({steps} steps)"] = key
        jobs += [(key, hid, g, 0, b, f"1/{frac}") for hid, _, g, _ in heads]
    run_standalone(jobs, data, cache, results, args.workers, echo, names)
    if not reused:
        for seed in range(args.seeds):
            per_seed[seed] = {hid: results.get(ref_key, hid, seed)["map"] for hid in names}
    ref_mean = {h: statistics.mean(per_seed[s][h] for s in per_seed) for h in names}

    oneshot_rows = []
    outside: list[str] = []
    if not args.no_oneshot:
        scoring = {
            k: v
            for k, v in (
                ("val_images", args.oneshot_val_images),
                ("bn_batches", args.oneshot_bn_batches),
            )
            if v is not None
        }
        for rule in args.oneshot_sampling:
            ob = OneShotBudget(proxy=base, steps=args.oneshot_steps, sampling=rule, **scoring)
            label = f"one-shot {rule} ({args.oneshot_steps} steps)"
            key, fixed, outside = run_oneshot(heads, data, cache, results, ob, label, echo)
            oneshot_rows.append((label, key, fixed))

    # the table
    def scores_of(key: str, seed: int = 0) -> dict[str, float]:
        return {h: r["map"] for h in names if (r := results.get(key, h, seed)) is not None}

    def cost_of(key: str) -> float:
        secs = [r["seconds"] for h in names if (r := results.get(key, h, 0)) is not None]
        return statistics.median(secs) if secs else math.nan

    load_end = os.getloadavg()
    echo("")
    if args.label:
        echo(f"=== {args.label} ===")
    echo(f"panel of {len(heads)} heads ({SPACE}); reference: stand-alone proxy, "
         f"{args.steps} steps, {len(per_seed)} seeds; data {json.dumps(data_doc)}; "
         f"CPU {start_prov['cpu']} x{start_prov['cpus']}; load at start "
         f"{start_prov['load'][0]:.1f}, at end {load_end[0]:.1f}; "
         f"wall {time.perf_counter() - t_start:.0f} s")  # fmt: skip
    echo("")
    echo("| head | predicted ms | " + " | ".join(f"seed {s}" for s in sorted(per_seed))
         + " | mean |")  # fmt: skip
    echo("|---|---|" + "---|" * len(per_seed) + "---|")
    for h in sorted(names, key=lambda h: -ref_mean[h]):
        echo(f"| {names[h]} | {lat[h]:.2f} | "
             + " | ".join(f"{per_seed[s][h]:.4f}" for s in sorted(per_seed))
             + f" | {ref_mean[h]:.4f} |")  # fmt: skip
    echo("")
    echo("| evaluator | heads | Kendall τ | Spearman ρ | top-3 | cost per child s | fixed s |")
    echo("|---|---|---|---|---|---|---|")
    ceil = seed_ceiling(per_seed)
    ref_cost = (statistics.median(r["seconds"] for s in per_seed for h in names
                                  if (r := results.get(ref_key, h, s)) is not None)
                if not reused else math.nan)  # fmt: skip
    echo(f"| reference seed vs seed (ceiling) | {ceil['n']:.0f} | {fmt(ceil['tau'])} | "
         f"{fmt(ceil['rho'])} | {fmt(ceil['top3'], 2)} | {fmt(ref_cost, 0)} | |")  # fmt: skip
    table = {"ceiling": ceil}
    for label, key in cheap.items():
        m = rank_metrics(ref_mean, scores_of(key))
        table[label] = {**m, "cost": cost_of(key)}
        echo(f"| {label} | {m['n']} | {fmt(m['tau'])} | {fmt(m['rho'])} | "
             f"{fmt(m['top3'], 2)} | {fmt(cost_of(key), 0)} | |")  # fmt: skip
    for label, key, fixed in oneshot_rows:
        m = rank_metrics(ref_mean, scores_of(key))
        table[label] = {**m, "cost": cost_of(key), "fixed": fixed}
        echo(f"| {label} | {m['n']} | {fmt(m['tau'])} | {fmt(m['rho'])} | "
             f"{fmt(m['top3'], 2)} | {fmt(cost_of(key), 1)} | {fixed:.0f} |")  # fmt: skip
    for line in outside:
        echo(f"one-shot cannot score {line}")
    summary = {"label": args.label, "table": table, "provenance": provenance(),
               "data": data_doc, "steps": args.steps, "seeds": len(per_seed)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    if args.publish and not reused:
        panel["reference"] = {
            "key": ref_key, "budget": ref_budget, "seeds": sorted(per_seed),
            "data": {**data_doc, "annotation_digest": digest},
            "scores": {str(s): per_seed[s] for s in sorted(per_seed)},
            "mean": ref_mean, "ceiling": ceil, "provenance": {**provenance(),
                                                              "load_at_start": start_prov["load"]},
        }  # fmt: skip
        args.panel.write_text(json.dumps(panel, indent=1) + "\n")
        echo(f"reference published in {args.panel}")


if __name__ == "__main__":
    main()
