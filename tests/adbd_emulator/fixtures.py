"""Shared helpers for the device tests: tiny .tflite models and a private adb server."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_MODELS: dict[str, Path] = {}

# Fast profile settings for tests: the emulator's benchmark_model really runs LiteRT.
QUICK = {"num_runs": 5, "warmup_runs": 1, "min_repeats": 2, "max_repeats": 3, "cooldown_s": 0.0}


def build_models(directory: Path) -> dict[str, Path]:
    """Two small float models and a corrupt file; built once per test process."""
    if _MODELS:
        return dict(_MODELS)
    from mnasfpn.model.export import convert_keras
    from mnasfpn.tfenv import load_tensorflow

    load_tensorflow()
    import keras

    def convert(model: keras.Model, name: str) -> Path:
        path = directory / f"{name}.tflite"
        path.write_bytes(convert_keras(model))
        return path

    tiny = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, padding="same", activation="relu")]
    )
    small = keras.Sequential(
        [
            keras.Input((32, 32, 8)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.Conv2D(16, 1),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    _MODELS["tiny"] = convert(tiny, "tiny")
    _MODELS["small"] = convert(small, "small")
    corrupt = directory / "corrupt.tflite"
    corrupt.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    _MODELS["corrupt"] = corrupt
    return dict(_MODELS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def adb_binary() -> str:
    from adbutils._utils import adb_path

    return str(adb_path())


@contextmanager
def private_adb_server() -> Iterator[int]:
    """An adb server on a free non-default port, killed afterwards."""
    adb = adb_binary()
    port = free_port()
    env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(port))
    subprocess.run(
        [adb, "-P", str(port), "start-server"], env=env, check=True, capture_output=True, timeout=60
    )
    try:
        yield port
    finally:
        subprocess.run(
            [adb, "-P", str(port), "kill-server"], env=env, capture_output=True, timeout=60
        )


def adb_connect(port: int, address: str, timeout: float = 20.0) -> None:
    """``adb connect`` and wait until the server reports the target as a device."""
    adb = adb_binary()
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            [adb, "-P", str(port), "connect", address], capture_output=True, text=True, timeout=30
        ).stdout
        devices = subprocess.run(
            [adb, "-P", str(port), "devices"], capture_output=True, text=True, timeout=30
        ).stdout
        if f"{address}\tdevice" in devices:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"adb connect {address} failed: {out.strip()} / {devices}")
        time.sleep(0.2)
