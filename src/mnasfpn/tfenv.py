"""Quiet TensorFlow start-up: set before it is first imported in this process or in the
worker processes it spawns (they inherit the environment)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnasfpn.errors import MnasfpnError


class TensorflowMissingError(MnasfpnError, ImportError):
    """TensorFlow (the `train` extra) is not installed, and this command needs it."""


def quiet_tensorflow() -> None:
    # 3 hides TensorFlow's own C++ logging below errors; a user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def load_tensorflow() -> Any:
    """Import TensorFlow (and with it Keras' backend) without its start-up banner.

    On a CPU-only machine its import prints oneDNN and "no CUDA driver" lines through absl
    before any log level applies; they would bury a command's real output (and repeat once
    per worker process). The import's stderr is held back and shown only if it fails."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    missing: ModuleNotFoundError | None = None
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        # TensorFlow: imported here and only here, when a command or worker needs it
        try:
            import tensorflow as tf
        except BaseException as exc:
            if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
                "tensorflow",
                "keras",
            ):
                missing = exc  # not installed: said in one line below, no banner
            else:
                os.dup2(saved, 2)
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if missing is not None:
        raise TensorflowMissingError(
            "this command needs TensorFlow, which is not installed (training and exporting "
            "trained models do; tables do not): pip install 'mnasfpn[train]'"
        ) from None
    return tf


def keras_backend() -> str:
    """The backend Keras will load, read without importing Keras (which, on TensorFlow's
    backend, imports TensorFlow): KERAS_BACKEND, else ~/.keras/keras.json, else TensorFlow."""
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
        try:
            name = json.loads(config.read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return name or "tensorflow"


def load_keras() -> Any:
    """Import Keras: through load_tensorflow on its TensorFlow backend (quiet, and a one-line
    error where TensorFlow is missing); directly on any other (JAX), so that TensorFlow is
    never imported there."""
    if keras_backend() == "tensorflow":
        load_tensorflow()
    # Keras: only when asked for, after TensorFlow (its usual backend) is set up
    import keras

    return keras
