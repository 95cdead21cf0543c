"""ADB wire format: 24-byte little-endian message headers and the command words."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass


def _word(name: str) -> int:
    return struct.unpack("<I", name.encode())[0]


A_CNXN = _word("CNXN")
A_AUTH = _word("AUTH")
A_OPEN = _word("OPEN")
A_OKAY = _word("OKAY")
A_CLSE = _word("CLSE")
A_WRTE = _word("WRTE")
A_STLS = _word("STLS")

# 0x01000001 lets peers skip payload checksums; we still send correct ones so that
# clients speaking 0x01000000 (adb-shell) are satisfied too.
VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 256 * 1024
_HEADER = struct.Struct("<6I")


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return struct.pack("<I", self.command).decode(errors="replace")

    def pack(self) -> bytes:
        checksum = sum(self.data) & 0xFFFFFFFF
        return (
            _HEADER.pack(
                self.command,
                self.arg0,
                self.arg1,
                len(self.data),
                checksum,
                self.command ^ 0xFFFFFFFF,
            )
            + self.data
        )


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(sock: socket.socket) -> Message:
    command, arg0, arg1, length, _checksum, magic = _HEADER.unpack(_recv_exact(sock, 24))
    if magic != command ^ 0xFFFFFFFF:
        raise ConnectionError(f"bad magic in message header {command:#x}")
    data = _recv_exact(sock, length) if length else b""
    return Message(command, arg0, arg1, data)
