"""IR op key → single-op .tflite, cached on disk by key and by what made it.

Each micro-model has the op's activation inputs as model inputs and the op as its only
op. The direct writer (the default, no TensorFlow) writes it from the key; the TensorFlow
converter (`converter="tf"`, the reference) converts a one-layer Keras model built by the
detector's own layer factory; both give the same op (tests/test_tflite_writer.py).
Converter runs go to worker processes (it is single-threaded for most of its time); files
are written atomically, so a killed build leaves no half file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from mnasfpn.atomic import write_atomic
from mnasfpn.errors import MnasfpnError
from mnasfpn.ir.ops import op_type_of
from mnasfpn.model.convert import CONVERTERS, DEFAULT_CONVERTER, converter_id
from mnasfpn.parallel import spawn_map


def cache_path(key: str, cache_dir: Path, converter: str = DEFAULT_CONVERTER) -> Path:
    # Keys are readable but long; a digest keeps file names short and safe everywhere.
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return Path(cache_dir) / converter_id(converter) / f"{op_type_of(key)}-{digest}.tflite"


def convert_key(key: str, out: Path, converter: str = DEFAULT_CONVERTER) -> Path:
    return write_atomic(out, CONVERTERS.get(converter).micromodel(key))


def _convert_many(
    keys: list[str], cache_dir: str, converter: str = DEFAULT_CONVERTER
) -> list[tuple[str, str | None]]:
    done = []
    for key in keys:
        out = cache_path(key, Path(cache_dir), converter)
        try:
            convert_key(key, out, converter)
            done.append((key, None))
        except Exception as exc:  # reported per key by the caller
            done.append((key, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return done


class MicromodelError(MnasfpnError, RuntimeError):
    pass


def micromodel_paths(
    keys: Sequence[str],
    cache_dir: Path | str,
    *,
    jobs: int = 2,
    progress: Callable[[int], None] | None = None,
    chunk: int = 8,
    converter: str = DEFAULT_CONVERTER,
) -> dict[str, Path]:
    """Path of each key's micro-model, converting the missing ones (`jobs` processes).
    `progress(n)` is called as n more keys are ready."""
    cache_dir = Path(cache_dir)
    paths = {key: cache_path(key, cache_dir, converter) for key in dict.fromkeys(keys)}
    missing = [k for k, p in paths.items() if not p.exists()]
    if progress and len(paths) > len(missing):
        progress(len(paths) - len(missing))
    if not missing:
        return paths
    failures: list[tuple[str, str]] = []
    batches = [missing[i : i + chunk] for i in range(0, len(missing), chunk)]
    # The direct writer takes milliseconds a model: a worker process would cost more.
    jobs = 1 if CONVERTERS.get(converter).in_process else jobs
    tasks = [(b, str(cache_dir), converter) for b in batches]
    for done in spawn_map(_convert_many, tasks, jobs):
        failures += [(k, e) for k, e in done if e]
        if progress:
            progress(len(done))
    if failures:
        key, err = failures[0]
        raise MicromodelError(f"{len(failures)} op(s) failed to convert, first {key!r}: {err}")
    return paths
