"""Tables without TensorFlow: build, validate, predict, profile and devices run in a
process where TensorFlow cannot be imported; commands that need it say so in one line.

A `sitecustomize` on PYTHONPATH (loaded by every Python process started here, the host
timing workers included) refuses `tensorflow` and `keras` and logs each attempt, so the
test sees both failures and silent fallbacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKER = """
import importlib.machinery, os, sys

BLOCKED = ("tensorflow", "keras", "tf_keras")

class _NotInstalled:
    # Wraps the path finder: the blocked packages look absent (find_spec gives None,
    # import raises ModuleNotFoundError), exactly as where they are not installed.
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(os.environ["NO_TF_LOG"], "a") as log:
                log.write(name + "\\n")
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [
    _NotInstalled(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
"""
LUT = "from mnasfpn.cli import lut_main; lut_main()"
ARCH = "from mnasfpn.cli import main; main()"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("no-tf")
    (root / "sitecustomize.py").write_text(BLOCKER)
    path = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "NO_TF_LOG": str(root / "attempts.log"),
        "MNASFPN_CACHE_DIR": str(root / "cache"),
    }


def _run(env: dict[str, str], cli: str, *args: str) -> subprocess.CompletedProcess[str]:
    log = Path(env["NO_TF_LOG"])
    log.unlink(missing_ok=True)
    return subprocess.run(
        [sys.executable, "-c", cli, *args], env=env, capture_output=True, text=True, timeout=600
    )


def _attempts(env: dict[str, str]) -> list[str]:
    log = Path(env["NO_TF_LOG"])
    return log.read_text().split() if log.exists() else []


def test_the_blocker_blocks(env: dict[str, str]) -> None:
    res = _run(env, "import tensorflow")
    assert res.returncode != 0 and "No module named 'tensorflow'" in res.stderr
    assert _attempts(env) == ["tensorflow"]
    res = _run(env, "import importlib.util; assert importlib.util.find_spec('keras') is None")
    assert res.returncode == 0, res.stderr


# Not marked slow (~30 s on 2 busy cores): it is what keeps tables free of TensorFlow.
def test_build_validate_predict_profile_without_tensorflow(
    env: dict[str, str], tmp_path: Path
) -> None:
    lut = tmp_path / "host.sqlite"
    fast = ("--set", "num_runs=5", "--set", "warmup_runs=1", "--set", "max_repeats=3")
    res = _run(
        env, LUT, "build", "--device", "host", "--space", "nasfpnlite-s", "--input-size", "64",
        "--out", str(lut), "--passes", "1", "--quiet", *fast,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "table has" in res.stdout and _attempts(env) == []

    res = _run(
        env, LUT, "validate", "--lut", str(lut), "--samples", "4", "--rounds", "1",
        "--report", str(tmp_path / "rep"), "--quiet", "--min-r2", "-100", *fast,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rep" / "report.md").stat().st_size > 0 and _attempts(env) == []

    res = _run(env, LUT, "predict", "--lut", str(lut), "--arch", "nasfpnlite")
    assert res.returncode == 0 and "ms" in res.stdout, res.stderr
    assert _attempts(env) == []

    models = sorted(Path(env["MNASFPN_CACHE_DIR"]).rglob("*.tflite"))
    res = _run(env, LUT, "profile", str(models[0]), "--device", "host", *fast)
    assert res.returncode == 0, res.stderr
    res = _run(env, LUT, "devices")
    assert res.returncode == 0, res.stderr
    assert _attempts(env) == []


def test_commands_that_need_tensorflow_say_so_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    res = _run(
        env, LUT, "build", "--device", "host", "--space", "nasfpnlite", "--input-size", "64",
        "--out", str(tmp_path / "t.sqlite"), "--converter", "tf", "--quiet",
    )  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "pip install 'mnasfpn[train]'" in res.stderr
    assert not (tmp_path / "t.sqlite").exists()  # refused before anything was measured

    export = ("export", "--arch", "nasfpnlite", "--input-size", "128", "--out")
    res = _run(env, ARCH, *export, str(tmp_path / "tf.tflite"), "--converter", "tf")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "needs TensorFlow" in res.stderr and "mnasfpn[train]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "tf.tflite").exists()
    (tmp_path / "data").mkdir()
    res = _run(env, ARCH, "train", "--arch", "paper-mnasfpn", "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "run"), "--steps", "1")  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "needs TensorFlow" in res.stderr and "mnasfpn[train]" in res.stderr
    # An untrained detector needs no TensorFlow: the direct writer makes it.
    res = _run(env, ARCH, *export, str(tmp_path / "direct.tflite"))
    assert res.returncode == 0 and "box encodings" in res.stdout, res.stderr
    assert _attempts(env) == []
