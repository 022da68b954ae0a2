"""The /socket/websocket endpoint: Phoenix Channels over a websocket, one task per socket.

Each `session:*` channel owns a ViewingSession. Events are applied in arrival order and
their rows handed to the writer at once; the reply is sent when the writer's commit
resolves, so a socket keeps reading (heartbeats included) while writes are in flight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from prometheus_client import Counter, Gauge
from starlette.types import Receive, Scope, Send

from app.auth.keys import KeyCache
from app.ingest import protocol
from app.ingest.agents import classify
from app.ingest.sessions import InvalidInput, Limits, ViewingSession, parse_join, valid_topic
from app.ingest.writer import WriteFailed, Writer
from app.settings import Settings

log = logging.getLogger("vidmetrics.socket")

SOCKETS = Gauge("vidmetrics_sockets", "Open websockets")
FRAMES = Counter("vidmetrics_frames_total", "Frames received", ["kind"])
REFUSED = Counter("vidmetrics_refused_total", "Refused frames, joins and sockets", ["reason"])


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

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.max_metadata_bytes, self.settings.max_metadata_depth)


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
        self.pending: set[asyncio.Task[None]] = set()
        self.closed = False

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
            FRAMES.labels("malformed").inc()
            await self.send(protocol.reply(self.vsn, None, exc.ref, exc.topic or "phoenix",
                                           exc.reason))
            return
        if frame.topic == "phoenix" and frame.event == "heartbeat":
            FRAMES.labels("heartbeat").inc()
            await self.send(protocol.reply(self.vsn, None, frame.ref, "phoenix"))
            return
        if frame.event == "phx_join":
            FRAMES.labels("join").inc()
            await self.join(frame)
            return
        joined = self.channels.get(frame.topic)
        if joined is None or (frame.join_ref is not None and joined[0] != frame.join_ref):
            FRAMES.labels("unmatched").inc()
            await self.send(protocol.reply(self.vsn, None, frame.ref, frame.topic,
                                           "unmatched topic"))
            return
        if frame.event == "phx_leave":
            FRAMES.labels("leave").inc()
            self.leave(frame.topic)
            await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            await self.send(protocol.encode(self.vsn, frame.join_ref, frame.join_ref,
                                            frame.topic, "phx_close", {}))
            return
        if frame.event == "event":
            FRAMES.labels("event").inc()
            await self.event(frame, joined[1])
            return
        FRAMES.labels("unknown").inc()
        await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic,
                                       f"unknown event {frame.event[:40]!r}"))

    async def _refuse(self, frame: protocol.Frame, reason: str) -> None:
        REFUSED.labels(reason.split(":")[0][:40]).inc()
        await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic, reason))

    async def join(self, frame: protocol.Frame) -> None:
        if not valid_topic(frame.topic):
            return await self._refuse(frame, "unmatched topic")
        if self.device.bot:
            return await self._refuse(frame, "bots are not counted")
        if frame.topic in self.channels:  # a rejoin replaces the old channel, as Phoenix does
            self.leave(frame.topic)
        if len(self.channels) >= self.hub.settings.max_channels_per_socket:
            return await self._refuse(frame, "too many channels on this socket")
        try:
            info = parse_join(frame.payload, self.key, self.source_url, self.hub.limits)
        except InvalidInput as exc:
            return await self._refuse(frame, str(exc))
        if not self.hub.keys.is_active(info.key):
            return await self._refuse(frame, "invalid key")
        self.channels[frame.topic] = (frame.join_ref, ViewingSession(info, self.device))
        await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))

    async def event(self, frame: protocol.Frame, session: ViewingSession) -> None:
        if not self.bucket.take():
            return await self._refuse(frame, "rate limit exceeded")
        new_id = None
        if session.needs_id(frame.payload):
            try:
                new_id = await self.hub.writer.new_session_id()
            except WriteFailed as exc:
                return await self._refuse(frame, str(exc))
        was_playing = session.playing
        try:
            ops = session.handle(frame.payload, _now(), new_id)
        except InvalidInput as exc:
            return await self._refuse(frame, str(exc))
        self._track(session, was_playing)
        if not ops:
            await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))
            return
        future = self.hub.writer.submit(ops)
        task = asyncio.create_task(self._ack(frame, future))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _ack(self, frame: protocol.Frame, future: asyncio.Future[None]) -> None:
        try:
            await future
        except WriteFailed as exc:
            return await self._refuse(frame, str(exc))
        await self.send(protocol.reply(self.vsn, frame.join_ref, frame.ref, frame.topic))

    def _track(self, session: ViewingSession, was_playing: bool) -> None:
        if session.row is None or was_playing == session.playing:
            return
        if session.playing:
            self.hub.presence.playing.add(session.row.id)
        else:
            self.hub.presence.playing.discard(session.row.id)

    def leave(self, topic: str) -> None:
        """Close a channel's session at this moment; its rows are written without a reply."""
        _, session = self.channels.pop(topic)
        was_playing = session.playing
        ops = session.close(_now())
        self._track(session, was_playing)
        if ops:
            future = self.hub.writer.submit(ops)
            future.add_done_callback(lambda f: f.exception())  # failure already logged

    def leave_all(self) -> None:
        for topic in list(self.channels):
            self.leave(topic)


async def serve_socket(scope: Scope, receive: Receive, send: Send) -> None:
    hub: Hub = scope["app"].state.hub
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if not hub.accepting or len(hub.sockets) >= hub.settings.max_sockets:
        REFUSED.labels("max sockets" if hub.accepting else "shutting down").inc()
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
            text = message.get("text")
            if text is None:
                FRAMES.labels("binary").inc()
                await conn.send(protocol.reply(conn.vsn, None, None, "phoenix",
                                               "binary frames are not supported"))
                continue
            if len(text) > max_frame:
                REFUSED.labels("frame too large").inc()
                await conn.close(1009)
                break
            await conn.on_text(text)
    finally:
        conn.closed = True
        conn.leave_all()
        hub.sockets.discard(conn)
        SOCKETS.dec()


class _SocketApp:
    """A plain ASGI app (Starlette would wrap a bare function in its WebSocket class)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_socket(scope, receive, send)


websocket_endpoint = _SocketApp()
