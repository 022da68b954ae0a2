"""The names every layer shares: the device classes a user agent is reduced to, and the
event names and payload fields the protocol defines (their positions are stored codes)."""

from __future__ import annotations

import enum

BROWSERS = ("brave", "chrome", "edge", "firefox", "ie", "opera", "other", "safari")


DEVICES = ("desktop", "mobile", "other", "tablet")


PLATFORMS = ("android", "ios", "linux", "mac", "other", "windows")


# Every event name a client may send. The stored timeline (app/storage/timeline.py) encodes
# a name as its position here: append new names at the end, never reorder or remove.
EVENT_NAMES = (
    "play",
    "pause",
    "seeked",
    "seeking",
    "ratechange",
    "volumechange",
    "durationchange",
    "loadedmetadata",
    "loadeddata",
    "canplay",
    "canplaythrough",
    "playing",
    "waiting",
    "ended",
    "timeupdate",
    "rebuffering_start",
    "rebuffering_end",
    "playback_failure",
    "fullscreen_enter",
    "fullscreen_exit",
    "source_set",
    "track_set",
    "play_request",
    "first_frame",
    "rendition",
    "exit",
)


# The payload fields the protocol defines (anything else is dropped before storage): numbers,
# and short texts with their length limit. Positions here are stored codes, append-only too.
PAYLOAD_NUMBERS = (
    "duration",
    "from",
    "to",
    "timestamp",
    "rate",
    "playbackRate",
    "volume",
    "ms",
    "code",
    "width",
    "height",
    "br",
    "pr",
    "at",
    "dw",  # rendition: the element's displayed width and height, device pixels
    "dh",
)


PAYLOAD_TEXTS = (("language", 35),)


class Breakdown(enum.StrEnum):
    """What a QoE answer may be grouped by: a device class, closed (its value is also the
    sessions column that holds it)."""

    BROWSER = "browser"
    PLATFORM = "platform"
    DEVICE = "device"

    @property
    def classes(self) -> tuple[str, ...]:
        return {"browser": BROWSERS, "platform": PLATFORMS, "device": DEVICES}[self.value]

    def class_of(self, value: str) -> str:
        """The class a view counts in: its own when known, else "other"."""
        return value if value in self.classes else "other"
