"""Run a function over tasks in spawned worker processes (model conversion, export).

Workers never outlive the process that started them: each asks the kernel for SIGKILL
when its parent dies (so a SIGKILLed build leaves no converter running), ignores SIGINT
(Ctrl-C reaches the whole process group; the parent alone decides to stop), and on any
exception in the parent, KeyboardInterrupt included, the pool is terminated at once
rather than drained.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import get_context
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); exit now if
    the parent is already gone. Elsewhere, a no-op."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_init(parent_pid: int) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, task = job
    return fn(*task)


def spawn_map(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int) -> Iterator[Any]:
    """fn(*task) for every task, in `jobs` worker processes (in this one when jobs <= 1);
    results come back as tasks finish, not in task order."""
    if jobs <= 1:
        for task in tasks:
            yield fn(*task)
        return
    # spawn: TensorFlow is not fork-safe once imported by the parent.
    pool = get_context("spawn").Pool(
        min(jobs, max(len(tasks), 1)), initializer=_worker_init, initargs=(os.getpid(),)
    )
    try:
        yield from pool.imap_unordered(_call, [(fn, task) for task in tasks])
    except BaseException:
        pool.terminate()  # kill the workers now: a conversion may take seconds
        raise
    else:
        pool.close()
    finally:
        pool.join()
