"""Write a file so that readers see the old content or the new, never half of it; and never
write over a file the command did not make (without --force) or over its own input."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mnasfpn.errors import MnasfpnError


class OutputError(MnasfpnError):
    """An output path that would destroy data: an existing file, or the command's input."""


def _same_file(a: Path, b: Path) -> bool:
    """Same inode (hard links, symlinks, bind mounts) or, where either is missing, the same
    resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(
    path: Path | str,
    *,
    inputs: Iterable[Path | str] = (),
    force: bool = False,
    option: str = "--out",
) -> Path:
    """Refuse (one line) an output that is one of the command's `inputs` (even with
    --force: the input would be gone before it was read), that is a folder, or that exists
    and `force` is not given. Call it before the work, so nothing is computed in vain."""
    path = Path(path)
    for src in inputs:
        if _same_file(path, Path(src)):
            raise OutputError(
                f"{option} {path} is the input {src}: writing it would destroy what is being "
                f"read; choose another {option}"
            )
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    if not force and (path.exists() or path.is_symlink()):
        raise OutputError(
            f"{path} exists; pass --force to overwrite it, or choose another {option}"
        )
    return path


def check_output_dir(path: Path | str, *, option: str = "--out") -> Path:
    """Refuse (one line) an output folder that names a file, or lies under one (mkdir
    would fail with an OS message that names neither the option nor the file). The
    folder's own files are each checked with `check_output` by the command."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; give a folder name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"{option} {path}: {parent} is a file, so no folder can be made under it"
                )
            break
    return path


def write_atomic(path: Path | str, data: bytes | str, *, replace: bool = True) -> Path:
    """Write to a temporary file beside `path`, then rename over it: a run killed mid-write
    leaves no truncated model or genotype file for a later run to trip over.

    With `replace=False` an existing `path` is never replaced, even one that appeared
    while the data was written (the final step is a hard link, which fails if the name
    is taken): `OutputError` says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        # mkstemp makes the file private (0600); a written output gets the usual mode.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(Path(tmp), path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(
            f"{path} exists; pass --force to overwrite it, or choose another name"
        ) from None
    except OSError:
        # A file system without hard links (some FUSE and network mounts): the check just
        # before the rename is the best that remains.
        if path.exists() or path.is_symlink():
            raise OutputError(
                f"{path} exists; pass --force to overwrite it, or choose another name"
            ) from None
        os.replace(tmp, path)
