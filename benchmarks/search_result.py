"""The paper's claim in miniature: does a latency-aware one-shot PPO search find a head that
beats `paper-mnasfpn` at its latency or below, and does it beat random search at equal cost?

    python benchmarks/search_result.py --out build/search-result --lut luts/host.sqlite
        [--trials 2000] [--strategies ppo random] [--finalists 5] [--finalist-seeds 3]
        [--proxy-steps 800] [--oneshot-steps 600] [--oneshot-val-images 50]
        [--data DIR | --train 600 --val 150] [--workers 2]

On one data set (synthetic unless --data) and one latency table (the host's), each strategy
runs `mnasfpn search --evaluator oneshot --trials N --finalists K --finalist-seeds S` into
OUT/<strategy> (both share one supernet: same data, space and budget, trained once), and
`paper-mnasfpn` and `nasfpnlite` are trained stand-alone with the same S seeds at the
finalists' budget (`--proxy-*`, the same frozen backbone cache). Printed: per strategy, the
best finalist at or below the paper cell's predicted latency, its mean mAP minus the paper
cell's against the seeds' spread, the search's wall time and one-shot children scored; the
baselines' mAP and latency.

Resumable: the searches are the search's own resumable stores (rerun: finished trials and
finalists are kept); the baselines are appended to OUT/baselines.jsonl as each finishes and
skipped on a rerun. Default budget (2,000 children per strategy, one-shot children scored
on 50 val images and one BN batch of 32, a 600-step uniform supernet, finalists and
baselines at 800 stand-alone steps): chosen to fit 2.5 h on a 2-core machine (README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's helpers
from mnasfpn.searchspace.named import get_architecture
from proxy_fidelity import Results, budget_key, data_digest, provenance

SPACE = "mnasfpn"


def search_command(args: argparse.Namespace, strategy: str, data: Path, out: Path,
                   cache: Path) -> list[str]:  # fmt: skip
    cmd = [
        sys.executable, "-c", "from mnasfpn.cli import main; main()", "search",
        "--lut", str(args.lut), "--data", str(data), "--space", SPACE,
        "--strategy", strategy, "--trials", str(args.trials), "--seed", str(args.seed),
        "--out", str(out / strategy), "--workers", str(args.workers),
        "--evaluator", "oneshot", "--oneshot-steps", str(args.oneshot_steps),
        "--oneshot-sampling", args.oneshot_sampling,
        "--oneshot-bn-batches", str(args.oneshot_bn_batches),
        "--finalists", str(args.finalists), "--finalist-seeds", str(args.finalist_seeds),
        "--proxy-steps", str(args.proxy_steps), "--cache-dir", str(cache), "--quiet",
    ]  # fmt: skip
    if args.oneshot_val_images:
        cmd += ["--oneshot-val-images", str(args.oneshot_val_images)]
    if args.backbone_steps is not None:
        cmd += ["--proxy-backbone-steps", str(args.backbone_steps)]
    return cmd


def run_search(args: argparse.Namespace, strategy: str, data: Path, out: Path, cache: Path,
               runs: Results) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) one strategy's search; its wall time is recorded when it first
    finishes (a rerun of a finished search costs nothing and keeps the first figure)."""
    cmd = search_command(args, strategy, data, out, cache)
    key = "search-" + json.dumps(cmd[3:], sort_keys=True)
    t0 = time.perf_counter()
    print(f"{strategy}: {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    row = runs.get(key, strategy, 0)
    if row is None:
        row = {"key": key, "head": strategy, "seed": 0, "seconds": seconds,
               "load": os.getloadavg()[0]}  # fmt: skip
        runs.add(row)
    return row


def run_baselines(args: argparse.Namespace, data: Path, cache: Path, results: Results,
                  threads: int) -> dict[str, list[float]]:  # fmt: skip
    """`paper-mnasfpn` and `nasfpnlite` stand-alone, at the finalists' budget and seeds."""
    from concurrent.futures import ThreadPoolExecutor

    from mnasfpn.train.proxy import proxy_evaluate
    from mnasfpn.train.proxy_config import ProxyBudget

    extra = {} if args.backbone_steps is None else {"backbone_steps": args.backbone_steps}
    base = ProxyBudget(steps=args.proxy_steps, threads=threads, **extra)
    key = budget_key("standalone", data_digest(data), base.to_dict())
    jobs = [(name, seed) for name in ("paper-mnasfpn", "nasfpnlite")
            for seed in range(base.seed, base.seed + args.finalist_seeds)]  # fmt: skip

    def one(job: tuple[str, int]) -> None:
        name, seed = job
        if results.get(key, name, seed) is not None:
            return
        r = proxy_evaluate(get_architecture(name), data, dataclasses.replace(base, seed=seed),
                           cache_dir=cache)  # fmt: skip
        results.add({"key": key, "head": name, "seed": seed, "map": r.map,
                     "seconds": r.total_seconds - r.backbone_seconds,
                     "load": os.getloadavg()[0]})  # fmt: skip
        print(f"  baseline {name} seed {seed}: mAP {r.map:.4f} "
              f"({r.total_seconds - r.backbone_seconds:.0f} s)", flush=True)  # fmt: skip

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(one, jobs))
    return {name: [results.get(key, name, s)["map"] for s in range(base.seed, base.seed
                                                                    + args.finalist_seeds)]
            for name in ("paper-mnasfpn", "nasfpnlite")}  # fmt: skip


