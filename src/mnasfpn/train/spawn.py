"""Run one piece of TensorFlow work in a spawned process and get its result back.

The caller (the search's driver, a Ray worker) never imports TensorFlow for it, and a crash,
an out-of-memory kill or a time limit there becomes one error here while the caller goes
on. The child ends when its caller dies (an orphan would train for nobody). The proxy's
children and the one-shot supernet's training run through it.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnasfpn.data.coco import DataError
from mnasfpn.errors import MnasfpnError


def run_spawned(
    entry: str,
    kwargs: dict[str, Any],
    *,
    what: str,
    error: type[MnasfpnError],
    timeout_s: float | None = None,
    name: str = "mnasfpn-child",
) -> Any:
    """Call `entry` ("package.module:function") in a spawned process as
    function(**kwargs, on_ready=callback) and return what it returns (picklable).

    `timeout_s` counts from the child's first `on_ready()` call (what comes before, like
    building a shared cache, is not the child's own work). Raises DataError when the child
    found the data unusable, `error` ("<what> failed: ...", "... ran past its limit",
    "... died without a result") otherwise."""
    ctx = mp.get_context("spawn")  # TensorFlow is not fork-safe
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, entry, kwargs, os.getpid()), name=name,
                       daemon=True)  # fmt: skip
    proc.start()
    send.close()
    message: tuple[str, Any] | None = None
    ready_at: float | None = None
    try:
        while True:
            wait = None
            if ready_at is not None and timeout_s is not None:
                wait = max(0.0, timeout_s - (time.perf_counter() - ready_at))
            if not recv.poll(wait):
                proc.kill()
                proc.join()
                raise error(f"{what} ran past its {timeout_s:g} s limit and was stopped")
            try:
                message = recv.recv()
            except EOFError:
                message = None
                break
            if message[0] != "ready":
                break
            ready_at = time.perf_counter()
    finally:
        recv.close()
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if message is None:
        code = proc.exitcode
        why = "killed by the system, likely out of memory" if code == -9 else f"exit code {code}"
        raise error(f"{what} died without a result ({why})")
    kind, payload = message
    if kind == "ok":
        return payload
    if kind == "data":
        raise DataError(payload)
    raise error(f"{what} failed: {payload}")


def exit_with_parent(parent: int) -> None:
    """End this process when the caller (pid `parent`, passed in: it may be gone before this
    runs) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child_main(conn: Any, entry: str, kwargs: dict[str, Any], parent: int) -> None:
    """Send ('ready', None)*, then ('ok', result), ('data', message) or ('error', one line)."""
    exit_with_parent(parent)
    try:
        module, _, function = entry.partition(":")
        target: Callable[..., Any] = getattr(importlib.import_module(module), function)
        result = target(**kwargs, on_ready=lambda: conn.send(("ready", None)))
        conn.send(("ok", result))
    except DataError as exc:
        conn.send(("data", str(exc)))
    except MnasfpnError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # a bug or a resource failure: keep where it happened
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        conn.send(("error", f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")))
    finally:
        conn.close()
