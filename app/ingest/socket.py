"""The /socket/websocket endpoint: Phoenix Channels over a websocket.

The websocket is served by its own asyncio protocol (`SocketProtocol`, handed the
connection by uvicorn at the upgrade; app/ingest/wire.py frames it), not through ASGI: a
message is handled in the callback that read it — no task, queue or message dict per
socket or per frame — and the replies a connection is due in one turn of the loop go out
in one write.

Each `session:*` channel owns a ViewingSession. Events are applied in arrival order and
their rows handed to the writer at once; the reply is sent when the writer's commit
resolves, so a socket keeps reading (heartbeats included) while writes are in flight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import Gauge

from app.auth.keys import KeyCache
from app.ingest import protocol, wire
from app.ingest.agents import classify
from app.ingest.sessions import InvalidInput, Limits, ViewingSession, parse_join, valid_topic
from app.ingest.tally import Spread, Tally
from app.ingest.writer import WriteFailed, Writer
from app.settings import Settings

log = logging.getLogger("vidmetrics.socket")

SOCKETS = Gauge("vidmetrics_sockets", "Open websockets")
SESSION_BYTES = Gauge(
    "vidmetrics_session_state_bytes",
    "Client-supplied session state held in memory (the budget's use)",
)
# Label values come from these fixed sets only (never from client text): a scrape stays
# small whatever clients send. Plain numbers (app/ingest/tally.py): no lock per frame.
_FRAME = Tally(
    "vidmetrics_frames",
    "Frames received",
    "kind",
    ("malformed", "heartbeat", "join", "unmatched", "leave", "event", "unknown", "binary"),
)
_REFUSED = Tally(
    "vidmetrics_refused",
    "Refused frames, joins and sockets",
    "reason",
    (
        "malformed",
        "unmatched_topic",
        "unknown_event",
        "bot",
        "too_many_channels",
        "invalid_input",
        "invalid_key",
        "memory_budget",
        "rate_limit",
        "write_failed",
        "max_sockets",
        "shutting_down",
        "frame_too_large",
        "idle",
        "slow_reader",
        "protocol_error",
    ),
)
_EVENTS = Tally(
    "vidmetrics_events", "Event pushes by outcome", "outcome", ("acked", "refused", "failed")
)
ACK_SECONDS = Spread(
    "vidmetrics_ack_seconds",
    "From an event's arrival to its ok reply (after commit)",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# Replies a peer has not read (beyond what the kernel buffers) before it is dropped: a
# client that never reads can cost the server this much memory and no more.
MAX_UNREAD_BYTES = 256 * 1024


class PlayingNow:
    """Sessions this process is playing right now, refreshed in the database periodically."""

    def __init__(self) -> None:
        self.playing: set[int] = set()


@dataclass
class Hub:
    """What every socket shares: settings, writer, key cache, presence, and open sockets."""

    settings: Settings
    writer: Writer
    keys: KeyCache
    presence: PlayingNow = field(default_factory=PlayingNow)
    sockets: set[Connection] = field(default_factory=set)
    accepting: bool = True
    state_bytes: int = 0  # client-supplied state held by all open channels
    keys_seen: int = 0  # the key cache generation the last sweep checked channels against
    # connections with replies waiting for this turn of the loop to end (see flush)
    outgoing: list[Connection] = field(default_factory=list)
    # sockets' waits for a block of session ids (held: the loop keeps weak references)
    waiting: set[asyncio.Task[None]] = field(default_factory=set)

    def due(self, conn: Connection) -> None:
        """conn has its first reply of this turn: write it (and whatever follows) soon."""
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outgoing.append(conn)

    def flush(self) -> None:
        """Write each connection's replies of this turn, in order, in one write."""
        outgoing, self.outgoing = self.outgoing, []
        for conn in outgoing:
            conn.write_out()

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.max_metadata_bytes, self.settings.max_metadata_depth)

    def reserve(self, size: int) -> bool:
        """Take `size` bytes of the session-state budget; False when it is spent."""
        if self.state_bytes + size > self.settings.max_session_state_bytes:
            return False
        self.state_bytes += size
        return True

    def release(self, size: int) -> None:
        self.state_bytes -= size

    def __post_init__(self) -> None:
        SESSION_BYTES.set_function(lambda: self.state_bytes)  # read at scrape time

    def sweep(self) -> None:
        """Close channels whose key was revoked, and sockets silent for too long. Channels
        are only walked when the set of active keys has changed since the last sweep."""
        now = time.monotonic()
        deadline = now - self.settings.socket_idle_seconds
        ping = self.settings.ws_ping_seconds
        ping_before = now - ping if ping > 0 else 0.0
        keys_changed = self.keys.generation != self.keys_seen
        self.keys_seen = self.keys.generation
        for conn in list(self.sockets):
            if conn.last_seen < deadline:
                _REFUSED.add("idle")
                conn.close(wire.GOING_AWAY)
                continue
            if ping_before and conn.last_seen < ping_before and not conn.pinged:
                conn.ping()
            if not keys_changed:
                continue
            for topic, (join_ref, session) in list(conn.channels.items()):
                if not self.keys.is_active(session.join.key):
                    conn.revoke(topic, join_ref)