def spread(xs: list[float]) -> float:
    return statistics.pstdev(xs) if len(xs) > 1 else math.nan


def num(x: float) -> str:
    return "n/a (1 seed)" if math.isnan(x) else f"{x:.4f}"


def summarize_search(folder: Path, paper_ms: float) -> dict[str, Any]:
    """What one search found: children scored, its finalists, and the best finalist at or
    below the paper cell's latency."""
    from mnasfpn.search.finalists import summarize
    from mnasfpn.search.store import TrialStore

    with TrialStore.open(folder, create=False, readonly=True) as store:
        trials = store.trials()
        finalists = store.finalists()
    done = [t for t in trials if t.status == "done"]
    scored = [t for t in done if t.cached_from is None]
    by_id = {t.id: t for t in trials}
    scores = summarize(finalists)
    rows = []
    for tid, s in scores.items():
        t = by_id[tid]
        seeds = [f.map for f in finalists if f.trial_id == tid and f.status == "done"]
        rows.append({"trial": tid, "latency_ms": t.latency_ms, "oneshot_map": t.map,
                     "map": s.mean, "std": s.std, "seeds": seeds,
                     "channels": t.genotype.channels})  # fmt: skip
    under = [r for r in rows if r["latency_ms"] is not None and r["latency_ms"] <= paper_ms]
    best = max(under, key=lambda r: r["map"]) if under else None
    best_reward = max((t.reward for t in done if t.reward is not None), default=math.nan)
    return {
        "trials": len(trials),
        "done": len(done),
        "scored": len(scored),
        "failed": sum(t.status == "failed" for t in trials),
        "oneshot_seconds": sum(t.total_seconds or 0.0 for t in scored),
        "best_oneshot_reward": best_reward,
        "finalists": rows,
        "best_under_paper": best,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lut", type=Path, required=True, help="the host latency table")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=150)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--strategies", nargs="+", default=["ppo", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finalists", type=int, default=5)
    p.add_argument("--finalist-seeds", type=int, default=3)
    p.add_argument("--proxy-steps", type=int, default=800)
    p.add_argument("--backbone-steps", type=int, default=None)
    p.add_argument("--oneshot-steps", type=int, default=600)
    p.add_argument("--oneshot-sampling", default="uniform")
    p.add_argument("--oneshot-val-images", type=int, default=50)
    p.add_argument("--oneshot-bn-batches", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--label", default="")
    args = p.parse_args()
    args.lut = args.lut.resolve()

    from mnasfpn.lut.table import LatencyTable

    t_start = time.perf_counter()
    start = provenance()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data is not None:
        data, data_doc = args.data.resolve(), {"path": str(args.data.resolve())}
    else:
        from mnasfpn.data.synth import SynthSpec, write_synthetic

        spec = SynthSpec(train=args.train, val=args.val, size=args.size)
        data = (out / f"synth-{args.train}-{args.val}-{args.size}").resolve()
        if not (data / "annotations" / "instances_val.json").exists():
            write_synthetic(data, spec, force=True)
        data_doc = {"synthetic": dataclasses.asdict(spec)}
    cache = out / "cache"
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    table = LatencyTable.open(args.lut)
    paper_ms, lite_ms = (float(x) for x in table.predict(
        [get_architecture("paper-mnasfpn"), get_architecture("nasfpnlite")]))  # fmt: skip

    runs = Results(out / "runs.jsonl")
    results = Results(out / "baselines.jsonl")
    print("baselines: paper-mnasfpn and nasfpnlite stand-alone", flush=True)
    base = run_baselines(args, data, cache, results, threads)
    found = {}
    for strategy in args.strategies:
        row = run_search(args, strategy, data, out, cache, runs)
        found[strategy] = {**summarize_search(out / strategy, paper_ms),
                           "wall_seconds": row["seconds"]}  # fmt: skip

    paper = base["paper-mnasfpn"]
    pm, ps = statistics.mean(paper), spread(paper)
    end_load = os.getloadavg()[0]
    print()
    if args.label:
        print(f"=== {args.label} ===")
    print(f"space {SPACE}; table {args.lut.name} (paper-mnasfpn {paper_ms:.2f} ms, nasfpnlite "
          f"{lite_ms:.2f} ms); data {json.dumps(data_doc)}; {args.trials} one-shot children "
          f"per strategy ({args.oneshot_steps}-step {args.oneshot_sampling} supernet, "
          f"{args.oneshot_val_images or 'all'} val images); finalists {args.finalists} x "
          f"{args.finalist_seeds} seeds and baselines at {args.proxy_steps} stand-alone steps; "
          f"CPU {start['cpu']} x{start['cpus']}, load {start['load'][0]:.1f} at start, "
          f"{end_load:.1f} at end; wall {time.perf_counter() - t_start:.0f} s")  # fmt: skip
    print()
    print("| head | latency ms | mAP per seed | mean ± std |")
    print("|---|---|---|---|")
    for name, ms in (("paper-mnasfpn", paper_ms), ("nasfpnlite", lite_ms)):
        xs = base[name]
        print(f"| {name} | {ms:.2f} | {', '.join(f'{x:.4f}' for x in xs)} | "
              f"{statistics.mean(xs):.4f} ± {num(spread(xs))} |")  # fmt: skip
    for strategy, f in found.items():
        for r in sorted(f["finalists"], key=lambda r: r["latency_ms"]):
            print(f"| {strategy} trial {r['trial']} (one-shot {r['oneshot_map']:.4f}) | "
                  f"{r['latency_ms']:.2f} | {', '.join(f'{x:.4f}' for x in r['seeds'])} | "
                  f"{r['map']:.4f} ± {r['std']:.4f} |")  # fmt: skip
    print()
    print(
        "| strategy | children scored | failed | search wall s | one-shot s | best one-shot "
        "reward | best finalist ≤ paper latency | its mAP − paper's | paper std | its std |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for strategy, f in found.items():
        b = f["best_under_paper"]
        if b is None:
            best = "none of its finalists"
            gap = its = "n/a"
        else:
            best = f"trial {b['trial']}: {b['map']:.4f} @ {b['latency_ms']:.2f} ms"
            gap, its = f"{b['map'] - pm:+.4f}", num(b["std"] if len(b["seeds"]) > 1 else math.nan)
        print(f"| {strategy} | {f['scored']} | {f['failed']} | {f['wall_seconds']:.0f} | "
              f"{f['oneshot_seconds']:.0f} | {f['best_oneshot_reward']:.4f} | {best} | {gap} | "
              f"{num(ps)} | {its} |")  # fmt: skip
    summary = {"label": args.label, "baselines": base, "paper_ms": paper_ms,
               "nasfpnlite_ms": lite_ms, "searches": found, "provenance": provenance(),
               "data": data_doc, "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
