"""One channel's viewing session: join payload validation, and play/pause -> watch intervals.

Pure state machine: methods take the server's clock and return the rows to write; the
socket submits them to the writer. A session is recorded when playback first starts.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.ingest.agents import Device
from app.model import scores
from app.model.rollup import Qoe
from app.model.rows import (
    Ended,
    EventRow,
    Impression,
    IntervalRow,
    Op,
    Presence,
    SessionRow,
    VideoRef,
)
from app.model.storable import UnsafeValue, check_json, check_text
from app.model.vocabulary import EVENT_NAMES, PAYLOAD_NUMBERS, PAYLOAD_TEXTS

# Event names the legacy (0.0.x) and current clients send (app.model.EVENT_NAMES; the
# first-party client adds play_request, first_frame, rendition and exit, see
# docs/protocol.md); anything else is refused.
EVENTS = frozenset(EVENT_NAMES)
# Events that begin a session when none has begun: playback started (`play`, a play), or
# a view that may never start (`play_request`, `playback_failure`).
STARTERS = frozenset({"play", "play_request", "playback_failure"})
# Events that mark a session as one with QoE data (its client reports QoE); sessions
# without any are left out of every QoE figure, never counted as perfect.
QOE_SIGNALS = frozenset(
    {
        "play_request",
        "first_frame",
        "rebuffering_start",
        "rebuffering_end",
        "playback_failure",
        "exit",
    }
)
# A duration the client measured (`ms`) may exceed what the server's clock saw between
# the two events by network jitter; beyond this slack the server's figure is used.
CLIENT_MS_SLACK = 2000.0
MAX_MEDIA_ERROR = 4  # MediaError codes are 1..4; anything else is stored as 0 (unknown)
MAX_POSITION = 7 * 24 * 3600.0  # a week of media; anything beyond is not a real position
MAX_PAGE_LENGTH = 2048
MAX_PIXELS = 100_000.0  # a rendition or display dimension beyond this is not a real one
MAX_PREPLAY_EVENTS = 32
# memory accounting (see ViewingSession.cost): measured sizes of the Python objects
SESSION_OVERHEAD_BYTES = 2048
PREPLAY_EVENT_BYTES = 512
# A session's watch time may grow at most this many times faster than the wall clock since
# its first play (browsers cap playbackRate at 16), plus a slack for events that a client
# buffered and sent together; a claimed position beyond that is clamped, so one
# `pause {to: 604800}` cannot record a week of viewing.
MAX_PLAYBACK_RATE = 16.0
WATCH_SLACK_SECONDS = 10.0
# The fields of an event payload that the protocol defines; anything else a client sends
# is dropped before storage (never stored verbatim). Numbers may arrive as numeric strings.
NUMBER_FIELDS = PAYLOAD_NUMBERS
TEXT_FIELDS = dict(PAYLOAD_TEXTS)
_NUMBER_AT = {name: n for n, name in enumerate(NUMBER_FIELDS)}
_SESSION_TOPIC = re.compile(r"^session:[A-Za-z0-9_\-:.]{1,128}$")


class InvalidInput(ValueError):
    """The client sent something we refuse; the message is the reply's reason."""


@dataclass(frozen=True, slots=True)
class Limits:
    metadata_bytes: int
    metadata_depth: int


def valid_topic(topic: str) -> bool:
    return bool(_SESSION_TOPIC.match(topic))


DEFAULT_PORTS = {"http": 80, "https": 443}