def _ignore(failure: str | None) -> None:
    """A write nobody awaits a reply for (a leave, a revoked key): its failure is logged
    by the writer."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Bucket:
    """Token bucket: `rate` events per second with a burst of twice that."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate * 2
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate * 2, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Connection:
    """One open websocket: its Phoenix channels, and the replies due to it."""

    __slots__ = (
        "hub",
        "transport",
        "vsn",
        "key",
        "source_url",
        "device",
        "channels",
        "bucket",
        "closed",
        "last_seen",
        "pinged",
        "out",
        "backlog",
    )

    def __init__(
        self, hub: Hub, transport: asyncio.Transport, query: bytes, headers: dict[bytes, bytes]
    ) -> None:
        self.hub = hub
        self.transport = transport
        params = parse_qs(query.decode("latin-1"))
        self.vsn = params.get("vsn", [protocol.V1])[0]
        if self.vsn not in (protocol.V1, protocol.V2):
            self.vsn = protocol.V2 if self.vsn.startswith("2") else protocol.V1
        self.key = params.get("key", [None])[0]
        self.source_url = params.get("source_url", [None])[0]
        user_agent = headers.get(b"user-agent", b"").decode("latin-1")
        brave = b"brave" in headers.get(b"sec-ch-ua", b"").lower()
        self.device = classify(user_agent, brave)  # the UA string itself goes no further
        self.channels: dict[str, tuple[str | None, ViewingSession]] = {}
        self.bucket = _Bucket(hub.settings.max_events_per_second)
        self.closed = False
        self.last_seen = time.monotonic()
        self.pinged = False
        self.out: list[bytes] = []  # replies of this turn, written by Hub.flush
        # messages waiting while a session id is fetched (None: none are)
        self.backlog: deque[str] | None = None

    def send(self, text: bytes) -> None:
        """Queue a text message (UTF-8) for the end of this turn."""
        self.queue(wire.frame(wire.TEXT, text))

    def queue(self, frame: bytes) -> None:
        """Queue a frame for the end of this turn (Hub.flush)."""
        if self.closed:
            return
        if not self.out:
            self.hub.due(self)
        self.out.append(frame)

    def write_out(self) -> None:
        out, self.out = self.out, []
        if self.closed or not out:
            return
        self.transport.writelines(out)
        if self.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            # the peer does not read its replies: it may only hurt itself, and only so much
            _REFUSED.add("slow_reader")
            self.leave_all()
            self.closed = True
            self.transport.abort()

    def ping(self) -> None:
        self.pinged = True
        self.transport.write(wire.frame(wire.PING, b""))

    def close(self, code: int = 1000) -> None:
        """End the channels' sessions now, write what is due, and close with `code`."""
        self.leave_all()
        if not self.closed:
            self.write_out()
            self.closed = True
            self.transport.write(wire.close(code))
            self.transport.close()

    # -- frames ------------------------------------------------------------------------
    def on_text(self, raw: str | bytes) -> bool:
        """Handle one text message; False when it must wait for a session id (it is then
        handled again, in order, once one has come)."""
        try:
            frame = protocol.parse(raw, self.vsn)
        except protocol.FrameError as exc:
            _FRAME.add("malformed")
            _REFUSED.add("malformed")
            self.send(protocol.reply(self.vsn, None, exc.ref, exc.topic or "phoenix", exc.reason))
            return True
        if frame.topic == "phoenix" and frame.event == "heartbeat":
            _FRAME.add("heartbeat")
            self.send(protocol.reply(self.vsn, None, frame.ref, "phoenix"))
            return True
        if frame.event == "phx_join":
            _FRAME.add("join")
            self.join(frame)
            return True
        joined = self.channels.get(frame.topic)
        if joined is None or (frame.join_ref is not None and joined[0] != frame.join_ref):
            _FRAME.add("unmatched")
            self.send(protocol.reply(self.vsn, None, frame.ref, frame.topic, "unmatched topic"))
            return True
        if frame.event == "phx_leave":
            _FRAME.add("leave")
            self.leave(frame.topic)
            self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            self.send(
                protocol.encode(
                    self.vsn, frame.join_ref, frame.join_ref, frame.topic, "phx_close", {}
                )
            )
            return True
        if frame.event == "event":
            _FRAME.add("event")
            return self.event(frame, joined[1])
        _FRAME.add("unknown")
        self._refuse(frame, "unknown_event", f"unknown event {frame.event[:40]!r}")
        return True

    def _refuse(self, frame: protocol.Frame, kind: str, reason: str) -> None:
        _REFUSED.add(kind)
        if frame.event == "event":
            _EVENTS.add("failed" if kind == "write_failed" else "refused")
        self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, reason))

    def join(self, frame: protocol.Frame) -> None:
        if not valid_topic(frame.topic):
            return self._refuse(frame, "unmatched_topic", "unmatched topic")
        if self.device.bot:
            return self._refuse(frame, "bot", "bots are not counted")
        if frame.topic in self.channels:  # a rejoin replaces the old channel, as Phoenix does
            self.leave(frame.topic)
        if len(self.channels) >= self.hub.settings.max_channels_per_socket:
            return self._refuse(frame, "too_many_channels", "too many channels on this socket")
        try:
            info = parse_join(frame.payload, self.key, self.source_url, self.hub.limits)
        except InvalidInput as exc:
            return self._refuse(frame, "invalid_input", str(exc))
        if not self.hub.keys.is_active(info.key):
            return self._refuse(frame, "invalid_key", "invalid key")
        session = ViewingSession(info, self.device)
        if not self.hub.reserve(session.cost):
            return self._refuse(
                frame, "memory_budget", "server is at its session memory limit, try again later"
            )
        self.channels[frame.topic] = (frame.join_ref, session)
        # the join is an impression: acknowledged once it is committed, like every event
        self.hub.writer.submit([session.impression(_now())], functools.partial(self._joined, frame))

    def _joined(self, frame: protocol.Frame, failure: str | None) -> None:
        """The join's impression committed (or failed): queue the join's reply."""
        if failure is None:
            return self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
        joined = self.channels.get(frame.topic)
        if joined is not None and joined[0] == frame.join_ref:
            self.hub.release(self.channels.pop(frame.topic)[1].cost)
        _REFUSED.add("write_failed")
        self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, failure))

    def event(self, frame: protocol.Frame, session: ViewingSession) -> bool:
        """Apply an event push; False when it waits for a session id (nothing done yet)."""
        new_id = None
        if session.needs_id(frame.payload):
            new_id = self.hub.writer.take_session_id()
            if new_id is None:
                return False
        arrived = time.perf_counter()
        if not self.bucket.take():
            self._refuse(frame, "rate_limit", "rate limit exceeded")
            return True
        if not self.hub.keys.is_active(session.join.key):
            self._refuse(frame, "invalid_key", "invalid key")
            self.revoke(frame.topic, frame.join_ref)
            return True
        was_playing = session.playing
        cost = session.cost
        try:
            ops = session.handle(frame.payload, _now(), new_id)
        except InvalidInput as exc:
            self._refuse(frame, "invalid_input", str(exc))
            return True
        if cost != session.cost:  # buffered pre-play events come and go
            self.hub.release(cost - session.cost)
        self._track(session, was_playing)
        if not ops:
            _EVENTS.add("acked")
            self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            return True
        self.hub.writer.submit(ops, functools.partial(self._committed, frame, arrived))
        return True

    def receive(self, text: str) -> None:
        """A text message, handled now unless earlier ones wait for a session id."""
        if self.backlog is not None:
            self.backlog.append(text)
        elif not self.on_text(text):
            self.backlog = deque([text])
            self.transport.pause_reading()
            self.hub.waiting.add(asyncio.get_running_loop().create_task(self._wait_for_id()))

    async def _wait_for_id(self) -> None:
        """Messages wait for a block of session ids to come; then they go on in order (an
        event that cannot have its id is answered with the reason)."""
        backlog = self.backlog
        assert backlog is not None
        try:
            while backlog and not self.closed:
                try:
                    await self.hub.writer.new_session_id_ready()
                except WriteFailed as exc:
                    frame = protocol.parse(backlog.popleft(), self.vsn)
                    self._refuse(frame, "write_failed", str(exc))
                    continue
                while backlog and self.on_text(backlog[0]):
                    backlog.popleft()
        finally:
            self.backlog = None
            if not self.closed:
                self.transport.resume_reading()
            task = asyncio.current_task()
            if task is not None:
                self.hub.waiting.discard(task)

    def _committed(self, frame: protocol.Frame, arrived: float, failure: str | None) -> None:
        """The event's batch committed (or failed): queue its reply, in commit order."""
        if failure is None:
            _EVENTS.add("acked")
            ACK_SECONDS.observe(time.perf_counter() - arrived)
            text = protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic)
        else:
            _REFUSED.add("write_failed")
            _EVENTS.add("failed")
            text = protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, failure)
        self.send(text)

    def _track(self, session: ViewingSession, was_playing: bool) -> None:
        if session.row is None or was_playing == session.playing:
            return
        if session.playing:
            self.hub.presence.playing.add(session.row.id)
        else:
            self.hub.presence.playing.discard(session.row.id)

    def revoke(self, topic: str, join_ref: str | None) -> None:
        """The channel's key was revoked: drop the session without writing anything more,
        and tell the client the channel is closed (a Phoenix client does not rejoin)."""
        _, session = self.channels.pop(topic)
        self.hub.release(session.cost)
        if session.row is not None:
            self.hub.presence.playing.discard(session.row.id)
        if session.playing:
            self.hub.writer.submit([session.stop_presence()], _ignore)
        self.send(protocol.encode(self.vsn, join_ref, join_ref, topic, "phx_close", {}))

    def leave(self, topic: str) -> None:
        """Close a channel's session at this moment; its rows are written without a reply."""
        _, session = self.channels.pop(topic)
        self.hub.release(session.cost)
        was_playing = session.playing
        ops = session.close(_now())
        self._track(session, was_playing)
        if ops:
            self.hub.writer.submit(ops, _ignore)

    def leave_all(self) -> None:
        for topic in list(self.channels):
            self.leave(topic)


