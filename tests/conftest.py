"""Fixtures shared by the test modules: the small TFLite models the device tests time
(converted once per test session), and a way to run a command on a read-only folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ReadOnlyRunner = Callable[[Path, Sequence[str]], subprocess.CompletedProcess[str]]

# Bind-mount the folder onto itself read-only inside a private mount namespace, then run
# the command there: read-only even for root, who ignores file modes.
_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small float models and a corrupt file (see adbd_emulator.fixtures)."""
    from adbd_emulator.fixtures import build_models

    return build_models(tmp_path_factory.mktemp("models"))


def _can_mount_readonly(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "ro-probe"
    probe.mkdir(exist_ok=True)
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _RO_MOUNT, str(probe),
         "sh", "-c", "! touch \"$0/x\" 2>/dev/null", str(probe)],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return res.returncode == 0


@pytest.fixture(scope="session")
def run_readonly(tmp_path_factory: pytest.TempPathFactory) -> ReadOnlyRunner:
    """run_readonly(folder, argv): argv run with `folder` and every file in it read-only
    (file modes for a normal user; a read-only bind mount for root). Skips the test when
    neither is possible."""
    root = os.geteuid() == 0
    if root and not _can_mount_readonly(tmp_path_factory.mktemp("ro")):
        pytest.skip("running as root without mount namespaces: cannot make a folder read-only")

    def run(folder: Path, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if root:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", _RO_MOUNT,
                   str(folder), *argv]  # fmt: skip
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)

    return run