def strip_url(url: Any) -> str | None:
    """scheme://host[:port]/path of a page URL: no query, fragment, credentials, matrix
    parameters (`;jsessionid=...` in any path segment) or default port."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = "/".join(segment.split(";", 1)[0] for segment in parts.path.split("/"))
    page = f"{scheme}://{netloc}{path or '/'}"
    return page[:MAX_PAGE_LENGTH]


def _check_object(name: str, value: Any, limits: Limits) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be an object")
    try:  # depth and NUL first: the serialiser below would choke on either
        check_json(name, value, limits.metadata_depth)
    except UnsafeValue as exc:
        raise InvalidInput(str(exc)) from None
    if len(orjson.dumps(value)) > limits.metadata_bytes:
        raise InvalidInput(f"{name} is larger than {limits.metadata_bytes} bytes")
    return value


def _check_string(name: str, value: str) -> str:
    try:
        check_text(name, value)
    except UnsafeValue as exc:
        raise InvalidInput(str(exc)) from None
    return value


@dataclass(frozen=True, slots=True)
class JoinInfo:
    key: str
    video: VideoRef
    page: str | None
    session_data: orjson.Fragment | None

    @property
    def size(self) -> int:
        """Bytes of client-supplied state this session holds (for the memory budget)."""
        extra = len(orjson.dumps(self.session_data)) if self.session_data is not None else 0
        return self.video.size + len(self.page or "") + extra


def parse_join(
    payload: dict[str, Any], connect_key: str | None, connect_url: str | None, limits: Limits
) -> JoinInfo:
    """Validate a phx_join payload (current and legacy shapes)."""
    key = payload.get("key", connect_key)
    missing = []
    if not isinstance(key, str) or not key:
        missing.append("key")
    metadata = payload.get("metadata")
    identifier = payload.get("identifier")
    if metadata is None and identifier is None:
        missing.append("metadata or identifier")
    if missing:
        raise InvalidInput(f"missing {' and '.join(missing)}")
    assert isinstance(key, str)
    if len(key) > 200:
        raise InvalidInput("key is too long")
    _check_string("key", key)
    if metadata is not None:
        metadata = _check_object("metadata", metadata, limits)
    if isinstance(identifier, dict):
        identifier = _check_object("identifier", identifier, limits)
        if metadata is None:  # a metadata-only client whose identifier is the metadata
            metadata = identifier
        identifier = None
    elif identifier is not None:
        if not isinstance(identifier, str) or not identifier or len(identifier) > 500:
            raise InvalidInput("identifier must be a non-empty string or an object")
        _check_string("identifier", identifier)
    session_data = payload.get("session_data")
    if session_data is not None:
        session_data = _check_object("session_data", session_data, limits)
    raw_url = payload.get("source_url") or connect_url
    if isinstance(raw_url, str):
        _check_string("source_url", raw_url)
    page = strip_url(raw_url)
    return JoinInfo(
        key,
        _shared(VideoRef.of(key, identifier, metadata or {})),
        page,
        orjson.Fragment(orjson.dumps(session_data)) if session_data else None,
    )


# The videos of open sessions, one object each however many viewers it has (a socket
# then holds no copy of its metadata); bounded, started again from empty when full.
_VIDEOS: dict[tuple[str, str], VideoRef] = {}
MAX_SHARED_VIDEOS = 10_000


def _shared(ref: VideoRef) -> VideoRef:
    if len(_VIDEOS) >= MAX_SHARED_VIDEOS:
        _VIDEOS.clear()
    return _VIDEOS.setdefault((ref.key, ref.identity), ref)


def _position(payload: dict[str, Any], name: str) -> float:
    raw = payload.get(name)
    if isinstance(raw, bool) or raw is None:
        raise InvalidInput(f"{name} must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_POSITION:
        raise InvalidInput(f"{name} is out of range")
    # milliseconds: finer is noise, and subnormal values would underflow in arithmetic
    return round(value, 3)


def _optional_number(payload: dict[str, Any], name: str) -> float | None:
    if payload.get(name) is None:
        return None
    try:
        return _position(payload, name)
    except InvalidInput:
        return None  # durations such as Infinity (live streams) are simply unknown


def _stored_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The protocol-defined fields of an event payload, as stored with the raw event."""
    kept: dict[str, Any] = {}
    # the payload's few keys against the protocol's fields, kept in the protocol's order
    for _, name, raw in sorted(
        (_NUMBER_AT[name], name, raw) for name, raw in payload.items() if name in _NUMBER_AT
    ):
        if isinstance(raw, bool) or raw is None:
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            kept[name] = value
    for name, limit in TEXT_FIELDS.items():
        raw = payload.get(name)
        if isinstance(raw, str) and raw:
            kept[name] = raw[:limit]
    return kept


