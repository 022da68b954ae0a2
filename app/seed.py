"""Realistic dummy data for demos and benchmarks, written through the storage layer with COPY.

Deterministic: the same --seed, day anchor and sizes give the same rows.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.model import BROWSERS, DEVICES, PLATFORMS
from app.storage.rollups import Qoe
from app.storage.session_store import EventRow, Impression, IntervalRow, SessionRow, VideoRef

CHUNK = 1000  # sessions per id block and per COPY

# (weight, browser, platform, device): a plausible mix of real-world traffic
MIX = [
    (30, "chrome", "windows", "desktop"), (12, "chrome", "mac", "desktop"),
    (18, "safari", "ios", "mobile"), (4, "safari", "ios", "tablet"),
    (8, "safari", "mac", "desktop"), (12, "chrome", "android", "mobile"),
    (2, "chrome", "android", "tablet"), (5, "firefox", "windows", "desktop"),
    (2, "firefox", "linux", "desktop"), (1, "chrome", "linux", "desktop"),
    (4, "edge", "windows", "desktop"), (1, "opera", "windows", "desktop"),
    (1, "brave", "mac", "desktop"), (0.3, "ie", "windows", "desktop"),
    (0.7, "other", "other", "other"),
]
assert all(b in BROWSERS and p in PLATFORMS and d in DEVICES for _, b, p, d in MIX)
PAGES = ["/", "/blog/launch", "/docs/getting-started", "/pricing", "/customers/story"]


@dataclass
class Chunk:
    sessions: list[SessionRow]
    intervals: list[IntervalRow]
    events: list[EventRow]
    impressions: list[Impression] = field(default_factory=list)


UNPLAYED_LOADS = 0.6  # page loads that never play, per session that does (play rate ~62 %)
# Quality of experience: the share of views whose page uses the first-party client (the
# rest use @maveio/metrics and report none), and how often things go wrong for them
QOE_SHARE = 0.4
STALL_RATE = 0.2  # views with rebuffering
EXIT_RATE = 0.03  # extra views, per QoE view, that were requested and abandoned before start
STARTUP_FAILURE_RATE = 0.008  # extra views that failed before the first frame
PLAYBACK_FAILURE_RATE = 0.005  # views that failed mid-way


def _quality(rng: random.Random, device: str, seeks: int, played: bool = True) -> Qoe:
    """Plausible QoE for one view: startup time log-normal around ~0.9 s on desktops and
    ~1.6 s elsewhere; some stalls; seeks that take a few hundred ms."""
    median = 900.0 if device == "desktop" else 1600.0
    stalls = 0
    stalled = 0.0
    if played and rng.random() < STALL_RATE:
        stalls = rng.choice((1, 1, 1, 2, 3))
        stalled = sum(rng.lognormvariate(0.3, 0.8) for _ in range(stalls))
    latency = sum(rng.lognormvariate(5.3, 0.6) for _ in range(seeks))
    failure = 2 if played and rng.random() < PLAYBACK_FAILURE_RATE else None
    return Qoe(round(rng.lognormvariate(0, 0.5) * median, 1) if played else None, stalls,
               round(stalled, 3), seeks, round(latency, 1), failure)


def videos(key: str, count: int) -> list[VideoRef]:
    return [VideoRef.of(key, None, {"video_id": f"seed-{i}", "title": f"Seed video {i}"})
            for i in range(count)]


def generate(rng: random.Random, refs: list[VideoRef], ids: Iterator[int], sessions: int,
             days: int, end: dt.datetime) -> Iterator[Chunk]:
    weights = [w for w, *_ in MIX]
    durations = [rng.uniform(20, 900) for _ in refs]
    span = days * 86400.0
    chunk = Chunk([], [], [])
    qrng = random.Random(sessions * 7919 + days)  # QoE draws apart: the plays stay as before
    for _ in range(sessions):
        v = min(int(rng.paretovariate(1.2)) - 1, len(refs) - 1)  # a few videos get most views
        ref, duration = refs[v], durations[v]
        _, browser, platform, device = rng.choices(MIX, weights)[0]
        started = end - dt.timedelta(seconds=rng.random() * span)
        host = f"https://site{v % 3}.example"
        page = host + rng.choice(PAGES)
        row = SessionRow(next(ids), started, ref, browser, platform, device, page, None,
                         duration=duration)
        loaded = started - dt.timedelta(seconds=rng.uniform(0.5, 8))
        chunk.impressions.append(Impression(ref, loaded, browser, platform, device, page, None))
        while rng.random() < UNPLAYED_LOADS / (1 + UNPLAYED_LOADS):  # loads that never play
            chunk.impressions.append(Impression(
                ref, end - dt.timedelta(seconds=rng.random() * span), browser, platform, device,
                page, None))
        wall, position = started, 0.0
        seeks = 0
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):  # play/pause/seek segments
            if rng.random() < 0.3:
                position = rng.uniform(0, duration * 0.9)  # a seek
                seeks += 1
            length = min(duration - position, rng.expovariate(1 / 45))
            if length <= 0:
                break
            chunk.events.append(EventRow(row.id, ref, started, wall, "play",
                                         {"from": round(position, 2)}))
            chunk.intervals.append(IntervalRow(row.id, ref, position, position + length))
            wall += dt.timedelta(seconds=length)
            position += length
            chunk.events.append(EventRow(row.id, ref, started, wall, "pause",
                                         {"to": round(position, 2)}))
            row.watch_seconds += length
            row.furthest = max(row.furthest, position)
            if position >= duration:
                row.ended = True
                chunk.events.append(EventRow(row.id, ref, started, wall, "ended", None))
                break
            wall += dt.timedelta(seconds=rng.expovariate(1 / 5))
        row.ended_at = wall
        chunk.sessions.append(row)
        if qrng.random() < QOE_SHARE:
            row.qoe = _quality(qrng, device, seeks)
            for rate, failure in ((EXIT_RATE, None), (STARTUP_FAILURE_RATE, 4)):
                if qrng.random() < rate:  # a view that never started: not a play
                    chunk.sessions.append(SessionRow(
                        next(ids), started + dt.timedelta(seconds=1), ref, browser, platform,
                        device, page, None, ended_at=started + dt.timedelta(seconds=9),
                        duration=duration, played=False,
                        qoe=Qoe(failure=failure, failed_before_start=failure is not None,
                                exited_before_start=failure is None)))
        if len(chunk.sessions) >= CHUNK:
            yield chunk
            chunk = Chunk([], [], [], [])
    if chunk.sessions:
        yield chunk
