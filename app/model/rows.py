"""Rows the ingest side produces and storage writes: session snapshots, watched ranges,
raw events, presence, page loads; and what a committed batch reports back."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from app.model import rollup


@dataclass(frozen=True, slots=True)
class VideoRef:
    key: str
    identity: str
    identifier: str | None
    metadata: orjson.Fragment  # the encoded JSON: a few bytes, not a tree of objects

    @classmethod
    def of(cls, key: str, identifier: str | None, metadata: dict[str, Any]) -> VideoRef:
        canonical = orjson.dumps([identifier, metadata], option=orjson.OPT_SORT_KEYS)
        return cls(
            key,
            hashlib.sha256(canonical).hexdigest(),
            identifier,
            orjson.Fragment(orjson.dumps(metadata)),
        )

    @property
    def size(self) -> int:
        """Bytes this reference holds on to (for memory accounting)."""
        return (
            len(self.key)
            + len(self.identity)
            + len(self.identifier or "")
            + len(orjson.dumps(self.metadata))
        )


@dataclass(slots=True)
class SessionRow:
    """A snapshot of a session; written as an upsert, the latest snapshot wins."""

    id: int
    started_at: dt.datetime
    video: VideoRef
    browser: str
    platform: str
    device: str
    page: str | None
    session_data: orjson.Fragment | None  # encoded JSON, see VideoRef.metadata
    ended_at: dt.datetime | None = None
    duration: float | None = None
    watch_seconds: float = 0.0
    furthest: float = 0.0
    ended: bool = False  # the media reached its end (an `ended` event)
    played: bool = True  # False: requested (or failed) but never started playing
    qoe: rollup.Qoe | None = None  # None: the client sends no QoE events

    def copy(self) -> SessionRow:
        """A snapshot (cheaper than dataclasses.replace: no field introspection)."""
        return SessionRow(
            self.id,
            self.started_at,
            self.video,
            self.browser,
            self.platform,
            self.device,
            self.page,
            self.session_data,
            self.ended_at,
            self.duration,
            self.watch_seconds,
            self.furthest,
            self.ended,
            self.played,
            self.qoe,
        )

    def state(self, video_id: int, islands: tuple[float, ...]) -> rollup.State:
        """What this snapshot contributes to the rollups."""
        return rollup.State(
            self.video.key,
            video_id,
            self.started_at,
            self.browser,
            self.platform,
            self.device,
            self.page,
            self.watch_seconds,
            self.duration,
            islands,
            self.furthest,
            self.ended,
            self.played,
            self.qoe,
        )

    def qoe_columns(self) -> tuple[Any, ...]:
        """The sessions table's QoE columns (all NULL without QoE data)."""
        q = self.qoe
        if q is None:
            return (None,) * 13
        return (
            True,
            q.startup_ms,
            q.rebuffer_count,
            q.rebuffer_seconds,
            q.seek_count,
            q.seek_ms,
            q.failure,
            q.failed_before_start,
            q.exited_before_start,
            q.quick_exit,
            q.upscale_max,
            q.upscale_sum,
            q.upscale_seconds,
        )


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs
class IntervalRow:
    """A media range watched; merged into the session's islands as it is written."""

    session_id: int
    video: VideoRef
    media_from: float
    media_to: float


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs
class EventRow:
    """A raw event, appended to its session's packed timeline (app/storage/timeline.py)."""

    session_id: int
    video: VideoRef
    session_started_at: dt.datetime
    at: dt.datetime
    name: str
    payload: dict[str, Any] | None


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs
class Presence:
    """The session is playing (True) or not (False) as of this write."""

    session_id: int
    video: VideoRef
    session_started_at: dt.datetime
    playing: bool


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs
class Ended:
    """The session ended (leave, disconnect, idle timeout): its summary is final."""

    session_id: int
    video: VideoRef
    session_started_at: dt.datetime


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs
class Impression:
    """A join: the video was loaded on a page (played or not)."""

    video: VideoRef
    at: dt.datetime
    browser: str
    platform: str
    device: str
    page: str | None
    session_data: orjson.Fragment | None


Op = SessionRow | IntervalRow | EventRow | Presence | Ended | Impression


class VideoIds:
    """(key, identity) -> videos.id, bounded; filled only after a commit succeeds."""

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._limit = limit

    def get(self, ref: VideoRef) -> int | None:
        return self._ids.get((ref.key, ref.identity))

    def update(self, found: dict[tuple[str, str], int]) -> None:
        if len(self._ids) + len(found) > self._limit:
            self._ids.clear()
        self._ids.update(found)


class Written:
    """What this process last committed of each of its live sessions: the session's rollup
    state and the bytes of timeline its row holds. A session found here is written without
    reading its row back (one SELECT per batch fewer, and no decoding of its islands); one
    not found (new, evicted, or after a batch that failed, when what was committed is not
    known) is read from the database, as is every session of a batch when this is None.
    Bounded: past `limit` sessions it starts again from empty."""

    def __init__(self, limit: int = 200_000) -> None:
        self._states: dict[int, tuple[rollup.State, int]] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._states)

    def get(self, session_id: int) -> tuple[rollup.State, int] | None:
        return self._states.get(session_id)

    def apply(self, states: dict[int, tuple[rollup.State, int] | None]) -> None:
        """Record a committed batch's sessions (None: the session ended, forget it)."""
        if len(self._states) + len(states) > self._limit:
            self._states.clear()
        for sid, state in states.items():
            if state is None:
                self._states.pop(sid, None)
            else:
                self._states[sid] = state

    def forget(self, session_ids: Iterable[int]) -> None:
        for sid in session_ids:
            self._states.pop(sid, None)


class StaleState(Exception):
    """A session this process believed stored had no row (deleted meanwhile): the batch's
    rollup changes were computed from a state that is gone; write it again from the rows."""

    def __init__(self, session_ids: list[int]) -> None:
        super().__init__(f"{len(session_ids)} sessions vanished")
        self.session_ids = session_ids


@dataclass(slots=True)
class Outcome:
    """What a committed batch tells the writer: video ids resolved on the way, and the
    sessions' new states for `Written.apply`."""

    videos: dict[tuple[str, str], int]
    sessions: dict[int, tuple[rollup.State, int] | None]
