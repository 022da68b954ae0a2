"""A session's raw events, packed into one bytea column of its row (`sessions.events`).

Each write appends the batch's new events to the bytes already stored (`||`), so an event
costs one append to a row that is rewritten anyway, not a row and an index entry of its
own. An event is, big-endian:

    int32  milliseconds since the session started (negative: before its first play)
    uint8  name: position in app.model.EVENT_NAMES
    uint8  number of payload fields, then per field:
           uint8 code < 128: PAYLOAD_NUMBERS[code], then a float64
           uint8 code >= 128: PAYLOAD_TEXTS[code - 128], then uint8 length, UTF-8 bytes

About 6 bytes plus 9 per number (a `pause {to, duration}` is 24 bytes). The vocabulary is
append-only, so every stored timeline stays readable.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterable
from typing import Any

from app.model.vocabulary import EVENT_NAMES, PAYLOAD_NUMBERS, PAYLOAD_TEXTS

# A row keeps its session's first events up to this many bytes (under PostgreSQL's 2 KB
# TOAST threshold, so an append rewrites at most this); later writes of a long session
# go to overflow rows in `session_events`, one per write, read back in order.
ROW_BYTES = 1536

_HEAD = struct.Struct(">iBB")
_NUMBER = struct.Struct(">Bd")
_NAMES = {name: code for code, name in enumerate(EVENT_NAMES)}
_NUMBERS = {name: code for code, name in enumerate(PAYLOAD_NUMBERS)}
_TEXTS = {name: 128 + code for code, (name, _) in enumerate(PAYLOAD_TEXTS)}
_INT32 = 2**31 - 1


def offset_ms(at: dt.datetime, started_at: dt.datetime) -> int:
    """Whole milliseconds from the session's start, within int32 (±24 days)."""
    ms = round((at - started_at).total_seconds() * 1000)
    return max(-_INT32, min(_INT32, ms))


def encode(
    events: Iterable[tuple[dt.datetime, str, dict[str, Any] | None]], started_at: dt.datetime
) -> bytes:
    """Pack (at, name, payload) events; names and payload fields outside the vocabulary
    are not stored (ingest never produces them)."""
    out = bytearray()
    for at, name, payload in events:
        code = _NAMES.get(name)
        if code is None:
            continue
        fields = bytearray()
        count = 0
        for key, value in (payload or {}).items():
            if (number := _NUMBERS.get(key)) is not None and isinstance(value, int | float):
                fields += _NUMBER.pack(number, value)
                count += 1
            elif (text := _TEXTS.get(key)) is not None and isinstance(value, str):
                raw = value.encode()[:255]
                fields += bytes((text, len(raw))) + raw
                count += 1
        out += _HEAD.pack(offset_ms(at, started_at), code, count)
        out += fields
    return bytes(out)


def decode(
    blob: bytes | None,
    started_at: dt.datetime,
) -> list[tuple[dt.datetime, str, dict[str, Any]]]:
    """The events in `blob`, in stored order, as (at, name, payload)."""
    out: list[tuple[dt.datetime, str, dict[str, Any]]] = []
    if not blob:
        return out
    view, pos, end = memoryview(blob), 0, len(blob)
    while pos + _HEAD.size <= end:
        ms, code, count = _HEAD.unpack_from(view, pos)
        pos += _HEAD.size
        payload: dict[str, Any] = {}
        for _ in range(count):
            field = view[pos]
            if field < 128:
                _, value = _NUMBER.unpack_from(view, pos)
                payload[PAYLOAD_NUMBERS[field]] = value
                pos += _NUMBER.size
            else:
                length = view[pos + 1]
                payload[PAYLOAD_TEXTS[field - 128][0]] = bytes(
                    view[pos + 2 : pos + 2 + length]
                ).decode(errors="replace")
                pos += 2 + length
        name = EVENT_NAMES[code] if code < len(EVENT_NAMES) else "unknown"
        out.append((started_at + dt.timedelta(milliseconds=ms), name, payload))
    return out
