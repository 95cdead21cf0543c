"""Resolve what a user passes as `--arch`: a named architecture, a .json genotype or a
.jsonl file of them (one genotype document per line, as `mnasfpn sample` writes)."""

from __future__ import annotations

import json
from pathlib import Path

from mnasfpn.searchspace.genotype import (
    Genotype,
    GenotypeError,
    genotype_from_dict,
    load_genotype,
)
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture


def resolve_archs(spec: str, repeats: int | None = None) -> list[Genotype]:
    """NAME | FILE.json | FILE.jsonl → genotypes; errors are GenotypeError (one line)."""
    if spec in ARCHITECTURES:
        return [get_architecture(spec, repeats)]
    path = Path(spec)
    if not path.exists():
        raise GenotypeError(
            f"--arch {spec!r} is neither a named architecture ({', '.join(ARCHITECTURES)}) "
            "nor an existing .json/.jsonl file"
        )
    genotypes = load_jsonl(path) if path.suffix == ".jsonl" else [load_genotype(path)]
    if repeats is not None:
        genotypes = [g.with_repeats(repeats) for g in genotypes]
    return genotypes


def load_jsonl(path: Path) -> list[Genotype]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read ({exc.strerror})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}:{n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"{source}: not valid JSON ({exc.msg})") from None
        out.append(genotype_from_dict(doc, source=source))
    if not out:
        raise GenotypeError(f"{path}: no genotypes in file")
    return out
