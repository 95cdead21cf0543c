"""Is the proxy task cheap, and does it rank heads? One child's wall time, and the proxy mAP
of `paper-mnasfpn` and of a deliberately weak head (`mnasfpn.train.proxy.weak_head`) on the
synthetic val split over several seeds: the proxy is useful only if the gap between the two
is well above the seed-to-seed spread.

    python benchmarks/proxy_task.py [--data DIR] [--seeds 0 1 2] [--cache DIR] [--json FILE]

Without --data, a synthetic set is written first (`--train`, `--val` images). The first
child also trains the shared backbone and caches its features (reported separately); the
children after it reuse them, as a search's children do. Budget: `ProxyBudget()`'s defaults
unless --steps / --batch-size / --backbone-steps say otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.proxy import proxy_evaluate, weak_head
from mnasfpn.train.proxy_config import ProxyBudget


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="COCO-format folder with train and val splits")
    p.add_argument("--train", type=int, default=1200, help="synthetic train images")
    p.add_argument("--val", type=int, default=300, help="synthetic val images")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--backbone-steps", type=int, default=None)
    p.add_argument("--cache", type=Path, default=None, help="feature cache (default: temporary)")
    p.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from mnasfpn.data.synth import SynthSpec, write_synthetic

            data = Path(tmp) / "synth"
            t0 = time.perf_counter()
            write_synthetic(data, SynthSpec(train=args.train, val=args.val))
            print(f"synthetic set: {args.train} train / {args.val} val images, "
                  f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        cache = args.cache or Path(tmp) / "cache"
        given = {"steps": args.steps, "batch_size": args.batch_size,
                 "backbone_steps": args.backbone_steps}  # fmt: skip
        overrides = {k: v for k, v in given.items() if v is not None}
        base = ProxyBudget(**overrides)
        print("budget:", json.dumps(base.to_dict()))
        heads = {"paper-mnasfpn": get_architecture("paper-mnasfpn"), "weak-c16": weak_head()}
        rows = []
        for seed in args.seeds:
            for name, genotype in heads.items():
                budget = dataclasses.replace(base, seed=seed)
                r = proxy_evaluate(genotype, data, budget, cache_dir=cache)
                rows.append({"head": name, "seed": seed, **r.to_dict()})
                print(f"{name:14s} seed {seed}: mAP {r.map:.4f}  mAP50 {r.map50:.4f}  "
                      f"small {r.metrics['mAP_small']:.4f}  train {r.train_seconds:.0f} s  "
                      f"eval {r.eval_seconds:.0f} s  child wall {r.total_seconds:.0f} s  "
                      f"final loss {r.final_loss:.3f}"
                      + (f"  (+ backbone and feature cache {r.backbone_seconds:.0f} s)"
                         if r.backbone_seconds else ""), flush=True)  # fmt: skip
        print()
        summary = {}
        for name in heads:
            maps = [r["map"] for r in rows if r["head"] == name]
            walls = [r["total_seconds"] - r["backbone_seconds"] for r in rows if r["head"] == name]
            summary[name] = (statistics.mean(maps), statistics.pstdev(maps), min(maps), max(maps))
            print(
                f"{name:14s} mAP mean {summary[name][0]:.4f}  std {summary[name][1]:.4f}  "
                f"range {summary[name][2]:.4f}..{summary[name][3]:.4f}  "
                f"child wall (cached backbone) median {statistics.median(walls):.0f} s"
            )
        strong, weak = summary["paper-mnasfpn"], summary["weak-c16"]
        gap = strong[0] - weak[0]
        spread = max(strong[3] - strong[2], weak[3] - weak[2], 1e-9)
        print(
            f"gap {gap:.4f} mAP = {gap / spread:.1f}x the larger seed range ({spread:.4f}); "
            f"worst paper seed - best weak seed = {strong[2] - weak[3]:.4f}"
        )
        if args.json:
            args.json.write_text(json.dumps({"budget": base.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
