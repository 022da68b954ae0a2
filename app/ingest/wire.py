"""The websocket wire (RFC 6455) for the ingest socket, sans I/O: the opening handshake and
frames, just what a Phoenix client needs — text messages, pings, close — and nothing
else (no extensions, no subprotocols).

Kept small on purpose: every event arrives and is answered through here, so parsing a
frame is a few slices and one C-level unmasking, and replies are plain bytes a caller can
write several at a time.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from websockets.speedups import apply_mask  # C; the websockets package is a dependency

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
# close codes (RFC 6455 7.4.1)
GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, TRY_AGAIN_LATER = 1001, 1002, 1007, 1009, 1013
_LENGTH16 = struct.Struct(">H")
_LENGTH64 = struct.Struct(">Q")
MAX_HEADER_BYTES = 16 * 1024


class Refused(Exception):
    """The opening handshake is not one we accept: answer with this HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Closing(Exception):
    """The peer broke the protocol (or a limit): close the socket with this code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def handshake(request: bytes) -> tuple[str, bytes, dict[bytes, bytes], bytes]:
    """Parse an HTTP/1.1 upgrade request: (path, query string, headers with lower-case
    names, the 101 response to send). Raises Refused."""
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        method, target, _version = lines[0].split(b" ", 2)
    except ValueError:
        raise Refused(400, "malformed request line") from None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition(b"?")
    if method != b"GET":
        raise Refused(405, "a websocket opens with GET")
    if (
        b"websocket" not in headers.get(b"upgrade", b"").lower()
        or headers.get(b"sec-websocket-version") != b"13"
    ):
        raise Refused(400, "not a websocket version 13 upgrade")
    key = headers.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise Refused(400, "bad Sec-WebSocket-Key") from None
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - the RFC's
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return path.decode("latin-1"), query, headers, response


def refusal(status: int, reason: str) -> bytes:
    """An HTTP response refusing the upgrade."""
    body = reason.encode()
    phrase = {
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
    }.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (final, unmasked)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + _LENGTH16.pack(n) + payload
    return bytes((0x80 | opcode, 127)) + _LENGTH64.pack(n) + payload


def close(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, _LENGTH16.pack(code) + reason.encode()[:120])


class Reader:
    """Client frames from a byte stream: feed() bytes, then take messages from messages()
    as (opcode, payload) — text and binary messages reassembled from their fragments,
    control frames as they come. Raises Closing on anything RFC 6455 forbids a client, or
    on a message longer than `max_size`."""

    __slots__ = ("buffer", "max_size", "_parts", "_opcode", "_size")

    def __init__(self, max_size: int) -> None:
        self.buffer = b""
        self.max_size = max_size
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._opcode = 0
        self._size = 0  # bytes of the fragmented message so far

    def messages(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self.buffer + data if self.buffer else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            if first & 0x70:
                raise Closing(PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise Closing(PROTOCOL_ERROR, "client frames must be masked")
            n, head = second & 0x7F, pos + 2
            if n == 126:
                if end - head < 2:
                    break
                n, head = _LENGTH16.unpack_from(buffer, head)[0], head + 2
            elif n == 127:
                if end - head < 8:
                    break
                n, head = _LENGTH64.unpack_from(buffer, head)[0], head + 8
            if n > self.max_size:
                raise Closing(TOO_BIG, "frame too large")
            if end - head < 4 + n:
                break
            payload = apply_mask(buffer[head + 4 : head + 4 + n], buffer[head : head + 4])
            pos = head + 4 + n
            opcode, final = first & 0x0F, first & 0x80
            if opcode >= 0x8:  # control: never fragmented, at most 125 bytes
                if not final or n > 125:
                    raise Closing(PROTOCOL_ERROR, "bad control frame")
                if opcode not in (CLOSE, PING, PONG):
                    raise Closing(PROTOCOL_ERROR, "unknown opcode")
                out.append((opcode, payload))
            elif opcode == CONTINUATION:
                if self._parts is None:
                    raise Closing(PROTOCOL_ERROR, "continuation without a message")
                self._parts.append(payload)
                self._size += n
                if self._size > self.max_size:
                    raise Closing(TOO_BIG, "message too large")
                if final:
                    out.append((self._opcode, b"".join(self._parts)))
                    self._parts = None
            elif opcode in (TEXT, BINARY):
                if self._parts is not None:
                    raise Closing(PROTOCOL_ERROR, "a new message inside a fragmented one")
                if final:
                    out.append((opcode, payload))
                else:
                    self._parts, self._opcode, self._size = [payload], opcode, n
            else:
                raise Closing(PROTOCOL_ERROR, "unknown opcode")
        self.buffer = buffer[pos:]
        if len(self.buffer) > self.max_size + 14:
            raise Closing(TOO_BIG, "frame too large")
        return out
