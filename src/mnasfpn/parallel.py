"""Run a function over tasks in spawned worker processes (model conversion, export)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any


def spawn_map(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int) -> Iterator[Any]:
    """fn(*task) for every task, in `jobs` worker processes (in this one when jobs <= 1);
    results come back as tasks finish, not in task order."""
    if jobs <= 1:
        for task in tasks:
            yield fn(*task)
        return
    # spawn: TensorFlow is not fork-safe once imported by the parent.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(fn, *task) for task in tasks]):
            yield fut.result()
