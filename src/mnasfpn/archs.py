"""Resolve what a user passes as `--arch`: a named architecture, a .json genotype or a
.jsonl file of them (one genotype document per line, as `mnasfpn sample` writes)."""

from __future__ import annotations

from pathlib import Path

from mnasfpn.searchspace.genotype import Genotype, GenotypeError
from mnasfpn.searchspace.genotype_json import (
    genotype_from_dict,
    load_genotype,
    parse_json,
    read_text,
)
from mnasfpn.searchspace.named import ARCHITECTURES, get_architecture


def resolve_archs(spec: str, repeats: int | None = None) -> list[Genotype]:
    """NAME | FILE.json | FILE.jsonl → genotypes; errors are one line (`MnasfpnError`)."""
    if spec in ARCHITECTURES:
        return [get_architecture(spec, repeats)]
    path = Path(spec)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long, or with a NUL byte
        exists = False
    if not exists:
        raise ARCHITECTURES.unknown(spec)
    is_lines = path.suffix.lower() == ".jsonl"
    genotypes = load_jsonl(path) if is_lines else [load_genotype(path)]
    if repeats is not None:
        genotypes = [g.with_repeats(repeats) for g in genotypes]
    return genotypes


def load_jsonl(path: Path) -> list[Genotype]:
    """JSON Lines: one genotype document per line; errors name the file and line."""
    out = []
    # Only \n ends a line in JSON Lines (str.splitlines would also split on U+2028 etc.).
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        source = f"{path}:{n}"
        out.append(genotype_from_dict(parse_json(line, source=source), source=source))
    if not out:
        raise GenotypeError(f"{path}: no genotypes in file")
    return out
