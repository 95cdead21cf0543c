"""Named architectures: the paper's discovered cells and the NAS-FPNLite baseline."""

from __future__ import annotations

from collections.abc import Callable

from mnasfpn.registry import Registry
from mnasfpn.searchspace.genotype import Block, Genotype, GenotypeError
from mnasfpn.searchspace.spaces import get_space


def paper_mnasfpn(repeats: int = 4, *, sdo: bool = True) -> Genotype:
    """The discovered MnasFPN cell (paper Fig. 2): C = 48, one intermediate block."""
    blocks = (
        Block((1, 2), 4, 256, 3),  # intermediate, 20x20
        Block((0, 4), 3, 128, 3),
        Block((5, 4), 4, 128, 3),
        Block((4, 3), 5, 128, 5),
        Block((4, 3), 6, 96, 3),
    )
    name = "paper-mnasfpn" if sdo else "paper-mnasfpn-nosdo"
    return Genotype("mnasfpn", 48, blocks, repeats=repeats, sdo=sdo, name=name)


def nasfpnlite(repeats: int = 6) -> Genotype:
    fixed = get_space("nasfpnlite").fixed
    assert fixed is not None
    return fixed.with_repeats(repeats)


ARCHITECTURES: Registry[Callable[[int | None], Genotype]] = Registry(
    "architecture",
    {
        "paper-mnasfpn": lambda r: paper_mnasfpn(r or 4),
        "paper-mnasfpn-nosdo": lambda r: paper_mnasfpn(r or 4, sdo=False),
        "nasfpnlite": lambda r: nasfpnlite(r or 6),
    },
    hint="or give a genotype .json/.jsonl file",
    error=GenotypeError,
)


def get_architecture(name: str, repeats: int | None = None) -> Genotype:
    """A named architecture at `repeats` (its own repeat count when None)."""
    return ARCHITECTURES.get(name)(repeats)
