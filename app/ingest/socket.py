"""The /socket/websocket endpoint: Phoenix Channels over a websocket, one task per socket.

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
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import Receive, Scope, Send

from app.auth.keys import KeyCache
from app.ingest import protocol
from app.ingest.agents import classify
from app.ingest.sessions import InvalidInput, Limits, ViewingSession, parse_join, valid_topic
from app.ingest.writer import WriteFailed, Writer
from app.settings import Settings

log = logging.getLogger("vidmetrics.socket")

SOCKETS = Gauge("vidmetrics_sockets", "Open websockets")
SESSION_BYTES = Gauge("vidmetrics_session_state_bytes",
                      "Client-supplied session state held in memory (the budget's use)")
FRAMES = Counter("vidmetrics_frames_total", "Frames received", ["kind"])
REFUSED = Counter("vidmetrics_refused_total", "Refused frames, joins and sockets", ["reason"])
EVENTS = Counter("vidmetrics_events_total", "Event pushes by outcome", ["outcome"])
ACK_SECONDS = Histogram("vidmetrics_ack_seconds", "From an event's arrival to its ok reply "
                        "(after commit)", buckets=(.001, .0025, .005, .01, .025, .05, .1, .25,
                                                   .5, 1, 2.5, 5, 10))
# Label values come from these fixed sets only (never from client text), and each child is
# resolved once: a scrape stays small whatever clients send, and no frame pays a lookup.
_FRAME = {kind: FRAMES.labels(kind) for kind in (
    "malformed", "heartbeat", "join", "unmatched", "leave", "event", "unknown", "binary")}
_REFUSED = {reason: REFUSED.labels(reason) for reason in (
    "malformed", "unmatched_topic", "unknown_event", "bot", "too_many_channels",
    "invalid_input", "invalid_key", "memory_budget", "rate_limit", "write_failed",
    "max_sockets", "shutting_down", "frame_too_large", "idle")}
_EVENTS = {outcome: EVENTS.labels(outcome) for outcome in ("acked", "refused", "failed")}


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
    # replies to committed events, in commit order, sent by one task per commit (not one
    # task per event)
    replies: deque[tuple[Connection, str]] = field(default_factory=deque)
    sender: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    def reply(self, conn: Connection, text: str) -> None:
        self.replies.append((conn, text))
        if self.sender is None or self.sender.done():
            self.sender = asyncio.get_running_loop().create_task(self._send_replies())

    async def _send_replies(self) -> None:
        while self.replies:
            conn, text = self.replies.popleft()
            await conn.send(text)

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
        deadline = time.monotonic() - self.settings.socket_idle_seconds
        keys_changed = self.keys.generation != self.keys_seen
        self.keys_seen = self.keys.generation
        for conn in list(self.sockets):
            if conn.last_seen < deadline:
                _REFUSED["idle"].inc()
                conn.leave_all()
                conn.closing = asyncio.ensure_future(conn.close(1001))
                continue
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
    __slots__ = ("hub", "_send", "vsn", "key", "source_url", "device", "channels", "bucket",
                 "closed", "closing", "last_seen")  # one per open socket

    def __init__(self, hub: Hub, scope: Scope, send: Send) -> None:
        self.hub = hub
        self._send = send
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.vsn = params.get("vsn", [protocol.V1])[0]
        if self.vsn not in (protocol.V1, protocol.V2):
            self.vsn = protocol.V2 if self.vsn.startswith("2") else protocol.V1
        self.key = params.get("key", [None])[0]
        self.source_url = params.get("source_url", [None])[0]
        headers = dict(scope.get("headers") or [])
        user_agent = headers.get(b"user-agent", b"").decode("latin-1")
        brave = b"brave" in headers.get(b"sec-ch-ua", b"").lower()
        self.device = classify(user_agent, brave)  # the UA string itself goes no further
        self.channels: dict[str, tuple[str | None, ViewingSession]] = {}
        self.bucket = _Bucket(hub.settings.max_events_per_second)
        self.closed = False
        self.closing: asyncio.Future[None] | None = None
        self.last_seen = time.monotonic()

    async def send(self, text: str) -> None:
        if self.closed:
            return
        try:
            await self._send({"type": "websocket.send", "text": text})
        except (OSError, RuntimeError):
            self.closed = True  # the peer is gone; the receive loop will see the disconnect

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            try:
                await self._send({"type": "websocket.close", "code": code})
            except (OSError, RuntimeError):
                pass

    # -- frames ------------------------------------------------------------------------
    async def on_text(self, raw: str | bytes) -> None:
        try:
            frame = protocol.parse(raw, self.vsn)
        except protocol.FrameError as exc:
            _FRAME["malformed"].inc()
            _REFUSED["malformed"].inc()
            await self.send(protocol.reply(self.vsn, None, exc.ref, exc.topic or "phoenix",
                                           exc.reason))
            return
        if frame.topic == "phoenix" and frame.event == "heartbeat":
            _FRAME["heartbeat"].inc()
            await self.send(protocol.reply(self.vsn, None, frame.ref, "phoenix"))
            return
        if frame.event == "phx_join":
            _FRAME["join"].inc()
            await self.join(frame)
            return
        joined = self.channels.get(frame.topic)
        if joined is None or (frame.join_ref is not None and joined[0] != frame.join_ref):
            _FRAME["unmatched"].inc()
            await self.send(protocol.reply(self.vsn, None, frame.ref, frame.topic,
                                           "unmatched topic"))
            return
        if frame.event == "phx_leave":
            _FRAME["leave"].inc()
            self.leave(frame.topic)
            await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            await self.send(protocol.encode(self.vsn, frame.join_ref, frame.join_ref,
                                            frame.topic, "phx_close", {}))
            return
        if frame.event == "event":
            _FRAME["event"].inc()
            await self.event(frame, joined[1])
            return
        _FRAME["unknown"].inc()
        await self._refuse(frame, "unknown_event", f"unknown event {frame.event[:40]!r}")

    async def _refuse(self, frame: protocol.Frame, kind: str, reason: str) -> None:
        _REFUSED[kind].inc()
        if frame.event == "event":
            _EVENTS["failed" if kind == "write_failed" else "refused"].inc()
        await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, reason))

    async def join(self, frame: protocol.Frame) -> None:
        if not valid_topic(frame.topic):
            return await self._refuse(frame, "unmatched_topic", "unmatched topic")
        if self.device.bot:
            return await self._refuse(frame, "bot", "bots are not counted")
        if frame.topic in self.channels:  # a rejoin replaces the old channel, as Phoenix does
            self.leave(frame.topic)
        if len(self.channels) >= self.hub.settings.max_channels_per_socket:
            return await self._refuse(frame, "too_many_channels",
                                      "too many channels on this socket")
        try:
            info = parse_join(frame.payload, self.key, self.source_url, self.hub.limits)
        except InvalidInput as exc:
            return await self._refuse(frame, "invalid_input", str(exc))
        if not self.hub.keys.is_active(info.key):
            return await self._refuse(frame, "invalid_key", "invalid key")
        session = ViewingSession(info, self.device)
        if not self.hub.reserve(session.cost):
            return await self._refuse(frame, "memory_budget",
                                      "server is at its session memory limit, try again later")
        self.channels[frame.topic] = (frame.join_ref, session)
        # the join is an impression: acknowledged once it is committed, like every event
        self.hub.writer.submit([session.impression(_now())],
                               functools.partial(self._joined, frame))

    def _joined(self, frame: protocol.Frame, failure: str | None) -> None:
        """The join's impression committed (or failed): queue the join's reply."""
        if failure is None:
            return self.hub.reply(self, protocol.reply(self.vsn, frame.join_ref, frame.ref,
                                                       frame.topic))
        joined = self.channels.get(frame.topic)
        if joined is not None and joined[0] == frame.join_ref:
            self.hub.release(self.channels.pop(frame.topic)[1].cost)
        _REFUSED["write_failed"].inc()
        self.hub.reply(self, protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic,
                                            failure))

    async def event(self, frame: protocol.Frame, session: ViewingSession) -> None:
        arrived = time.perf_counter()
        if not self.bucket.take():
            return await self._refuse(frame, "rate_limit", "rate limit exceeded")
        if not self.hub.keys.is_active(session.join.key):
            await self._refuse(frame, "invalid_key", "invalid key")
            return self.revoke(frame.topic, frame.join_ref)
        new_id = None
        if session.needs_id(frame.payload):
            try:
                new_id = await self.hub.writer.new_session_id()
            except WriteFailed as exc:
                return await self._refuse(frame, "write_failed", str(exc))
        was_playing = session.playing
        cost = session.cost
        try:
            ops = session.handle(frame.payload, _now(), new_id)
        except InvalidInput as exc:
            return await self._refuse(frame, "invalid_input", str(exc))
        if cost != session.cost:  # buffered pre-play events come and go
            self.hub.release(cost - session.cost)
        self._track(session, was_playing)
        if not ops:
            _EVENTS["acked"].inc()
            await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            return
        self.hub.writer.submit(ops, functools.partial(self._committed, frame, arrived))

    def _committed(self, frame: protocol.Frame, arrived: float, failure: str | None) -> None:
        """The event's batch committed (or failed): queue its reply, in commit order."""
        if failure is None:
            _EVENTS["acked"].inc()
            ACK_SECONDS.observe(time.perf_counter() - arrived)
            text = protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic)
        else:
            _REFUSED["write_failed"].inc()
            _EVENTS["failed"].inc()
            text = protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, failure)
        self.hub.reply(self, text)

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
        self.hub.reply(self, protocol.encode(self.vsn, join_ref, join_ref, topic, "phx_close",
                                             {}))

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


async def serve_socket(scope: Scope, receive: Receive, send: Send) -> None:
    hub: Hub = scope["app"].state.hub
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if not hub.accepting or len(hub.sockets) >= hub.settings.max_sockets:
        _REFUSED["max_sockets" if hub.accepting else "shutting_down"].inc()
        await send({"type": "websocket.close", "code": 1013})  # try again later
        return
    conn = Connection(hub, scope, send)
    await send({"type": "websocket.accept"})
    hub.sockets.add(conn)
    SOCKETS.inc()
    max_frame = hub.settings.max_frame_bytes
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                break
            if kind != "websocket.receive":
                continue
            conn.last_seen = time.monotonic()
            text = message.get("text")
            if text is None:
                _FRAME["binary"].inc()
                await conn.send(protocol.reply(conn.vsn, None, None, "phoenix",
                                               "binary frames are not supported"))
                continue
            if len(text) > max_frame:
                _REFUSED["frame_too_large"].inc()
                await conn.close(1009)
                break
            await conn.on_text(text)
    finally:
        conn.closed = True
        conn.leave_all()
        hub.sockets.discard(conn)
        SOCKETS.dec()
