"""The ingest websocket's own framing (app/ingest/wire.py): sans-I/O properties, then the
protocol's edges against a real server over raw TCP — what a browser never sends but a
hostile or broken client may."""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ingest import wire
from tests.conftest import Server, start_server
from tests.test_ingest_socket import new_key, topic

MASK = b"\x0f\xa1\x33\x5c"


def client_frame(
    opcode: int, payload: bytes, *, final: bool = True, mask: bytes = MASK, rsv: int = 0
) -> bytes:
    """A client frame as a browser builds it: masked."""
    n = len(payload)
    first = (0x80 if final else 0) | rsv | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from([wire.TEXT, wire.BINARY]), st.binary(max_size=70_000), st.integers(1, 4)
        ),
        min_size=1,
        max_size=4,
    ),
    pings=st.lists(st.binary(max_size=125), max_size=3),
    cut=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
)
def test_any_chunking_of_fragmented_messages_reads_back_the_messages(
    messages: list[tuple[int, bytes, int]], pings: list[bytes], cut: list[int]
) -> None:
    stream, expected = b"", []
    for n, (opcode, payload, parts) in enumerate(messages):
        size = -(-len(payload) // parts) or 1
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            stream += client_frame(opcode if i == 0 else wire.CONTINUATION, piece, final=last)
            if last:
                expected.append((opcode, payload))
            if i == 0 and n < len(pings):  # a control frame between fragments is allowed
                stream += client_frame(wire.PING, pings[n])
                expected.append((wire.PING, pings[n]))
    reader, got, at = wire.Reader(max_size=1 << 20), [], 0
    for step in cut * (len(stream) // max(sum(cut), 1) + 1):
        got += reader.messages(stream[at : at + step])
        at += step
        if at >= len(stream):
            break
    got += reader.messages(stream[at:])
    # pings come as soon as read, a message once its last fragment is
    assert got == expected
    assert reader.buffer == b""


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes((0x81, 0x01)) + b"x", wire.PROTOCOL_ERROR),  # unmasked
        (client_frame(wire.TEXT, b"x", rsv=0x40), wire.PROTOCOL_ERROR),
        (client_frame(0x3, b"x"), wire.PROTOCOL_ERROR),
        (client_frame(wire.PING, b"x", final=False), wire.PROTOCOL_ERROR),
        (client_frame(wire.PING, b"x" * 126), wire.PROTOCOL_ERROR),
        (client_frame(wire.CONTINUATION, b"x"), wire.PROTOCOL_ERROR),
        (
            client_frame(wire.TEXT, b"a", final=False) + client_frame(wire.TEXT, b"b"),
            wire.PROTOCOL_ERROR,
        ),
        (client_frame(wire.TEXT, b"x" * 2000), wire.TOO_BIG),
        (
            client_frame(wire.TEXT, b"x" * 600, final=False)
            + client_frame(wire.CONTINUATION, b"x" * 600),
            wire.TOO_BIG,
        ),
        # a length announced beyond the limit is refused before its bytes arrive
        (bytes((0x81, 0x80 | 127)) + (1 << 40).to_bytes(8, "big"), wire.TOO_BIG),
    ],
)
def test_what_a_client_may_not_send_closes_with_the_rfc_code(data: bytes, code: int) -> None:
    with pytest.raises(wire.Closing) as info:
        wire.Reader(max_size=1024).messages(data)
    assert info.value.code == code


def test_server_frames_carry_their_length() -> None:
    for n in (0, 125, 126, 65535, 65536):
        data = wire.frame(wire.TEXT, b"y" * n)
        assert data[0] == 0x81
        length = data[1]
        assert (n < 126 and length == n) or (n < 65536 and length == 126) or length == 127
        assert data.endswith(b"y" * n) and len(data) - n in (2, 4, 10)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /socket/websocket HTTP/1.1\r\n\r\n", 405),
        (b"GET /socket/websocket HTTP/1.1\r\nupgrade: websocket\r\n\r\n", 400),
        (
            b"GET /socket/websocket HTTP/1.1\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: short\r\n\r\n",
            400,
        ),
        (b"nonsense\r\n\r\n", 400),
    ],
)
def test_a_bad_upgrade_request_is_refused(request_bytes: bytes, status: int) -> None:
    with pytest.raises(wire.Refused) as info:
        wire.handshake(request_bytes)
    assert info.value.status == status