class SocketProtocol(asyncio.Protocol):
    """The websocket of one client, from the upgrade request on: uvicorn hands it the
    connection (this class is its `ws` protocol); the request is answered here and every
    message handled as it is read. The hub comes from the app's lifespan state."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any]) -> None:
        self.hub: Hub | None = app_state.get("hub")
        self.server_state = server_state
        self.conn: Connection | None = None
        self.reader: wire.Reader | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.closed = True
            conn.leave_all()
            if self.hub is not None:
                self.hub.sockets.discard(conn)
            SOCKETS.dec()

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this on every open connection)."""
        if self.conn is not None:
            self.conn.close(wire.GOING_AWAY)
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            return self._open(data)
        conn = self.conn
        if conn is None or conn.closed:
            return
        try:
            messages = self.reader.messages(data)
        except wire.Closing as exc:
            _REFUSED.add("frame_too_large" if exc.code == wire.TOO_BIG else "protocol_error")
            return conn.close(exc.code)
        conn.last_seen = time.monotonic()
        conn.pinged = False
        for opcode, payload in messages:
            if conn.closed:
                return
            if opcode == wire.TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    _REFUSED.add("protocol_error")
                    return conn.close(wire.INVALID_DATA)
                conn.receive(text)
            elif opcode == wire.BINARY:
                _FRAME.add("binary")
                conn.send(
                    protocol.reply(
                        conn.vsn, None, None, "phoenix", "binary frames are not supported"
                    )
                )
            elif opcode == wire.PING:
                conn.queue(wire.frame(wire.PONG, payload))
            elif opcode == wire.CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                return conn.close(
                    code if 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015) else 1000
                )

    def _open(self, request: bytes) -> None:
        """The upgrade request (uvicorn passes it whole): accept, or answer with HTTP."""
        assert self.transport is not None
        hub = self.hub
        try:
            path, query, headers, response = wire.handshake(request)
            if path != "/socket/websocket" or hub is None:
                raise wire.Refused(404, "not found")
        except wire.Refused as exc:
            self.transport.write(wire.refusal(exc.status, exc.reason))
            self.transport.close()
            return
        if not hub.accepting or len(hub.sockets) >= hub.settings.max_sockets:
            _REFUSED.add("max_sockets" if hub.accepting else "shutting_down")
            self.transport.write(wire.refusal(403, "try again later"))  # 1013 in spirit
            self.transport.close()
            return
        self.transport.write(response)
        self.reader = wire.Reader(hub.settings.max_frame_bytes)
        self.conn = Connection(hub, self.transport, query, headers)
        hub.sockets.add(self.conn)
        SOCKETS.inc()
