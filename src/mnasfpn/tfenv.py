"""Quiet TensorFlow start-up, set before it is first imported in this process or in the
worker processes it spawns (they inherit the environment)."""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    # 3 hides the C++ start-up chatter, including the "failed call to cuInit" error every
    # CPU-only machine prints; a user can still set their own level beforehand.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
