"""Loopback adbd: the device side of the ADB protocol over TCP on 127.0.0.1.

One thread accepts connections; each connection has a reader thread that dispatches
messages to streams, and each stream (``shell:`` or ``sync:``) runs in its own thread so
that flow control (WRTE → wait for OKAY) never blocks the reader.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from adbd_emulator.benchmark import DropConnection, binary_bytes
from adbd_emulator.fs import Sandbox
from adbd_emulator.protocol import (
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_WRTE,
    MAX_PAYLOAD,
    VERSION_SKIP_CHECKSUM,
    Message,
    read_message,
)
from adbd_emulator.shell import ShellState, run_shell

_SYNC_DATA_MAX = 64 * 1024
_OKAY_WAIT_S = 30.0


@dataclass
class EmulatorConfig:
    model: str = "Pixel 4"
    device: str = "flame"
    abi: str = "arm64-v8a"
    release: str = "10"
    sdk: str = "29"
    cpus: int = 8
    governor: str = "schedutil"
    max_khz: int = 2841600
    cur_khz: int = 1785600
    temp_millic: int = 36500
    layout: str = "new"  # "new", "old" or "old-nostats"
    # Behaviour of /data/local/tmp/benchmark_model: "ok", "crash", "garbage", or None
    # for no binary at all.
    benchmark: str | None = "ok"
    benchmark_path: str = "/data/local/tmp/benchmark_model"
    # Faults: cut the TCP connection after this many bytes of one SEND's DATA, the next
    # ``drop_push_times`` pushes; and during the next ``drop_run_times`` benchmark runs.
    drop_push_after_bytes: int | None = None
    drop_push_times: int = 0
    drop_run_times: int = 0
    extra_props: dict[str, str] = field(default_factory=dict)
    # Thermal throttling in phases: (benchmark runs, slow-down factor), cycled. While a
    # phase's factor is above 1 every reported time is that much longer, the big cores'
    # scaling_max_freq is capped by the same factor and the SoC reads 20 °C hotter.
    throttle_phases: tuple[tuple[int, float], ...] = ()
    # A scripted pace in phases: (benchmark runs, slow-down factor), cycled. Every
    # reported time is that much longer and nothing else shows it (no frequency cap, no
    # heat): a phone (or a core) that runs slower in phases for reasons it does not report.
    pace_phases: tuple[tuple[int, float], ...] = ()
    # Time benchmark_model's invocations on thread CPU time rather than the wall clock.
    cpu_clock: bool = False
    # Report every invocation of a model as one fixed time (its file size in kB, as µs)
    # instead of what LiteRT took here: the scripted phases are then the only thing that
    # moves the phone's times, so a test can hold a statistic to a tight bound on a busy
    # test machine. LiteRT still runs each model (outputs and failures stay real).
    steady_times: bool = False


def _size_us(model: Path) -> float:
    return model.stat().st_size / 1000


class _Dropped(Exception):
    pass


class _Stream:
    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.closed = threading.Event()
        self._okay = threading.Event()
        self._inbox = bytearray()
        self._cond = threading.Condition()

    # device -> host
    def write(self, data: bytes) -> None:
        for i in range(0, len(data), self.conn.max_payload):
            self._okay.clear()
            self.conn.send(
                Message(A_WRTE, self.local_id, self.remote_id, data[i : i + self.conn.max_payload])
            )
            deadline = time.monotonic() + _OKAY_WAIT_S
            while not self._okay.wait(0.05):
                if self.closed.is_set() or self.conn.dead.is_set() or time.monotonic() > deadline:
                    raise _Dropped("stream closed while writing")

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            with contextlib.suppress(OSError):
                self.conn.send(Message(A_CLSE, self.local_id, self.remote_id))
        with self._cond:
            self._cond.notify_all()

    # host -> device
    def on_okay(self) -> None:
        self._okay.set()

    def on_data(self, data: bytes) -> None:
        with self._cond:
            self._inbox.extend(data)
            self._cond.notify_all()

    def on_remote_close(self) -> None:
        self.close()

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._inbox) < n:
                if self.closed.is_set() or self.conn.dead.is_set():
                    raise _Dropped("stream closed while reading")
                self._cond.wait(0.05)
            out = bytes(self._inbox[:n])
            del self._inbox[:n]
            return out


class _Connection:
    def __init__(self, emu: AdbdEmulator, sock: socket.socket) -> None:
        self.emu = emu
        self.sock = sock
        self.dead = threading.Event()
        self.max_payload = 4096
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1

    def send(self, msg: Message) -> None:
        with self._send_lock:
            if self.dead.is_set():
                raise OSError("connection is dead")
            self.sock.sendall(msg.pack())

    def drop(self) -> None:
        """Cut the link like a yanked cable: no CLSE, just a closed socket."""
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for s in list(self._streams.values()):
            s.closed.set()

    def serve(self) -> None:
        try:
            while not self.dead.is_set():
                self._dispatch(read_message(self.sock))
        except (OSError, ConnectionError):
            pass
        finally:
            self.drop()

    def _dispatch(self, msg: Message) -> None:
        if msg.command == A_CNXN:
            version = min(msg.arg0, VERSION_SKIP_CHECKSUM)
            self.max_payload = max(4096, min(msg.arg1, MAX_PAYLOAD))
            self.send(Message(A_CNXN, version, MAX_PAYLOAD, self.emu.banner()))
        elif msg.command == A_OPEN:
            self._open(msg.arg0, msg.data.rstrip(b"\x00").decode(errors="replace"))
        elif msg.command == A_OKAY:
            stream = self._streams.get(msg.arg1)
            if stream is not None:
                stream.on_okay()
        elif msg.command == A_WRTE:
            stream = self._streams.get(msg.arg1)
            if stream is None:
                self.send(Message(A_CLSE, 0, msg.arg0))
                return
            stream.on_data(msg.data)
            self.send(Message(A_OKAY, stream.local_id, stream.remote_id))
        elif msg.command == A_CLSE:
            stream = self._streams.pop(msg.arg1, None)
            if stream is not None:
                stream.on_remote_close()
        # AUTH/STLS never arrive: we reply CNXN directly and advertise no TLS.

    def _open(self, remote_id: int, dest: str) -> None:
        if dest.startswith("shell:"):
            target = self.emu.serve_shell
            arg = dest[len("shell:") :]
        elif dest.startswith("sync:"):
            target = self.emu.serve_sync
            arg = ""
        else:
            self.send(Message(A_CLSE, 0, remote_id))
            return
        local_id = self._next_id
        self._next_id += 1
        stream = _Stream(self, local_id, remote_id)
        self._streams[local_id] = stream
        self.send(Message(A_OKAY, local_id, remote_id))
        threading.Thread(target=self._run_stream, args=(target, stream, arg), daemon=True).start()

    def _run_stream(self, target, stream: _Stream, arg: str) -> None:  # type: ignore[no-untyped-def]
        try:
            target(stream, arg)
        except DropConnection:
            self.drop()
        except (_Dropped, OSError):
            pass
        finally:
            stream.close()


class AdbdEmulator:
    """``with AdbdEmulator(config) as emu: ... emu.port ...``"""

    def __init__(self, config: EmulatorConfig | None = None, root: Path | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="adbd-emu-")
        self.sandbox = Sandbox(root or Path(self._tmp.name))  # type: ignore[union-attr]
        c = self.config
        self.sandbox.populate(
            cpus=c.cpus,
            max_khz=c.max_khz,
            cur_khz=c.cur_khz,
            governor=c.governor,
            temp_millic=c.temp_millic,
        )
        if c.benchmark is not None:
            self.sandbox.write(c.benchmark_path, binary_bytes(c.benchmark))
        self._apply_thermal_state(self.throttle_factor(0))
        self.props = {
            "ro.product.model": c.model,
            "ro.product.device": c.device,
            "ro.product.name": c.device,
            "ro.product.cpu.abi": c.abi,
            "ro.build.version.release": c.release,
            "ro.build.version.sdk": c.sdk,
            "ro.build.fingerprint": (
                f"google/{c.device}/{c.device}:{c.release}/EMU/1:user/release-keys"
            ),
            **c.extra_props,
        }
        self._lock = threading.Lock()
        self.drops = {"push": 0, "run": 0}
        self.connections = 0
        self.pushed: list[str] = []
        self.benchmark_runs = 0
        self.shell_state = ShellState(
            sandbox=self.sandbox,
            props=self.props,
            cpus=c.cpus,
            layout=c.layout,
            drop_run=self._take_run_drop,
            slowdown=self._next_run_slowdown,
            clock=time.thread_time if c.cpu_clock else time.perf_counter,
            steady_us=_size_us if c.steady_times else None,
        )
        self._listener: socket.socket | None = None
        self._conns: list[_Connection] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def banner(self) -> bytes:
        p = self.props
        # Deliberately no shell_v2 / stat_v2 / sendrecv_v2: clients must use v1.
        return (
            f"device::ro.product.name={p['ro.product.name']};"
            f"ro.product.model={p['ro.product.model']};"
            f"ro.product.device={p['ro.product.device']};features=fixed_push_mkdir"
        ).encode()

    def _take_run_drop(self) -> bool:
        with self._lock:
            if self.config.drop_run_times > 0:
                self.config.drop_run_times -= 1
                self.drops["run"] += 1
                return True
        return False

    def throttle_factor(self, run_index: int) -> float:
        phases = self.config.throttle_phases
        if not phases:
            return 1.0
        t = run_index % sum(n for n, _ in phases)
        for n, factor in phases:
            if t < n:
                return factor
            t -= n
        return 1.0

    def _apply_thermal_state(self, factor: float) -> None:
        c = self.config
        cap = int(c.max_khz / factor)
        for cpu in range(c.cpus):
            base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
            self.sandbox.write(f"{base}/scaling_max_freq", f"{cap}\n")
            self.sandbox.write(f"{base}/scaling_cur_freq", f"{min(c.cur_khz, cap)}\n")
        hot = c.temp_millic + (20_000 if factor > 1 else 0)
        self.sandbox.write("/sys/class/thermal/thermal_zone0/temp", f"{hot}\n")

    def pace_factor(self, run_index: int) -> float:
        phases = self.config.pace_phases
        t = run_index % sum(n for n, _ in phases) if phases else 0
        for n, factor in phases:
            if t < n:
                return factor
            t -= n
        return 1.0

    def _next_run_slowdown(self) -> float:
        """The slow-down of the benchmark run starting now; the sysfs state then shows
        the phase of the run after it (what a reader between runs sees). The scripted
        pace multiplies it and shows nowhere."""
        with self._lock:
            factor = self.throttle_factor(self.benchmark_runs)
            factor *= self.pace_factor(self.benchmark_runs)
            self.benchmark_runs += 1
            self._apply_thermal_state(self.throttle_factor(self.benchmark_runs))
        return factor

    def _take_push_drop(self) -> int | None:
        with self._lock:
            if self.config.drop_push_after_bytes is not None and self.config.drop_push_times > 0:
                self.config.drop_push_times -= 1
                self.drops["push"] += 1
                return self.config.drop_push_after_bytes
        return None

    # -- services -----------------------------------------------------------------

    def serve_shell(self, stream: _Stream, cmdline: str) -> None:
        def write(text: str) -> None:
            stream.write(text.encode("utf-8", errors="replace"))

        run_shell(cmdline, self.shell_state, write)

    def serve_sync(self, stream: _Stream, _: str) -> None:
        while True:
            ident = stream.read_exact(4)
            (length,) = struct.unpack("<I", stream.read_exact(4))
            if ident == b"QUIT":
                return
            arg = stream.read_exact(length).decode(errors="replace")
            if ident == b"SEND":
                self._sync_send(stream, arg)
            elif ident == b"RECV":
                self._sync_recv(stream, arg)
            elif ident == b"STAT":
                self._sync_stat(stream, arg)
            elif ident == b"LIST":
                self._sync_list(stream, arg)
            else:
                self._fail(stream, f"unknown sync command {ident!r}")
                return

    @staticmethod
    def _fail(stream: _Stream, reason: str) -> None:
        data = reason.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def _sync_send(self, stream: _Stream, arg: str) -> None:
        path, _, mode = arg.rpartition(",")
        drop_after = self._take_push_drop()
        received = bytearray()
        while True:
            ident = stream.read_exact(4)
            (n,) = struct.unpack("<I", stream.read_exact(4))
            if ident == b"DATA":
                if n > _SYNC_DATA_MAX:
                    self._fail(stream, "data chunk too large")
                    return
                received.extend(stream.read_exact(n))
                if drop_after is not None and len(received) >= drop_after:
                    raise DropConnection("mid-push")
            elif ident == b"DONE":
                break
            else:
                self._fail(stream, f"unexpected {ident!r} during SEND")
                return
        target = self.sandbox.path(path)
        if target.is_dir():
            self._fail(stream, f"{path}: is a directory")
            return
        self.sandbox.write(path, bytes(received))
        if mode.isdigit():
            target.chmod(int(mode) & 0o777 or 0o644)
        self.pushed.append(path)
        stream.write(b"OKAY" + struct.pack("<I", 0))

    def _sync_recv(self, stream: _Stream, path: str) -> None:
        p = self.sandbox.path(path)
        if not p.is_file():
            self._fail(stream, f"open failed: No such file or directory ({path})")
            return
        data = p.read_bytes()
        for i in range(0, len(data), _SYNC_DATA_MAX):
            chunk = data[i : i + _SYNC_DATA_MAX]
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        stream.write(b"DONE" + struct.pack("<I", 0))

    def _sync_stat(self, stream: _Stream, path: str) -> None:
        p = self.sandbox.path(path)
        if p.exists():
            st = p.stat()
            stream.write(b"STAT" + struct.pack("<III", st.st_mode, st.st_size, int(st.st_mtime)))
        else:
            stream.write(b"STAT" + struct.pack("<III", 0, 0, 0))

    def _sync_list(self, stream: _Stream, path: str) -> None:
        p = self.sandbox.path(path)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                st = child.stat()
                name = child.name.encode()
                stream.write(
                    b"DENT"
                    + struct.pack("<IIII", st.st_mode, st.st_size, int(st.st_mtime), len(name))
                    + name
                )
        stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> AdbdEmulator:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        # The loop gets the socket itself: stop() may clear the attribute before the
        # thread first runs, or while accept() waits.
        threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True).start()
        return self

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def drop_all(self) -> None:
        for conn in list(self._conns):
            conn.drop()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        self.drop_all()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> AdbdEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
