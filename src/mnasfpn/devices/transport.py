"""How commands and files reach an Android device: a small interface, two backends.

``ServerTransport`` goes through the adb server (adbutils); ``DirectTransport`` talks to
adbd over TCP itself (adb-shell), which needs no adb binary. The device logic in
``adb.py`` is written once against :class:`Transport`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnasfpn.devices.errors import ConnectionDropped, DeviceError
from mnasfpn.registry import Registry

# v1 shell streams carry no exit status, so every command echoes it after a marker that
# cannot occur in ordinary output. A missing marker means the stream was cut short.
_RC_MARKER = "__MNASFPN_RC_" + uuid.uuid4().hex[:8] + "__"


class CommandTimeout(DeviceError):
    """A shell command did not finish in time."""


@dataclass(frozen=True)
class ShellResult:
    output: str
    exit_code: int


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(str(text).split())[:limit]


class Transport(abc.ABC):
    serial: str

    @abc.abstractmethod
    def _raw_shell(self, cmd: str, timeout: float) -> str:
        """Run ``cmd`` and return everything it printed (stdout and stderr)."""

    @abc.abstractmethod
    def push(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote``; ConnectionDropped if the link goes."""

    @abc.abstractmethod
    def reconnect(self) -> None:
        """Re-establish the link after ConnectionDropped."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def shell(self, cmd: str, timeout: float = 60.0) -> ShellResult:
        out = self._raw_shell(f"{cmd}; echo {_RC_MARKER}$?", timeout)
        idx = out.rfind(_RC_MARKER)
        if idx < 0:
            raise ConnectionDropped(
                f"connection to {self.serial} dropped while running {_one_line(cmd, 60)!r}"
            )
        tail = out[idx + len(_RC_MARKER) :].strip()
        try:
            code = int(tail.split()[0])
        except (ValueError, IndexError):
            code = 255
        return ShellResult(output=out[:idx], exit_code=code)

    def remove(self, remote: str) -> None:
        self.shell(f"rm -rf {shlex.quote(remote)}", timeout=60.0)


def adb_server_address() -> tuple[str, int]:
    host = os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1")
    port = int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))
    return host, port


def adb_server_running() -> bool:
    """Probe the server socket ourselves: adbutils would start a server on its own."""
    host, port = adb_server_address()
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def attached_serials() -> list[tuple[str, str]]:
    """(serial, state) of every device the adb server knows; DeviceError if no server."""
    if not adb_server_running():
        host, port = adb_server_address()
        raise DeviceError(
            f"no adb server at {host}:{port}; start one with 'adb start-server' "
            "or use --adb-transport direct --adb-host HOST:PORT"
        )
    # adb libraries: only when a phone is reached
    import adbutils

    host, port = adb_server_address()
    client = adbutils.AdbClient(host=host, port=port)
    return [(d.serial, d.state) for d in client.list()]


class ServerTransport(Transport):
    """adbutils through the adb server (USB phones and ``adb connect`` targets)."""

    def __init__(self, serial: str | None = None) -> None:
        # adb libraries: only when a phone is reached
        import adbutils

        self._adbutils = adbutils
        states = dict(attached_serials())
        ready = [s for s, state in states.items() if state == "device"]
        unauthorized = [s for s, state in states.items() if state == "unauthorized"]
        if serial in unauthorized or (serial is None and not ready and unauthorized):
            raise DeviceError(
                f"phone {serial or unauthorized[0]} has not authorized this computer; accept "
                "the 'Allow USB debugging' prompt on the phone, then retry"
            )
        if serial is None:
            if not ready:
                raise DeviceError(
                    "no phone attached to the adb server; plug one in (USB debugging on) "
                    "or 'adb connect HOST:PORT', then check 'mnasfpn-lut devices'"
                )
            if len(ready) > 1:
                raise DeviceError(
                    f"{len(ready)} phones attached ({', '.join(ready)}); pick one with --serial"
                )
            serial = ready[0]
        elif serial not in ready:
            raise DeviceError(
                f"phone {serial!r} is not attached and ready (ready: {ready or 'none'}); "
                "check 'adb devices' and the serial"
            )
        self.serial = serial
        host, port = adb_server_address()
        self._client = adbutils.AdbClient(host=host, port=port)
        self._dev = self._client.device(serial=serial)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._adbutils.AdbError, OSError, EOFError)

    def _raw_shell(self, cmd: str, timeout: float) -> str:
        try:
            raw = self._dev.shell(cmd, timeout=timeout, encoding=None, rstrip=False)
        except self._adbutils.AdbTimeout as e:
            raise CommandTimeout(
                f"{_one_line(cmd, 60)!r} on {self.serial} did not finish in {timeout:.0f} s"
            ) from e
        except self._errors() as e:
            raise ConnectionDropped(
                f"connection to {self.serial} failed while running a command: {_one_line(e)}"
            ) from e
        return raw.decode("utf-8", errors="replace")

    def push(self, local: Path, remote: str) -> None:
        try:
            self._dev.sync.push(str(local), remote)
        except self._errors() as e:
            raise ConnectionDropped(
                f"push of {Path(local).name} to {self.serial} failed: {_one_line(e)}"
            ) from e

    def reconnect(self) -> None:
        # Network targets must be re-attached by hand; USB ones come back by themselves.
        host, _, port = self.serial.rpartition(":")
        deadline = time.monotonic() + 15.0
        while True:
            try:
                if host and port.isdigit():
                    self._client.connect(self.serial, timeout=5.0)
                self._client.wait_for(self.serial, state="device", timeout=5.0)
                self._dev = self._client.device(serial=self.serial)
                return
            except self._errors() as e:
                if time.monotonic() > deadline:
                    raise ConnectionDropped(
                        f"could not reconnect to {self.serial}: {_one_line(e)}"
                    ) from e
                time.sleep(0.5)

    def close(self) -> None:
        pass


@dataclass
class _Handshake:
    """What a connection attempt got as far as, to tell its failures apart."""

    listening: bool = False
    first_bytes: bytes = b""


class DirectTransport(Transport):
    """adb-shell straight to adbd over TCP (``adb tcpip`` phones, emulators)."""

    def __init__(self, adb_host: str, connect_timeout: float = 10.0) -> None:
        host, _, port = adb_host.rpartition(":")
        if not host or not port.isdigit():
            raise DeviceError(f"--adb-host must be HOST:PORT, got {adb_host!r}")
        self._host, self._port = host, int(port)
        self.serial = f"{host}:{port}"
        self._timeout = connect_timeout
        self._dev = None
        self._connect()

    @staticmethod
    def _signers() -> list[object] | None:
        """The user's adb key, if present, for adbds that demand authorization."""
        key = Path.home() / ".android" / "adbkey"
        if not key.is_file():
            return None
        # adb libraries: only when a phone is reached
        try:
            from adb_shell.auth.sign_pythonrsa import PythonRSASigner

            return [PythonRSASigner(key.with_suffix(".pub").read_text(), key.read_text())]
        except Exception:
            return None

    def _connect(self) -> None:
        # adb libraries: only when a phone is reached
        from adb_shell.adb_device import AdbDevice
        from adb_shell.exceptions import DeviceAuthError
        from adb_shell.transport.tcp_transport import TcpTransport

        seen = _Handshake()

        class EofAwareTcpTransport(TcpTransport):  # type: ignore[misc]
            def connect(self, transport_timeout_s: float | None) -> None:
                super().connect(transport_timeout_s)
                seen.listening = True

            # adb-shell treats an empty recv() as "no data yet" and spins until its read
            # timeout; a closed socket must fail at once so that we can reconnect.
            def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
                data = super().bulk_read(numbytes, transport_timeout_s)
                if not data:
                    raise ConnectionResetError("adbd closed the connection")
                seen.first_bytes = (seen.first_bytes + data)[:24]
                return data

        dev = AdbDevice(
            EofAwareTcpTransport(self._host, self._port),
            default_transport_timeout_s=self._timeout,
        )
        signers = self._signers()
        try:
            dev.connect(rsa_keys=signers, auth_timeout_s=self._timeout)
        except Exception as e:
            with contextlib.suppress(Exception):
                dev.close()
            raise self._connect_error(e, seen, no_key=isinstance(e, DeviceAuthError)) from e
        self._dev = dev

    def _connect_error(self, e: Exception, seen: _Handshake, *, no_key: bool) -> DeviceError:
        """Which of the ways to fail it was: nothing listening, not an adbd, or an adbd that
        has not authorized this computer; each wants a different fix."""
        where = self.serial
        if not seen.listening:
            if isinstance(e, ConnectionRefusedError):
                return ConnectionDropped(
                    f"nothing is listening at {where} (connection refused); check the port, "
                    "and enable adbd over TCP on the phone ('adb tcpip 5555')"
                )
            return ConnectionDropped(
                f"cannot reach {where} ({_one_line(e) or type(e).__name__}); check the "
                "address and that the phone is on this network"
            )
        word = seen.first_bytes[:4]
        if word == b"AUTH":
            key = Path.home() / ".android" / "adbkey"
            if no_key:
                return DeviceError(
                    f"adbd at {where} asks for authorization and this computer has no adb key "
                    f"({key}); create one with 'adb keygen {key}', then accept it on the phone"
                )
            return DeviceError(
                f"adbd at {where} did not authorize this computer's key ({key}); accept the "
                "'Allow USB debugging' prompt on the phone (tick 'Always allow'), then retry"
            )
        if word == b"CNXN":
            return ConnectionDropped(
                f"adbd at {where} dropped the connection during the handshake "
                f"({_one_line(e) or type(e).__name__}); retry"
            )
        if seen.first_bytes:
            said = f"it answered {_one_line(seen.first_bytes.decode('latin-1'), 24)!r}"
        elif isinstance(e, ConnectionError | EOFError):
            said = "it closed the connection without a word"
        else:
            said = f"it sent nothing in {self._timeout:g} s"
        return DeviceError(
            f"{where} is not an adbd ({said}); check the port: adbd over TCP is usually 5555"
        )

    def _call(self, what: str, fn: object, *args: object, **kwargs: object) -> object:
        # adb libraries: only when a phone is reached
        from adb_shell.exceptions import AdbTimeoutError, TcpTimeoutException

        if self._dev is None:
            raise ConnectionDropped(f"not connected to {self.serial}")
        try:
            return fn(*args, **kwargs)  # type: ignore[operator]
        except (AdbTimeoutError, TcpTimeoutException) as e:
            self._drop()
            raise CommandTimeout(f"{what} on {self.serial} timed out: {_one_line(e)}") from e
        except Exception as e:
            # adb-shell surfaces a closed socket as assorted protocol errors.
            self._drop()
            raise ConnectionDropped(
                f"connection to {self.serial} dropped during {what}: {_one_line(e) or type(e)}"
            ) from e

    def _drop(self) -> None:
        if self._dev is not None:
            with contextlib.suppress(Exception):
                self._dev.close()
            self._dev = None

    def _raw_shell(self, cmd: str, timeout: float) -> str:
        dev = self._dev
        raw = self._call(
            "a shell command",
            getattr(dev, "shell", None),
            cmd,
            timeout_s=timeout,
            read_timeout_s=timeout,
            transport_timeout_s=timeout,
            decode=False,
        )
        assert isinstance(raw, bytes)
        return raw.decode("utf-8", errors="replace")

    def push(self, local: Path, remote: str) -> None:
        self._call(
            f"push of {Path(local).name}",
            getattr(self._dev, "push", None),
            str(local),
            remote,
            st_mode=0o100644,
            read_timeout_s=60.0,
        )

    def reconnect(self) -> None:
        self._drop()
        self._connect()

    def close(self) -> None:
        self._drop()


def _server(serial: str | None, adb_host: str | None) -> Transport:
    if adb_host:
        raise DeviceError(
            "--adb-host needs --adb-transport direct; with the adb server use --serial"
        )
    return ServerTransport(serial)


def _direct(serial: str | None, adb_host: str | None) -> Transport:
    if not adb_host:
        raise DeviceError("--adb-transport direct needs --adb-host HOST:PORT")
    return DirectTransport(adb_host)


# How a phone is reached: (serial, adbd HOST:PORT) → an open link.
TRANSPORTS: Registry[Callable[[str | None, str | None], Transport]] = Registry(
    "adb transport", {"server": _server, "direct": _direct}, error=DeviceError
)


def open_transport(kind: str, *, serial: str | None, adb_host: str | None) -> Transport:
    return TRANSPORTS.get(kind)(serial, adb_host)
