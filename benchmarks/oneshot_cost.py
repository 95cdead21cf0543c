"""What the one-shot evaluator costs on this machine: the supernet's training time per
step (per sampling rule) and a child's scoring time (BN re-estimation, then forward, NMS
and COCO evaluation on the val split), for random children of a space and the named cells.

    python benchmarks/oneshot_cost.py [--data DIR] [--space mnasfpn] [--steps 40]
        [--children 20] [--threads 1] [--sampling uniform sandwich] [--val-images N]
        [--cache DIR]

Without --data, a synthetic set is written (`--train`, `--val` images at 128 px). The
proxy's shared backbone is trained with `--backbone-steps` (its quality does not change
what a child costs); each supernet trains `--steps` steps (s/step: its whole training
time over them, the first step's set-up included). Children are scored in this process
with TensorFlow held to `--threads` (a search's worker gets CPUs / workers). Reruns reuse
the cache. The table prints the load average: on a shared machine the figures are upper
bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.searchspace.spaces import get_space
from mnasfpn.train.oneshot_config import OneShotBudget, OneShotError, SupernetKey, check_child
from mnasfpn.train.proxy_config import ProxyBudget


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--space", default="mnasfpn")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sampling", nargs="+", default=["uniform"])
    p.add_argument("--children", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--bn-batches", type=int, default=None)
    p.add_argument("--backbone-steps", type=int, default=100)
    p.add_argument("--cache", type=Path, default=None)
    args = p.parse_args()

    from mnasfpn.tfenv import load_tensorflow

    tf = load_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from mnasfpn.train.oneshot_worker import ensure_supernet, scorer

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        data = args.data
        if data is None:
            from mnasfpn.data.synth import SynthSpec, write_synthetic

            data = cache / f"synth-{args.train}-{args.val}"
            if not (data / "annotations" / "instances_val.json").exists():
                write_synthetic(data, SynthSpec(train=args.train, val=args.val, size=128),
                                force=True)  # fmt: skip
        space = get_space(args.space)
        repeats = args.repeats or space.repeats
        proxy = ProxyBudget(backbone_steps=args.backbone_steps, threads=args.threads)
        rng = random.Random(1)
        named = []
        for name in ("paper-mnasfpn", "nasfpnlite"):
            with contextlib.suppress(OneShotError):  # not a head of this space
                named.append(check_child(args.space, repeats, get_architecture(name, repeats)))
        children = named + [space.sample(rng).with_repeats(repeats) for _ in range(args.children)]
        detector = DetectorConfig(proxy.input_size, 6, proxy.alpha, proxy.depth)
        rows = []
        for rule in args.sampling:
            given = {"val_images": args.val_images, "bn_batches": args.bn_batches}
            scoring = {k: v for k, v in given.items() if v is not None}
            budget = OneShotBudget(proxy=proxy, steps=args.steps, batch_size=args.batch_size,
                                   sampling=rule, **scoring)  # fmt: skip
            key = SupernetKey(str(data), args.space, repeats, budget)
            t0 = time.perf_counter()
            _, record = ensure_supernet(key, cache, progress=True)
            made = time.perf_counter() - t0
            per_step = record["seconds"] / max(1, args.steps - record["resumed_from"])
            sc = scorer(key, cache)
            costs, bn, ev = [], [], []
            for g in children:
                t = time.perf_counter()
                out = sc.score(g)
                costs.append(time.perf_counter() - t)
                bn.append(out["bn_seconds"])
                ev.append(out["eval_seconds"])
            madds = sorted(build_opgraph(g, detector).madds("head") / 1e6 for g in children)
            rows.append((rule, per_step, made, sc.load_seconds, costs, bn, ev, madds,
                         out["val_images"]))  # fmt: skip
        load = os.getloadavg()[0]
        print(f"\nspace {args.space}, {repeats} repeats, batch {args.batch_size}, "
              f"{args.threads} thread(s), load average {load:.1f}, {len(children)} children "
              f"({len(named)} named), {rows[0][8]} val images, head MAdds "
              f"{rows[0][7][0]:.0f}-{rows[0][7][-1]:.0f} M")  # fmt: skip
        print("| sampling | supernet s/step | load s | child median s | p90 | max | "
              "BN re-est. median | eval median |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for rule, per_step, _made, load_s, costs, bn, ev, _m, _v in rows:
            q = statistics.quantiles(costs, n=10)[-1] if len(costs) > 1 else costs[0]
            print(f"| {rule} | {per_step:.2f} | {load_s:.1f} | {statistics.median(costs):.2f} | "
                  f"{q:.2f} | {max(costs):.2f} | {statistics.median(bn):.2f} | "
                  f"{statistics.median(ev):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