@dataclass(slots=True)
class _Open:
    media_from: float
    wall_start: dt.datetime
    rate: float


def _measured_ms(payload: dict[str, Any], since: dt.datetime, now: dt.datetime) -> float:
    """How long something took: the client's `ms` if it sent a plausible one (it measured
    on its own clock, without network delay), else what the server's clock saw."""
    seen = max(0.0, (now - since).total_seconds() * 1000)
    claimed = _optional_number(payload, "ms")
    if claimed is not None and claimed <= seen + CLIENT_MS_SLACK:
        return claimed
    return round(seen, 3)


@dataclass(slots=True)  # one per open channel: no per-instance __dict__
class ViewingSession:
    join: JoinInfo
    device: Device
    row: SessionRow | None = None
    open: _Open | None = None
    rate: float = 1.0
    duration: float | None = None
    preplay: list[tuple[dt.datetime, str, dict[str, Any]]] | None = None  # made when needed
    # QoE lives on the row (a frozen Qoe, replaced on each QoE event; None until the client
    # sends one); what is in progress is here
    stalled_since: dt.datetime | None = None
    seeking_since: dt.datetime | None = None
    # the rendition's upscale as last reported (None: unknown), and since when it has
    # been shown while playing (None: not playing), for the video quality score
    upscale: float | None = None
    upscale_since: dt.datetime | None = None
    closed: bool = False
    base_cost: int = 0  # the fixed part of `cost`, computed once

    def __post_init__(self) -> None:
        self.base_cost = SESSION_OVERHEAD_BYTES + self.join.size

    @property
    def started(self) -> bool:
        return self.row is not None

    @property
    def playing(self) -> bool:
        return self.open is not None

    @property
    def cost(self) -> int:
        """Bytes of memory this session is charged against the server's budget: what the
        client sent at join, each buffered pre-play event, and a fixed overhead."""
        if self.preplay:
            return self.base_cost + PREPLAY_EVENT_BYTES * len(self.preplay)
        return self.base_cost

    def impression(self, now: dt.datetime) -> Impression:
        """The join itself: this video was loaded on a page."""
        return Impression(
            self.join.video,
            now,
            self.device.browser,
            self.device.platform,
            self.device.device,
            self.join.page,
            self.join.session_data,
        )

    def stop_presence(self) -> Presence:
        """Stop counting the session as playing, writing nothing else (key revoked)."""
        assert self.row is not None
        self.open = None
        return Presence(self.row.id, self.row.video, self.row.started_at, False)

    def needs_id(self, payload: dict[str, Any]) -> bool:
        """True when this event starts the session and a session id must be allocated."""
        return self.row is None and payload.get("name") in STARTERS

    def handle(
        self, payload: dict[str, Any], now: dt.datetime, new_id: int | None = None
    ) -> list[Op]:
        """Apply one `event` push; return the rows to write (empty: nothing to store)."""
        name = payload.get("name")
        if not isinstance(name, str) or name not in EVENTS:
            raise InvalidInput(f"unknown event name {str(name)[:40]!r}")
        duration = _optional_number(payload, "duration")
        if duration is not None and duration > 0:
            self.duration = duration
        if name == "ratechange":
            self._rate_change(payload)
        elif name == "rendition":
            self._rendition(payload, now)
        extra = _stored_fields(payload)
        self.closed = False

        ops: list[Op] = []
        if self.row is None and name in STARTERS:
            assert new_id is not None
            ops.extend(self._start(new_id, now))
        if name == "play":
            assert self.row is not None
            position = _position(payload, "from") if "from" in payload else 0.0
            self.row.played = True
            if self.open is not None:  # play while playing: close at the implied position
                ops.extend(self._close(now, None))
            self.open = _Open(position, now, self.rate)
            self.upscale_since = now
            ops.append(Presence(self.row.id, self.row.video, self.row.started_at, True))
        elif name in ("pause", "ended") and self.open is not None:
            ops.extend(self._close(now, _position(payload, "to") if "to" in payload else None))
        if name == "ended" and self.row is not None:
            self.row.ended = True
        if self.row is None:
            if self.preplay is None:
                self.preplay = []
            if len(self.preplay) < MAX_PREPLAY_EVENTS:
                self.preplay.append((now, name, extra))
            return []
        self._quality_event(name, payload, now)
        ops.append(self._event(now, name, extra))
        if name == "exit":  # the page is going away: the session is over, as on a leave
            ops.extend(self._finish(now, _position(payload, "to") if "to" in payload else None))
            return ops
        ops.append(self._snapshot(now))
        return ops

    def _rate_change(self, payload: dict[str, Any]) -> None:
        rate = (
            _optional_number(payload, "rate")
            or _optional_number(payload, "playbackRate")
            or _optional_number(payload, "pr")
        )
        if rate is not None and 0 < rate <= 16:
            self.rate = rate

    def _rendition(self, payload: dict[str, Any], now: dt.datetime) -> None:
        """A rendition (width × height) shown in a dw × dh box: its upscale counts from now
        (what was shown until now is added first). Sizes missing or not positive, or
        beyond MAX_PIXELS: unknown, and not counted."""
        self._count_upscale(now)
        sizes = [_optional_number(payload, f) for f in ("width", "height", "dw", "dh")]
        known = [s for s in sizes if s is not None and 0 < s <= MAX_PIXELS]
        self.upscale = scores.upscale_of(*known) if len(known) == 4 else None

    def _count_upscale(self, now: dt.datetime) -> None:
        """Add the current upscale, shown since upscale_since while playing, to the view's
        QoE (its largest, and its integral over those seconds)."""
        row, since = self.row, self.upscale_since
        if self.open is not None:
            self.upscale_since = now
        if row is None or row.qoe is None or since is None or self.upscale is None:
            return
        q, seconds = row.qoe, max(0.0, (now - since).total_seconds())
        row.qoe = replace(
            q,
            upscale_max=self.upscale if q.upscale_max is None else max(q.upscale_max, self.upscale),
            upscale_sum=q.upscale_sum + self.upscale * seconds,
            upscale_seconds=q.upscale_seconds + seconds,
        )

    def _start(self, new_id: int, now: dt.datetime) -> list[Op]:
        """The session's row, from its first starting event; the events that came before
        it (kept meanwhile) are stored now."""
        self.row = SessionRow(
            id=new_id,
            started_at=now,
            video=self.join.video,
            browser=self.device.browser,
            platform=self.device.platform,
            device=self.device.device,
            page=self.join.page,
            session_data=self.join.session_data,
            played=False,
        )
        earlier: list[Op] = [self._event(at, n, p) for at, n, p in self.preplay or ()]
        self.preplay = None
        return earlier

    def close(self, now: dt.datetime) -> list[Op]:
        """The page went away (leave or disconnect): close an open interval at this moment."""
        if self.row is None or self.closed:
            return []
        return self._finish(now, None)

    # -- internals ---------------------------------------------------------------------
    def _quality_event(self, name: str, payload: dict[str, Any], now: dt.datetime) -> None:
        """Derive QoE from one event of a started session (see docs/api.md, /qoe)."""
        row = self.row
        assert row is not None
        q = row.qoe
        if q is None:
            if name not in QOE_SIGNALS:
                return
            q = row.qoe = Qoe()
        if name == "first_frame":
            if q.startup_ms is None and q.failure is None:
                row.qoe = replace(q, startup_ms=_measured_ms(payload, row.started_at, now))
        elif name == "rebuffering_start":
            if self.stalled_since is None and q.failure is None:
                self.stalled_since = now
                row.qoe = replace(q, rebuffer_count=q.rebuffer_count + 1)
        elif name == "rebuffering_end":
            self._end_stall(payload, now)
        elif name == "seeking":
            self.seeking_since = now
        elif name == "seeked":
            if self.seeking_since is not None:
                row.qoe = replace(
                    q,
                    seek_count=q.seek_count + 1,
                    seek_ms=q.seek_ms + _measured_ms(payload, self.seeking_since, now),
                )
                self.seeking_since = None
        elif name == "playback_failure":
            if q.failure is None:
                code = _optional_number(payload, "code")
                failure = (
                    int(code)
                    if code is not None and code == int(code) and 1 <= code <= MAX_MEDIA_ERROR
                    else 0
                )
                row.qoe = replace(
                    q,
                    failure=failure,
                    failed_before_start=(q.startup_ms is None and not row.played),
                )
                self._end_stall({}, now)

    def _end_stall(self, payload: dict[str, Any], now: dt.datetime) -> None:
        """A stall ends (or the session does while stalled): add its length."""
        row = self.row
        if self.stalled_since is not None and row is not None and row.qoe is not None:
            row.qoe = replace(
                row.qoe,
                rebuffer_seconds=row.qoe.rebuffer_seconds
                + _measured_ms(payload, self.stalled_since, now) / 1000,
            )
        self.stalled_since = None

    def _finish(self, now: dt.datetime, position: float | None) -> list[Op]:
        """The session is over: its summary is final (until the page comes back)."""
        row = self.row
        assert row is not None
        ops = self._close(now, position)
        if row.qoe is not None:
            self._end_stall({}, now)
            q = row.qoe
            exited = not row.played and q.startup_ms is None and q.failure is None
            row.qoe = replace(
                q,
                exited_before_start=exited,
                quick_exit=exited
                and (now - row.started_at).total_seconds() < scores.QUICK_EXIT_SECONDS,
            )
        self.closed = True
        ops.append(self._snapshot(now))
        ops.append(Ended(row.id, row.video, row.started_at))
        return ops

    def _event(self, at: dt.datetime, name: str, payload: dict[str, Any]) -> EventRow:
        assert self.row is not None
        return EventRow(self.row.id, self.row.video, self.row.started_at, at, name, payload or None)

    def _snapshot(self, now: dt.datetime) -> SessionRow:
        assert self.row is not None
        self.row.ended_at = now
        self.row.duration = self.duration
        return self.row.copy()

    def _close(self, now: dt.datetime, position: float | None) -> list[Op]:
        """Close the open interval at `position`, or where the clock says playback got to."""
        assert self.row is not None
        current = self.open
        if current is None:
            return []
        self._count_upscale(now)
        self.open = None
        self.upscale_since = None
        elapsed = max(0.0, (now - current.wall_start).total_seconds())
        end = current.media_from + elapsed * current.rate if position is None else position
        lived = (now - self.row.started_at).total_seconds()
        allowed = lived * MAX_PLAYBACK_RATE + WATCH_SLACK_SECONDS - self.row.watch_seconds
        end = min(end, current.media_from + max(0.0, allowed))
        if self.duration is not None:
            end = min(end, self.duration)
        ops: list[Op] = [Presence(self.row.id, self.row.video, self.row.started_at, False)]
        if end > current.media_from:
            self.row.watch_seconds += end - current.media_from
            self.row.furthest = max(self.row.furthest, end)
            ops.append(IntervalRow(self.row.id, self.row.video, current.media_from, end))
        return ops