def test_the_accept_header_is_the_rfc_example() -> None:
    _, _, _, response = wire.handshake(
        b"GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response  # RFC 6455 1.3


# -- over a real server ------------------------------------------------------------------
class Raw:
    """A websocket spoken by hand over TCP."""

    def __init__(self, server: Server, path: str = "/socket/websocket?vsn=2.0.0") -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def recv(self) -> tuple[int, bytes]:
        self._fill(2)
        opcode, n, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
        if n == 126:
            self._fill(4)
            n, start = int.from_bytes(self.buffer[2:4], "big"), 4
        self._fill(start + n)
        payload, self.buffer = self.buffer[start : start + n], self.buffer[start + n :]
        return opcode, payload

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def push(self, *message: object) -> None:
        self.send(client_frame(wire.TEXT, orjson.dumps(list(message))))

    def reply(self) -> list[object]:
        opcode, payload = self.recv()
        assert opcode == wire.TEXT
        return orjson.loads(payload)


def test_fragments_pings_and_close_over_a_real_socket(server: Server) -> None:
    key = new_key(server)
    ws, t = Raw(server), topic()
    assert ws.status == 101
    join = orjson.dumps(["1", "1", t, "phx_join", {"key": key, "metadata": {"video_id": "raw"}}])
    # a join sent in three fragments, a ping between them
    ws.send(
        client_frame(wire.TEXT, join[:10], final=False)
        + client_frame(wire.PING, b"hi")
        + client_frame(wire.CONTINUATION, join[10:30], final=False)
    )
    ws.send(client_frame(wire.CONTINUATION, join[30:]))
    assert ws.recv() == (wire.PONG, b"hi")
    assert ws.reply()[4] == {"status": "ok", "response": {}}
    ws.push("1", "2", t, "event", {"name": "play", "from": 0, "duration": 10})
    assert ws.reply()[4]["status"] == "ok"
    ws.send(client_frame(wire.BINARY, b"\x00\x01"))
    assert "binary frames" in ws.reply()[4]["response"]["reason"]
    ws.send(client_frame(wire.CLOSE, (1000).to_bytes(2, "big")))
    assert ws.recv() == (wire.CLOSE, (1000).to_bytes(2, "big"))
    assert ws.sock.recv(10) == b""


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(wire.TEXT, b"\xff\xfe"), wire.INVALID_DATA),
        (bytes((0x81, 0x01)) + b"x", wire.PROTOCOL_ERROR),  # unmasked
        (client_frame(wire.TEXT, b"x" * 70_000), wire.TOO_BIG),  # over METRICS_MAX_FRAME_BYTES
    ],
)
def test_a_broken_frame_closes_only_its_socket(server: Server, data: bytes, code: int) -> None:
    key = new_key(server)
    bad, good, t = Raw(server), Raw(server), topic()
    bad.send(data)
    opcode, payload = bad.recv()
    assert opcode == wire.CLOSE and int.from_bytes(payload[:2], "big") == code
    good.push("1", "1", t, "phx_join", {"key": key, "metadata": {"video_id": "fine"}})
    assert good.reply()[4]["status"] == "ok"


def test_other_paths_get_no_websocket(server: Server) -> None:
    assert Raw(server, "/elsewhere").status == 404


def test_a_client_that_never_reads_is_dropped(server: Server) -> None:
    """Pings make pongs; a peer that sends them without reading fills its own buffer
    only up to the bound, then it is cut off, and the server goes on serving."""
    ws = Raw(server)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = client_frame(wire.PING, b"p" * 125)
    with pytest.raises(OSError):
        for _ in range(200_000):  # ~26 MB of pongs owed, far past the bound
            ws.send(ping * 50)
    ok = Raw(server)
    ok.push(None, "1", "phoenix", "heartbeat", {})
    assert ok.reply()[4]["status"] == "ok"


def test_pings_reach_a_silent_socket_and_a_pong_keeps_it(tmp_path: Path, database_url: str) -> None:
    srv = start_server(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "METRICS_WS_PING_SECONDS": "0.5",
            "METRICS_SOCKET_IDLE_SECONDS": "2",
        },
    )
    try:
        answering, silent = Raw(srv), Raw(srv)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            opcode, payload = answering.recv()
            assert opcode == wire.PING
            answering.send(client_frame(wire.PONG, payload))
        assert silent.recv()[0] == wire.PING  # and then, silent past the idle timeout:
        assert silent.recv()[0] == wire.CLOSE
        answering.push(None, "1", "phoenix", "heartbeat", {})
        while (message := answering.recv())[0] == wire.PING:
            pass
        assert orjson.loads(message[1])[4]["status"] == "ok"
    finally:
        srv.stop()
