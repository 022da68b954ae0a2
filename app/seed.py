"""Realistic dummy data for demos and benchmarks: the shape of the traffic (what
`vidmetrics seed` writes); app/storage/synthetic.py generates it inside PostgreSQL.

Deterministic: the same --seed, day anchor and sizes give the same rows.
"""

from __future__ import annotations

import random

from app.model.rows import VideoRef
from app.model.vocabulary import BROWSERS, DEVICES, PLATFORMS
from app.storage.synthetic import Model

# (weight, browser, platform, device): a plausible mix of real-world traffic
MIX = [
    (30, "chrome", "windows", "desktop"),
    (12, "chrome", "mac", "desktop"),
    (18, "safari", "ios", "mobile"),
    (4, "safari", "ios", "tablet"),
    (8, "safari", "mac", "desktop"),
    (12, "chrome", "android", "mobile"),
    (2, "chrome", "android", "tablet"),
    (5, "firefox", "windows", "desktop"),
    (2, "firefox", "linux", "desktop"),
    (1, "chrome", "linux", "desktop"),
    (4, "edge", "windows", "desktop"),
    (1, "opera", "windows", "desktop"),
    (1, "brave", "mac", "desktop"),
    (0.3, "ie", "windows", "desktop"),
    (0.7, "other", "other", "other"),
]
assert all(b in BROWSERS and p in PLATFORMS and d in DEVICES for _, b, p, d in MIX)
PAGES = ["/", "/blog/launch", "/docs/getting-started", "/pricing", "/customers/story"]

MODEL = Model(
    mix=MIX,
    pages=PAGES,
    pieces=(1, 1, 1, 2, 2, 3, 4),  # play/pause pieces of the main run
    seek_rate=0.3,  # the main run starts after a seek
    second_run_rate=0.3,  # a second run after a seek
    run_seconds=45.0,
    pause_seconds=5.0,
    unplayed_loads=0.6,  # page loads that never play, per session that does (play rate ~62 %)
    # the share of views whose page uses the first-party client (the rest use
    # @maveio/metrics and report no QoE), and how often things go wrong for them
    qoe_share=0.4,
    stall_rate=0.2,
    exit_rate=0.03,  # extra views, per QoE view, requested and abandoned before start
    startup_failure_rate=0.008,  # extra views that failed before the first frame
    playback_failure_rate=0.005,  # views that failed mid-way
)


def videos(key: str, count: int) -> list[VideoRef]:
    return [
        VideoRef.of(key, None, {"video_id": f"seed-{i}", "title": f"Seed video {i}"})
        for i in range(count)
    ]


def durations(seed: int, count: int) -> list[float]:
    """Each seeded video's duration in seconds (20 s to 15 min)."""
    rng = random.Random(seed)
    return [rng.uniform(20, 900) for _ in range(count)]
