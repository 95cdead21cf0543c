"""Where children run: Ray tasks (a local instance sized by --workers, or a cluster), or
in this process (tests and cheap surrogate objectives).

An evaluator is any picklable callable genotype → ChildResult. A child that raises, or
whose worker dies (killed, out of memory), comes back as a ChildResult with its error;
Ray is told not to retry it, so a child that kills its worker is not retried forever.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from mnasfpn.errors import MnasfpnError
from mnasfpn.search.store import ChildResult, worker_name
from mnasfpn.searchspace.genotype import Genotype

Evaluator = Callable[[Genotype], ChildResult]


def run_child(evaluator: Evaluator, genotype: Genotype) -> ChildResult:
    """Evaluate one child; its failure is a result, with the error's last line."""
    start = time.perf_counter()
    try:
        result = evaluator(genotype)
    except Exception as exc:  # the child's failure is data for the store, not a crash
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return ChildResult(
            map=None,
            error=last,
            worker=worker_name(),
            total_seconds=time.perf_counter() - start,
        )
    if result.worker is None:
        result = ChildResult(**{**result.__dict__, "worker": worker_name()})
    return result


class Executor(ABC):
    capacity: int = 1

    @abstractmethod
    def submit(self, trial_id: int, genotype: Genotype, evaluator: Evaluator | None = None) -> None:
        """Run one child (with `evaluator` instead of the executor's own, if given)."""

    @abstractmethod
    def wait(self, timeout: float) -> list[tuple[int, ChildResult]]:
        """Finished children (at least one unless `timeout` passes or none is running)."""

    @abstractmethod
    def in_flight(self) -> int: ...

    def close(self) -> None:  # noqa: B027 (most executors hold nothing to release)
        """Release workers."""


class InlineExecutor(Executor):
    """Runs each child in this process when waited for, one at a time."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.queue: list[tuple[int, Genotype, Evaluator]] = []

    def submit(self, trial_id: int, genotype: Genotype, evaluator: Evaluator | None = None) -> None:
        self.queue.append((trial_id, genotype, evaluator or self.evaluator))

    def wait(self, timeout: float) -> list[tuple[int, ChildResult]]:
        if not self.queue:
            return []
        trial_id, genotype, evaluator = self.queue.pop(0)
        return [(trial_id, run_child(evaluator, genotype))]

    def in_flight(self) -> int:
        return len(self.queue)


def _split(address: str) -> tuple[str, int]:
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MnasfpnError(f"--ray-address {address!r} is not HOST:PORT (or auto)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing listens at a Ray address (Ray itself would retry for
    minutes, logging as it goes); `auto` is looked up first (`resolve_address`)."""
    if address == "auto":
        address = resolve_address(address)
    host, port = _split(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MnasfpnError(f"--ray-address {address}: no Ray cluster answers ({reason})") from None


def resolve_address(address: str) -> str:
    """HOST:PORT of `address`; for `auto`, the cluster Ray's own discovery finds
    (RAY_ADDRESS, else the last `ray start` on this machine), or a one-line error."""
    if address != "auto":
        return address
    # Ray: only when a search is pointed at a cluster
    from ray._private.services import get_ray_address_from_environment

    found = get_ray_address_from_environment("auto", None)
    if not found or found == "auto":
        raise MnasfpnError(
            "--ray-address auto: no running Ray cluster found on this machine (no RAY_ADDRESS, "
            "no ray start); start one (README: Ray clusters) or give HOST:PORT"
        )
    return str(found)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_node() -> None:
    """Make this process a loopback-only Ray node: Ray (2.x) replaces 127.0.0.1 by the
    machine's interface address and binds its servers on every interface unless told
    that the node is not part of a multi-machine cluster (the variable it reads for
    macOS and Windows). Set before Ray is imported, it reaches the processes Ray starts
    too; where Ray is already imported, its constant is set as well."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def _use_token_if_present() -> None:
    """Send the token to a cluster given by address when this machine has one and the
    user chose no mode: `ray start --head` enables token authentication whenever a token
    exists (~/.ray/auth_token, made by any local Ray instance), but a driver connecting by
    address does not, and fails with InvalidAuthToken."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:  # the helper Ray itself uses for `ray start` and `auto` (Ray >= 2.5x)
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


AUTH_HINT = (
    "if the cluster uses token authentication, give this machine the head's token "
    "(`ray get-auth-token` on the head) in ~/.ray/auth_token or RAY_AUTH_TOKEN and set "
    "RAY_AUTH_MODE=token"
)


class RayExecutor(Executor):
    """One Ray task per child (1 CPU each). A local instance is always a new, private one
    (Ray's address="local": a stale `ray start` never captures it), bound to loopback,
    with num_cpus = workers and no dashboard; with `address` (HOST:PORT or auto) the
    tasks go to that cluster (sized by the cluster), over loopback when it is local."""

    def __init__(self, evaluator: Evaluator, *, workers: int, address: str | None = None) -> None:
        target = None if not address else resolve_address(address)
        if target is not None:
            check_reachable(target)
        if target is None or is_loopback(_split(target)[0]):
            _loopback_node()
        # Ray: only when the search starts its workers
        import ray

        self.ray = ray
        self.evaluator = evaluator
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # Ray starts workers at niceness 15; children are the search's real work, so they
        # run at normal priority unless the user's environment says otherwise.
        os.environ.setdefault("RAY_worker_niceness", "0")
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "configure_logging": True,
        }
        try:
            if target is not None:
                _use_token_if_present()
                ray.init(address=target, **kwargs)
                cpus = int(ray.cluster_resources().get("CPU", workers))
                self.capacity = max(1, min(workers, cpus)) if workers else max(1, cpus)
            else:
                ray.init(address="local", num_cpus=workers, **kwargs)
                self.capacity = workers
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if target is None:
                raise MnasfpnError(f"cannot start a local Ray instance: {msg}") from None
            raise MnasfpnError(
                f"cannot connect to the Ray cluster at {target}: {msg}; {AUTH_HINT}"
            ) from None
        self._task = ray.remote(num_cpus=1, max_retries=0)(run_child)
        self._evaluator_ref = ray.put(evaluator)
        self._other_refs: dict[Any, Any] = {}  # other evaluators (finalists), put once each
        self.refs: dict[Any, int] = {}

    def submit(self, trial_id: int, genotype: Genotype, evaluator: Evaluator | None = None) -> None:
        ev_ref = self._evaluator_ref
        if evaluator is not None:
            ev_ref = self._other_refs.get(evaluator)
            if ev_ref is None:
                ev_ref = self._other_refs[evaluator] = self.ray.put(evaluator)
        ref = self._task.remote(ev_ref, genotype)
        self.refs[ref] = trial_id

    def wait(self, timeout: float) -> list[tuple[int, ChildResult]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            trial_id = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # worker died (killed, OOM): the child failed
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                result = ChildResult(map=None, error=f"{type(exc).__name__}: {first}")
            out.append((trial_id, result))
        return out

    def in_flight(self) -> int:
        return len(self.refs)

    def close(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        self.ray.shutdown()
