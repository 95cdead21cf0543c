"""One small interface for every search strategy: propose a batch of decision sequences,
learn from their rewards, and save / restore its whole state (checkpointed with trials)."""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnasfpn.errors import MnasfpnError
from mnasfpn.searchspace.genotype import Genotype
from mnasfpn.searchspace.spaces import Decision, SearchSpace


@dataclass(frozen=True)
class Proposal:
    """A child to evaluate: its decision indices, the pruned genotype they stand for, and
    what the strategy needs back when it learns (e.g. the sampling-time log-probability)."""

    indices: tuple[int, ...]
    genotype: Genotype
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """A proposal's result: its reward, or None when the child failed for reasons that say
    nothing about the architecture (a crash, an out-of-memory kill)."""

    proposal: Proposal
    reward: float | None


class Strategy(ABC):
    name: str = ""

    def __init__(self, space: SearchSpace, *, seed: int, repeats: int | None = None) -> None:
        if space.fixed is not None:
            raise MnasfpnError(
                f"space {space.name!r} is a fixed cell with nothing to search; search "
                "nasfpnlite-s and pass --seed-arch nasfpnlite to start from it"
            )
        self.space = space
        self.repeats = repeats if repeats is not None else space.repeats
        self.rng = np.random.default_rng(seed)

    # -- the interface ----------------------------------------------------------------

    @abstractmethod
    def propose(self, n: int) -> list[Proposal]:
        """n new children (asynchronous: results of earlier ones may still be out)."""

    @abstractmethod
    def learn(self, outcomes: Sequence[Outcome]) -> None:
        """Take finished children into account, in the order they finished."""

    def adopt(self, indices: Sequence[int]) -> Proposal:
        """A proposal for a given sequence (a seed architecture), in this strategy's terms."""
        return self.proposal(indices)

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: JSON values and numpy arrays."""
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # -- helpers shared by the strategies ----------------------------------------------

    def proposal(self, indices: Sequence[int], **info: Any) -> Proposal:
        indices = tuple(int(i) for i in indices)
        return Proposal(indices, self.space.canonical(indices, repeats=self.repeats), info)

    def pick_uniform(self, d: Decision) -> int:
        return int(self.rng.integers(len(d.choices)))

    def sample_uniform(self) -> tuple[int, ...]:
        out: list[int] = []

        def pick(d: Decision) -> int | str:
            i = self.pick_uniform(d)
            out.append(i)
            return d.choices[i]

        self.space.walk(pick)
        return tuple(out)

    def arrays_version(self) -> str | None:
        """Changes whenever the state's numpy arrays change (None: at any time). Lets the
        store rewrite the large arrays (PPO's weights) only after they changed."""
        return None

    def save_parts(self, *, arrays: bool = True) -> tuple[bytes, bytes | None]:
        """The state as (JSON part, arrays part); the arrays only when asked for."""
        state = self.get_state()
        light = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        heavy = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        return json.dumps(light).encode(), (pack_state(heavy) if arrays else None)

    def restore_parts(self, light: bytes, heavy: bytes | None) -> None:
        state = json.loads(light.decode())
        if heavy is not None:
            state.update(unpack_state(heavy))
        self.set_state(state)


def pack_state(state: dict[str, Any]) -> bytes:
    """A state dict → bytes: numpy arrays in an .npz, everything else as one JSON entry."""
    arrays = {f"a_{k}": v for k, v in state.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps(rest).encode(), dtype=np.uint8)
    np.savez(buf, __json__=meta, **arrays)
    return buf.getvalue()


def unpack_state(blob: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        state: dict[str, Any] = json.loads(npz["__json__"].tobytes().decode())
        for k in npz.files:
            if k.startswith("a_"):
                state[k[2:]] = npz[k].copy()
    return state
