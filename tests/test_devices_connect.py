"""Connecting straight to adbd: each way it can fail gets its own one-line diagnosis
(nothing listening, something that is not an adbd, an adbd that has not authorized us)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adbd_emulator import AdbdEmulator
from adbd_emulator.fixtures import free_port
from adbd_emulator.protocol import A_AUTH, Message, read_message
from mnasfpn.devices import ConnectionDropped, DeviceError
from mnasfpn.devices.transport import DirectTransport

AUTH_TOKEN = 1


@contextlib.contextmanager
def fake_peer(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection TCP server on loopback that runs `handle` on what connects."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        thread.join(timeout=5)


def _connect_error(address: str) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        DirectTransport(address, connect_timeout=1.0)
    assert "\n" not in str(info.value)
    return info.value


def test_nothing_listening() -> None:
    address = f"127.0.0.1:{free_port()}"
    err = _connect_error(address)
    assert isinstance(err, ConnectionDropped)  # the phone may come back: retryable
    assert str(err).startswith(f"nothing is listening at {address}")
    assert "adb tcpip" in str(err)


def _read_request(conn: socket.socket) -> None:
    """Take in all the client sent (it may come in pieces): closing with unread data would
    reset the connection and could discard our answer before the client reads it."""
    conn.settimeout(0.3)
    with contextlib.suppress(OSError):
        while conn.recv(1024):
            pass


def _http(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(10)
    with contextlib.suppress(OSError):
        while conn.recv(1024):  # until the client has read the answer and closed
            pass


def _hang_up(conn: socket.socket) -> None:
    _read_request(conn)


def _silent(conn: socket.socket) -> None:
    # Read whatever comes (the CNXN may arrive in pieces) and never answer, until the
    # client gives up and closes.
    conn.settimeout(10)
    with contextlib.suppress(OSError):
        while conn.recv(1024):
            pass


@pytest.mark.parametrize(
    ("handle", "said"),
    [
        (_http, "it answered 'HTTP/1.1 400 Bad Request"),
        (_hang_up, "closed the connection"),
        (_silent, "sent nothing in 1 s"),
    ],
    ids=["http", "hang-up", "silent"],
)
def test_not_an_adbd(handle: Callable[[socket.socket], None], said: str) -> None:
    with fake_peer(handle) as address:
        err = _connect_error(address)
    assert not isinstance(err, ConnectionDropped)  # retrying cannot help
    assert str(err).startswith(f"{address} is not an adbd (")
    assert said in str(err)


def _demands_auth(conn: socket.socket) -> None:
    """An adbd that has never seen this computer: AUTH tokens, never CNXN."""
    read_message(conn)  # the client's CNXN
    conn.sendall(Message(A_AUTH, AUTH_TOKEN, 0, os.urandom(20)).pack())
    with contextlib.suppress(OSError, ConnectionError):
        while True:
            reply = read_message(conn)  # a signature, or at last the public key
            if reply.arg0 == 2:  # AUTH_SIGNATURE: refuse it, ask again
                conn.sendall(Message(A_AUTH, AUTH_TOKEN, 0, os.urandom(20)).pack())


def test_not_authorized_without_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.android/adbkey
    with fake_peer(_demands_auth) as address:
        err = _connect_error(address)
    assert str(err).startswith(f"adbd at {address} asks for authorization")
    assert "adb keygen" in str(err)


class _Signer:
    def Sign(self, data: bytes) -> bytes:  # adb-shell's signer interface
        return b"\x01" * 256

    def GetPublicKey(self) -> str:
        return "AAAA fake@key"


def test_not_authorized_key_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DirectTransport, "_signers", staticmethod(lambda: [_Signer()]))
    with fake_peer(_demands_auth) as address:
        err = _connect_error(address)
    assert str(err).startswith(f"adbd at {address} did not authorize this computer's key")
    assert "Allow USB debugging" in str(err)


def test_the_emulator_is_an_adbd() -> None:
    with AdbdEmulator() as emu:
        transport = DirectTransport(emu.address, connect_timeout=2.0)
        try:
            assert transport.shell("echo hi").output.strip() == "hi"
        finally:
            transport.close()


@pytest.mark.parametrize("serial", ["emulator-5554", None])
def test_unauthorized_phone_on_the_adb_server(
    monkeypatch: pytest.MonkeyPatch, serial: str | None
) -> None:
    from mnasfpn.devices import transport

    listed = [("emulator-5554", "unauthorized")]
    monkeypatch.setattr(transport, "attached_serials", lambda: listed)
    with pytest.raises(DeviceError) as info:
        transport.ServerTransport(serial)
    assert str(info.value).startswith("phone emulator-5554 has not authorized this computer")
