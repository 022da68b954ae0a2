"""Phoenix Channels frames, sans I/O: parse what clients send, build what we answer.

vsn 2.0.0 frames are JSON arrays `[join_ref, ref, topic, event, payload]`; vsn 1.0.0
(and clients that send no vsn) use objects with the same five fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.model.storable import MAX_JSON_DEPTH, UnsafeValue, check_json

V1 = "1.0.0"
V2 = "2.0.0"


class FrameError(ValueError):
    """A frame we cannot act on; `ref` is set when the frame told us which push it was."""

    def __init__(self, reason: str, ref: str | None = None, topic: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.topic = topic


@dataclass(slots=True)  # not frozen: one is made per message, and frozen costs
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]


def _ref(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise FrameError("ref must be a string or null")


def _plainly_safe(raw: str | bytes) -> bool:
    """True when the raw frame cannot hold a NUL (only a \\u0000 escape can put one in a
    decoded string) nor nest deeper than MAX_JSON_DEPTH (not that many brackets in all):
    the usual small frame then skips the walk of check_json."""
    if isinstance(raw, bytes):
        return b"\\u0000" not in raw and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
    return "\\u0000" not in raw and raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH


def parse(raw: str | bytes, vsn: str) -> Frame:
    """Decode one text frame; raise FrameError with a reason a client can read."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError("malformed frame: not JSON") from None
    if vsn == V2:
        if not isinstance(data, list) or len(data) != 5:
            raise FrameError("malformed frame: expected [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = data
    else:
        if not isinstance(data, dict):
            raise FrameError("malformed frame: expected an object")
        join_ref, ref = data.get("join_ref"), data.get("ref")
        topic, event, payload = data.get("topic"), data.get("event"), data.get("payload")
    try:
        ref = _ref(ref)
    except FrameError:
        ref = None
    join_ref = _ref(join_ref) if isinstance(join_ref, (str, int, type(None))) else None
    topic_hint = topic if isinstance(topic, str) else None
    if not isinstance(topic, str) or not topic or len(topic) > 200:
        raise FrameError("malformed frame: topic must be a non-empty string", ref, topic_hint)
    if not isinstance(event, str) or not event or len(event) > 100:
        raise FrameError("malformed frame: event must be a non-empty string", ref, topic_hint)
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise FrameError("malformed frame: payload must be an object", ref, topic_hint)
    if not _plainly_safe(raw):
        try:
            check_json("payload", payload)
        except UnsafeValue as exc:
            raise FrameError(f"malformed frame: {exc}", ref, topic_hint) from None
    return Frame(join_ref, ref, topic, event, payload)


def encode(
    vsn: str,
    join_ref: str | None,
    ref: str | None,
    topic: str,
    event: str,
    payload: dict[str, Any] | orjson.Fragment,
) -> bytes:
    """A frame's text, as UTF-8 bytes."""
    if vsn == V2:
        return orjson.dumps((join_ref, ref, topic, event, payload))
    return orjson.dumps(
        {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}
    )


_OK = orjson.Fragment(b'{"status":"ok","response":{}}')  # the usual reply, encoded once


def reply(
    vsn: str, join_ref: str | None, ref: str | None, topic: str, reason: str | None = None
) -> bytes:
    """A phx_reply: ok when reason is None, else error with that reason."""
    if reason is None:
        return encode(vsn, join_ref, ref, topic, "phx_reply", _OK)
    return encode(
        vsn, join_ref, ref, topic, "phx_reply", {"status": "error", "response": {"reason": reason}}
    )
