"""The proxy API: TensorFlow-free import, child failures become ProxyError, head slicing,
and (slow) a whole proxy child on a tiny synthetic set."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnasfpn.data import DataError, SynthSpec, write_synthetic
from mnasfpn.ir.build import build_opgraph
from mnasfpn.ir.config import DetectorConfig
from mnasfpn.lut.build import default_cache_dir as lut_cache
from mnasfpn.searchspace.genotype_json import genotype_from_dict
from mnasfpn.searchspace.named import get_architecture
from mnasfpn.train.proxy import proxy_evaluate, weak_head
from mnasfpn.train.proxy_config import ProxyBudget, ProxyBudgetError, ProxyError
from mnasfpn.train.proxy_config import default_cache_dir as proxy_cache

TINY_BUDGET = ProxyBudget(input_size=64, steps=3, batch_size=4, backbone_steps=3,
                          backbone_batch_size=4, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proxydata")
    write_synthetic(out, SynthSpec(train=8, val=4, size=64, classes=3, seed=1), force=True)
    return out


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, mnasfpn.train.proxy as p, mnasfpn.train.proxy_config as c;"
        "c.ProxyBudget(); p.weak_head();"
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


@pytest.mark.parametrize(
    "field, value, message",
    [("input_size", 100, "multiple of 64"), ("steps", 0, "steps"), ("lr", -1.0, "lr"),
     ("alpha", 3.0, "alpha"), ("threads", 0, "threads"), ("timeout_s", 0.0, "timeout")],
)  # fmt: skip
def test_bad_budget_is_one_line_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ProxyBudgetError, match=message):
        ProxyBudget(**{field: value})


def test_weak_head_is_a_valid_genotype_of_the_space() -> None:
    g = weak_head()
    assert genotype_from_dict(g.to_dict()) == g
    assert g.channels == 16 and {b.expansion for b in g.blocks} == {16} and g.repeats == 1


def test_missing_data_fails_before_spawning(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instances_train\.json"):
        proxy_evaluate(weak_head(), tmp_path, TINY_BUDGET, cache_dir=tmp_path / "c")


@pytest.mark.slow
def test_timeout_becomes_proxy_error(tiny_data: Path, tmp_path: Path) -> None:
    """The limit starts once the shared backbone exists (its build is not the child's)."""
    budget = ProxyBudget(**{**TINY_BUDGET.to_dict(), "timeout_s": 1.0, "steps": 10**6})
    with pytest.raises(ProxyError, match="limit"):
        proxy_evaluate(weak_head(), tiny_data, budget, cache_dir=tmp_path)
    assert not multiprocessing.active_children()
    assert len(list(tmp_path.glob("*/done.json"))) == 1  # the backbone was built in full


def test_killed_child_becomes_proxy_error(tiny_data: Path, tmp_path: Path) -> None:
    """A child killed as the OOM killer would (SIGKILL) raises in the caller, which goes on."""

    def killer() -> None:
        for _ in range(600):
            kids = multiprocessing.active_children()
            if kids:
                time.sleep(0.5)
                os.kill(kids[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(ProxyError, match="out of memory"):
        proxy_evaluate(weak_head(), tiny_data, TINY_BUDGET, cache_dir=tmp_path)
    thread.join()


def test_head_reads_only_cached_taps() -> None:
    from mnasfpn.train.head import build_head, is_frozen_backbone, tap_ops

    config = DetectorConfig(input_size=64, num_classes=3, alpha=0.35, depth=16)
    for genotype in (get_architecture("paper-mnasfpn", 1), weak_head()):
        graph = build_opgraph(genotype, config)
        head, levels = build_head(graph)
        taps = tap_ops(graph)
        assert [graph.ops[t].out_shape[0] for t in taps] == [8, 4, 2]
        assert [tuple(i.shape[1:]) for i in head.inputs] == [
            graph.ops[taps[lv]].out_shape for lv in levels
        ]
        codes, logits = head.outputs
        assert tuple(codes.shape[1:]) == (graph.ops[graph.outputs[0]].out_shape)
        assert tuple(logits.shape[1:]) == (graph.ops[graph.outputs[1]].out_shape)
        # Every trainable op of the child is in the head; no frozen backbone op is.
        names = {layer.name for layer in head.layers}
        assert not any(is_frozen_backbone(op) and op.name.replace("/", "_") in names
                       for op in graph.ops)  # fmt: skip
    assert levels == [0, 2]  # the weak head: C3 only as a residual, then C5


@pytest.mark.slow
def test_proxy_child_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    first = proxy_evaluate(weak_head(), tiny_data, TINY_BUDGET, cache_dir=tmp_path)
    assert first.backbone_seconds > 0 and first.steps == 3 and first.val_images == 4
    assert 0 <= first.map <= 1 and 0 <= first.map50 <= 1 and first.head_params > 0
    assert set(first.metrics) >= {"mAP", "mAP50", "mAP75", "mAP_small"}
    again = proxy_evaluate(weak_head(), tiny_data, TINY_BUDGET, cache_dir=tmp_path)
    assert again.backbone_seconds == 0  # the cached backbone and features are reused
    assert again.map == pytest.approx(first.map, abs=1e-6)  # same seed, same score
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def test_child_ends_when_caller_is_killed(tiny_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "caller.py"
    script.write_text(
        "import multiprocessing, sys, threading, time\n"
        "from mnasfpn.train.proxy import proxy_evaluate, weak_head\n"
        "from mnasfpn.train.proxy_config import ProxyBudget\n"
        "if __name__ == '__main__':\n"
        "    b = ProxyBudget(input_size=64, steps=10**6, batch_size=4, threads=1)\n"
        "    threading.Thread(target=proxy_evaluate, daemon=True,\n"
        f"        args=(weak_head(), {str(tiny_data)!r}, b),\n"
        f"        kwargs={{'cache_dir': {str(tmp_path / 'c')!r}}}).start()\n"
        "    while not multiprocessing.active_children(): time.sleep(0.05)\n"
        "    print(multiprocessing.active_children()[0].pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert caller.stdout is not None
    child = int(caller.stdout.readline())
    caller.kill()
    caller.wait()
    for _ in range(100):
        if not _running(child):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the proxy child outlived its killed caller by 10 s")


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_worker_side_does_not_import_the_caller_side() -> None:
    """No import circle: the child's module reads budgets and cache folders from
    proxy_config, not from the caller's module that spawns it."""
    code = (
        "import sys, mnasfpn.train.proxy_worker;"
        "sys.exit('mnasfpn.train.proxy' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_every_cache_follows_mnasfpn_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv("MNASFPN_CACHE_DIR", str(tmp_path / "c"))
    assert lut_cache() == tmp_path / "c"
    assert proxy_cache() == tmp_path / "c" / "proxy"
    monkeypatch.delenv("MNASFPN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert proxy_cache() == tmp_path / "x" / "mnasfpn" / "proxy"
