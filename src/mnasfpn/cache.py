"""Where the project keeps what it can rebuild (micro-models, exported detectors, the
proxy's backbone and features, supernets): one root for all of them, so one setting moves
every cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MNASFPN_CACHE_DIR``, else ``$XDG_CACHE_HOME/mnasfpn``, else ``~/.cache/mnasfpn``."""
    env = os.environ.get("MNASFPN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnasfpn"
