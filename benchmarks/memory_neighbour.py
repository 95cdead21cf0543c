"""A neighbour that slows the core's memory system: streams through large arrays.

Run it beside a build (`mnasfpn-lut build`, `validate`, `profile`) to see whether a
statistic holds when another process on the other core competes for the shared caches
and memory bandwidth; a busy loop that stays in registers does not do that (and is what
`p10-cpu` already resists). It copies one `--mib` MiB buffer into another, in a loop,
pinned to `--core` (default: the first core this process may use, while the host
worker pins the last), until `--seconds` pass or Ctrl-C, then prints the bandwidth it
moved.

Usage: python benchmarks/memory_neighbour.py [--mib 256] [--seconds 0 (= until Ctrl-C)]
       [--core N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="size of each buffer (MiB)")
    ap.add_argument("--seconds", type=float, default=0.0, help="0: until Ctrl-C")
    ap.add_argument("--core", type=int, default=None)
    args = ap.parse_args(argv)
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    n = args.mib * (1 << 20) // 8
    src = np.random.default_rng(0).random(n)
    dst = np.empty_like(src)
    t0 = time.perf_counter()
    copies = 0
    print(f"streaming 2 x {args.mib} MiB on core {core} (Ctrl-C stops)", flush=True)
    try:
        while not args.seconds or time.perf_counter() - t0 < args.seconds:
            np.copyto(dst, src)
            src, dst = dst, src
            copies += 1
    except KeyboardInterrupt:
        pass
    dt = time.perf_counter() - t0
    # Each copy reads one buffer and writes the other.
    print(f"{copies} copies in {dt:.1f} s: {2 * copies * args.mib / 1024 / dt:.1f} GiB/s moved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
