"""The Pareto frontier of a search's trials: the finished ones no other beats on both
latency and mAP. Finalists are chosen from it and `mnasfpn pareto` reports it."""

from __future__ import annotations

from mnasfpn.search.store import Trial, genotype_key


def frontier(trials: list[Trial]) -> list[Trial]:
    """Pareto-optimal finished trials (low latency, high mAP), fastest first."""
    seen: set[str] = set()
    done = []
    for t in sorted(trials, key=lambda t: t.id):
        if t.status != "done" or t.map is None or t.latency_ms is None:
            continue
        key = genotype_key(t.genotype)
        if key in seen:
            continue
        seen.add(key)
        done.append(t)
    done.sort(key=lambda t: (t.latency_ms, -(t.map or 0.0)))
    out: list[Trial] = []
    best = float("-inf")
    for t in done:
        assert t.map is not None
        if t.map > best:
            out.append(t)
            best = t.map
    return out
