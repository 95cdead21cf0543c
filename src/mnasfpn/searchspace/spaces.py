"""The named search spaces (paper §4.1, Table 2) as data, plus one decision walker.

A genotype is a sequence of decisions. `walk` visits those decisions in order and asks a
`pick` callback for each; sampling, encoding (genotype → indices) and decoding (indices →
genotype) are the same walk with different callbacks, so they cannot disagree.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace

from mnasfpn.errors import MnasfpnError
from mnasfpn.registry import Registry
from mnasfpn.searchspace.genotype import (
    LEVELS,
    MERGES,
    NUM_CELL_INPUTS,
    Block,
    Genotype,
    GenotypeError,
)

EXPANSIONS: tuple[int, ...] = (16, 32, 64, 96, 128, 256, 512)
CHANNELS: tuple[int, ...] = (16, 32, 48, 64, 80, 96)
KERNELS: tuple[int, ...] = (3, 5, 7)


@dataclass(frozen=True)
class Decision:
    """One step of the controller: its name and the values it may take."""

    name: str
    choices: tuple[int | str, ...]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    channels: tuple[int, ...] = CHANNELS
    # None: F is tied to C (no expansion), as in no-expand and the NAS-FPN spaces.
    expansions: tuple[int, ...] | None = EXPANSIONS
    kernels: tuple[int, ...] = KERNELS
    merges: tuple[str, ...] = MERGES
    min_inputs: int = 2
    max_inputs: int = 2
    num_intermediate: int = 5
    sdo: bool = True
    repeats: int = 4
    # A fixed cell (a hand-made baseline) has no decisions: sampling returns it.
    fixed: Genotype | None = None

    def __post_init__(self) -> None:
        # The se merge gates one input by the other (x0 + x1·gate(x0)): it has two operands.
        if "se" in self.merges and self.max_inputs != 2:
            raise MnasfpnError(
                f"space {self.name!r}: the se merge takes exactly 2 inputs, but blocks may "
                f"have {self.min_inputs}..{self.max_inputs}; use merges=('add',) for more"
            )

    # -- decisions ------------------------------------------------------------------

    def walker(self) -> Generator[Decision, int | str, Genotype]:
        """The decisions in order, as a coroutine: `next()` gives the first decision,
        `send(value)` the next one, and StopIteration carries the genotype (not pruned).
        Several walks can advance in lockstep (the controller's batches)."""
        if self.fixed is not None:
            return self.fixed
        channels = int((yield Decision("channels", self.channels)))
        blocks = []
        num_blocks = self.num_intermediate + NUM_CELL_INPUTS
        for b in range(num_blocks):
            is_output = b >= self.num_intermediate
            available = list(range(NUM_CELL_INPUTS + b))
            inputs: list[int] = []
            for slot in range(self.max_inputs):
                choices: list[int] = [n for n in available if n not in inputs]
                if slot >= self.min_inputs:
                    choices = [-1, *choices]  # -1 ends the input list early
                value = int((yield Decision(f"block{b}.input{slot}", tuple(choices))))
                if value == -1:
                    break
                inputs.append(value)
            if is_output:
                level = LEVELS[b - self.num_intermediate]
            else:
                level = int((yield Decision(f"block{b}.level", LEVELS)))
            if self.expansions is None:
                expansion = channels
            else:
                expansion = int((yield Decision(f"block{b}.expansion", self.expansions)))
            kernel = int((yield Decision(f"block{b}.kernel", self.kernels)))
            merge = str((yield Decision(f"block{b}.merge", self.merges)))
            blocks.append(Block(tuple(inputs), level, expansion, kernel, merge))
        return Genotype(self.name, channels, tuple(blocks), self.repeats, self.sdo)

    def walk(self, pick: Callable[[Decision], int | str]) -> Genotype:
        """Run the decisions, asking `pick` for each value (the genotype is not pruned)."""
        steps = self.walker()
        try:
            decision = next(steps)
            while True:
                decision = steps.send(pick(decision))
        except StopIteration as done:
            return done.value

    def decode_decisions(self, indices: Sequence[int]) -> list[Decision]:
        """The decisions a sequence of choice indices meets (the schema of `decode`)."""
        seen: list[Decision] = []
        it = iter(indices)

        def pick(d: Decision) -> int | str:
            seen.append(d)
            i = next(it, None)
            if i is None or not 0 <= i < len(d.choices):
                raise GenotypeError(f"{d.name}: no valid choice index in the sequence")
            return d.choices[i]

        self.walk(pick)
        return seen

    def decision_slots(self) -> list[Decision]:
        """Every decision any walk of this space can meet, in walk order, each with every
        value it can ever take (a walk's own decision offers a subset: an input slot never
        offers a node already picked, and a walk that ends its inputs early skips the later
        slots). The controller's fixed vocabulary."""
        slots: list[Decision] = []

        def pick(d: Decision) -> int | str:
            head, _, field_name = d.name.partition(".")
            if field_name.startswith("input"):
                b = int(head.removeprefix("block"))
                slot = int(field_name.removeprefix("input"))
                early = (-1,) if slot >= self.min_inputs else ()
                slots.append(Decision(d.name, (*early, *range(NUM_CELL_INPUTS + b))))
                return next(c for c in d.choices if c != -1)  # visit every input slot
            slots.append(d)
            return d.choices[0]

        self.walk(pick)
        return slots

    def sample(self, rng: random.Random) -> Genotype:
        return self.walk(lambda d: rng.choice(d.choices))

    def encode(self, genotype: Genotype) -> list[int]:
        """Genotype → choice indices, one per decision."""
        if genotype.space != self.name:
            raise GenotypeError(f"genotype is of space {genotype.space!r}, not {self.name!r}")
        if self.fixed is not None:
            return []
        genotype = self.padded(genotype)
        out: list[int] = []

        def pick(d: Decision) -> int | str:
            value = _genotype_value(genotype, d.name)
            if value not in d.choices:
                raise GenotypeError(
                    f"{d.name}: {value!r} is not allowed in space {self.name!r} "
                    f"(choices: {list(d.choices)})"
                )
            out.append(d.choices.index(value))
            return value

        rebuilt = self.walk(pick)
        if rebuilt.blocks != genotype.blocks or rebuilt.channels != genotype.channels:
            raise GenotypeError(f"genotype does not fit the decisions of space {self.name!r}")
        return out

    def padded(self, genotype: Genotype) -> Genotype:
        """`genotype` with as many intermediate blocks as the decisions decide: its own
        intermediate blocks first, then filler blocks that no block reads (choice 0 at each
        of their decisions), then the output blocks, renumbered. Pruning gives `genotype`
        back, so every genotype of the space has a decision sequence (up to pruning)."""
        have, want = genotype.num_intermediate, self.num_intermediate
        if have >= want or have < 0:
            return genotype  # too many blocks: `encode` reports it
        shift = want - have
        first_output_node = NUM_CELL_INPUTS + have
        expansion = genotype.channels if self.expansions is None else self.expansions[0]
        filler = Block(
            tuple(range(self.min_inputs)), LEVELS[0], expansion, self.kernels[0], self.merges[0]
        )
        outputs = tuple(
            replace(b, inputs=tuple(i + shift if i >= first_output_node else i for i in b.inputs))
            for b in genotype.blocks[have:]
        )
        blocks = (*genotype.blocks[:have], *([filler] * shift), *outputs)
        return replace(genotype, blocks=blocks)

    def canonical(self, indices: Sequence[int], *, repeats: int | None = None) -> Genotype:
        """The genotype a decision sequence stands for: decoded, dead blocks pruned."""
        return pruned(self.decode(indices, repeats=repeats))

    def decode(self, indices: Sequence[int], *, repeats: int | None = None) -> Genotype:
        """Choice indices → genotype (the inverse of `encode`)."""
        it = iter(indices)

        def pick(d: Decision) -> int | str:
            try:
                i = next(it)
            except StopIteration:
                raise GenotypeError(f"decision sequence ends before {d.name}") from None
            if not 0 <= i < len(d.choices):
                raise GenotypeError(f"{d.name}: index {i} out of range 0..{len(d.choices) - 1}")
            return d.choices[i]

        genotype = self.walk(pick)
        if next(it, None) is not None:
            raise GenotypeError("decision sequence is longer than the space's decisions")
        return genotype if repeats is None else genotype.with_repeats(repeats)

    # -- validation -----------------------------------------------------------------

    def validate(self, genotype: Genotype, *, source: str = "genotype") -> None:
        """Raise GenotypeError (one line, naming block and field) unless the genotype fits."""
        if self.fixed is not None:
            if genotype.blocks != self.fixed.blocks or genotype.channels != self.fixed.channels:
                raise GenotypeError(
                    f"{source}: space {self.name!r} is a fixed cell; its blocks cannot change"
                )
            return
        if genotype.channels not in self.channels:
            raise GenotypeError(
                f"{source}: field 'channels' is {genotype.channels}, space {self.name!r} "
                f"allows {list(self.channels)}"
            )
        num_intermediate = genotype.num_intermediate
        if not 0 <= num_intermediate <= self.num_intermediate:
            raise GenotypeError(
                f"{source}: {len(genotype.blocks)} blocks; space {self.name!r} needs 4 output "
                f"blocks after 0..{self.num_intermediate} intermediate ones"
            )
        for b, block in enumerate(genotype.blocks):
            self._validate_block(genotype, b, block, f"{source}: block {b}")

    def _validate_block(self, genotype: Genotype, b: int, block: Block, where: str) -> None:
        n_in = len(block.inputs)
        if not self.min_inputs <= n_in <= self.max_inputs:
            want = (
                str(self.min_inputs)
                if self.min_inputs == self.max_inputs
                else f"{self.min_inputs}..{self.max_inputs}"
            )
            raise GenotypeError(f"{where}: field 'inputs' has {n_in} entries, expected {want}")
        node = NUM_CELL_INPUTS + b
        for i in block.inputs:
            if not 0 <= i < node:
                raise GenotypeError(
                    f"{where}: field 'inputs' has node {i}; block {b} (node {node}) may only "
                    f"read nodes 0..{node - 1}"
                )
        if len(set(block.inputs)) != n_in:
            raise GenotypeError(f"{where}: field 'inputs' repeats a node: {list(block.inputs)}")
        if genotype.is_output(b):
            want_level = LEVELS[b - genotype.num_intermediate]
            if block.level != want_level:
                raise GenotypeError(
                    f"{where}: field 'level' is {block.level}; output blocks are at levels "
                    f"3, 4, 5, 6 in order, this one must be {want_level}"
                )
        elif block.level not in LEVELS:
            raise GenotypeError(f"{where}: field 'level' is {block.level}, must be in 3..6")
        if self.expansions is None:
            if block.expansion != genotype.channels:
                raise GenotypeError(
                    f"{where}: field 'expansion' is {block.expansion}; space {self.name!r} "
                    f"ties it to channels ({genotype.channels})"
                )
        elif block.expansion not in self.expansions:
            raise GenotypeError(
                f"{where}: field 'expansion' is {block.expansion}, allowed {list(self.expansions)}"
            )
        if block.kernel not in self.kernels:
            raise GenotypeError(
                f"{where}: field 'kernel' is {block.kernel}, allowed {list(self.kernels)}"
            )
        if block.merge not in self.merges:
            raise GenotypeError(
                f"{where}: field 'merge' is {block.merge!r}, allowed {list(self.merges)}"
            )

    def cardinality(self) -> int:
        """Number of distinct genotypes (decision sequences) in the space."""
        if self.fixed is not None:
            return 1
        total = len(self.channels)
        for b in range(self.num_intermediate + NUM_CELL_INPUTS):
            nodes = NUM_CELL_INPUTS + b
            ways = 0
            # Ordered selections of k distinct nodes, k in min..max inputs.
            for k in range(self.min_inputs, self.max_inputs + 1):
                perm = 1
                for j in range(k):
                    perm *= nodes - j
                ways += perm
            total *= ways
            if b < self.num_intermediate:
                total *= len(LEVELS)
            total *= len(self.expansions or (0,)) * len(self.kernels) * len(self.merges)
        return total


def pruned(genotype: Genotype) -> Genotype:
    """`genotype` without the intermediate blocks that no output block reaches, nodes
    renumbered. They build no live op (paper §3.4; the table and the IR drop them too), so
    the pruned genotype has the same latency and trains the same model: it is the one form
    a search stores, compares and trains."""
    live = genotype.live()
    if all(live):
        return genotype
    node = list(range(NUM_CELL_INPUTS))
    for b, alive in enumerate(live):
        node.append(NUM_CELL_INPUTS + sum(live[:b]) if alive else -1)
    blocks = tuple(
        replace(block, inputs=tuple(node[i] for i in block.inputs))
        for block, alive in zip(genotype.blocks, live, strict=True)
        if alive
    )
    return replace(genotype, blocks=blocks)


def _genotype_value(genotype: Genotype, name: str) -> int | str:
    if name == "channels":
        return genotype.channels
    head, _, field_name = name.partition(".")
    b = int(head.removeprefix("block"))
    if b >= len(genotype.blocks):
        raise GenotypeError(f"genotype has {len(genotype.blocks)} blocks, the space needs more")
    block = genotype.blocks[b]
    if field_name.startswith("input"):
        slot = int(field_name.removeprefix("input"))
        return block.inputs[slot] if slot < len(block.inputs) else -1
    return getattr(block, field_name)


def _nasfpnlite_cell() -> Genotype:
    # NAS-FPN's discovered cell (Ghiasi et al. 2019, Fig. 7f) folded onto levels 3..6:
    # its P7 output has no level here, so the P6 output reads the P6 cell input instead.
    # "Global attention" merges map to `se`; every conv is separable, F = C = 64, no SDO.
    c = 64
    blocks = (
        Block((1, 3), 4, c, 3, "se"),
        Block((1, 4), 4, c, 3, "add"),
        Block((0, 5), 3, c, 3, "add"),
        Block((5, 6), 4, c, 3, "add"),
        Block((6, 7), 5, c, 3, "se"),
        Block((8, 3), 6, c, 3, "se"),
    )
    return Genotype("nasfpnlite", c, blocks, repeats=6, sdo=False, name="nasfpnlite")


SPACES: Registry[SearchSpace] = Registry(
    "search space",
    {
        s.name: s
        for s in (
            SearchSpace("mnasfpn", "MnasFPN: generalized inverted-residual blocks with SDO"),
            SearchSpace("no-expand", "MnasFPN without expansion: F = C", expansions=None),
            SearchSpace(
                "nasfpnlite-s",
                "NAS-FPN space, separable convs: k=3, C=64, F=C, no SDO",
                channels=(64,),
                expansions=None,
                kernels=(3,),
                sdo=False,
            ),
            SearchSpace(
                "conn-search",
                "MnasFPN with 2..4 inputs per block, add merges only",
                merges=("add",),
                max_inputs=4,
            ),
            SearchSpace(
                "nasfpnlite",
                "The fixed NAS-FPN cell with separable convs, C=64 (hand-made baseline)",
                channels=(64,),
                expansions=None,
                kernels=(3,),
                sdo=False,
                repeats=6,
                fixed=_nasfpnlite_cell(),
            ),
        )
    },
)
# What `mnasfpn search --space` offers: the spaces with decisions (a fixed cell is a seed).
SEARCHABLE = SPACES.subset(
    lambda space: space.fixed is None,
    refuse=lambda name, _: (
        f"space {name!r} is a fixed cell with nothing to search; search "
        f"nasfpnlite-s with --seed-arch {name} to start from it"
    ),
)


def get_space(name: str) -> SearchSpace:
    return SPACES.get(name)


def sample_genotypes(space: str | SearchSpace, n: int, seed: int) -> list[Genotype]:
    sp = get_space(space) if isinstance(space, str) else space
    rng = random.Random(seed)
    return [sp.sample(rng) for _ in range(n)]
