"""Parse and validate query requests into typed values; every failure names the field.

Nothing parsed here ever becomes SQL text: the storage layer receives these values as
query parameters.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from app.errors import BadRequest
from app.model.query import (
    DEFAULT_SLOW_START_SECONDS,
    BucketQuery,
    EngagementQuery,
    ExportQuery,
    Issue,
    Selection,
    SessionsQuery,
    Span,
    Window,
)
from app.model.vocabulary import Breakdown

MAX_SPAN_SECONDS = 10 * 366 * 86400
MAX_MONTHS = 120
DEFAULT_INTERVAL = "12 months"
DEFAULT_TIMEFRAME = "7 days"
_SPAN = re.compile(r"^\s*(\d{1,9})\s+(second|minute|hour|day|week|month|year)s?\s*$", re.I | re.A)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_ZONE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")
_QUERY_FIELDS = ("video", "session", "key")


def parse_span(field: str, value: Any) -> Span:
    if not isinstance(value, str):
        raise BadRequest(f'{field} must be a string like "1 day"')
    match = _SPAN.match(value)
    if match is None:
        raise BadRequest(
            f'{field} must be "<n> <unit>" with unit second, minute, hour, day, week, month '
            f"or year, got {value[:60]!r}"
        )
    count, unit = int(match.group(1)), match.group(2).lower()
    if count <= 0:
        raise BadRequest(f"{field} must be a positive span, got {value[:60]!r}")
    if unit in ("month", "year"):
        months = count * (12 if unit == "year" else 1)
        if months > MAX_MONTHS:
            raise BadRequest(f"{field} must not exceed 10 years")
        return Span(months=months)
    seconds = count * _UNIT_SECONDS[unit]
    if seconds > MAX_SPAN_SECONDS:
        raise BadRequest(f"{field} must not exceed 10 years")
    return Span(seconds=seconds)


def _finite(field: str, value: Any, what: str) -> float:
    """A finite number, given as one or as its text; else 400 "<field> must be <what>"."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{field} must be {what}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{field} must be {what}")
    return float(value)


def _unix(field: str, value: Any) -> dt.datetime:
    value = _finite(field, value, "a unix timestamp in seconds")
    if value < 0 or value > 4102444800:  # 2100-01-01
        raise BadRequest(f"{field} is out of range")
    return dt.datetime.fromtimestamp(value, dt.UTC)


def parse_timeframe(value: Any, now: dt.datetime) -> Window:
    if value is None:
        value = DEFAULT_TIMEFRAME
    if isinstance(value, dict):
        unknown = set(value) - {"from", "to"}
        if unknown:
            raise BadRequest(f"timeframe has unknown field {sorted(unknown)[0]!r}")
        if "from" not in value or "to" not in value:
            raise BadRequest('timeframe must have both "from" and "to"')
        start, end = _unix("timeframe.from", value["from"]), _unix("timeframe.to", value["to"])
        if start > end:
            raise BadRequest("timeframe.from must not be after timeframe.to")
        if start == end:
            raise BadRequest("timeframe must span more than zero seconds")
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        or (isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value, re.A))
    ):
        start, end = _unix("timeframe", value), now
        if start >= end:
            raise BadRequest("timeframe must be in the past")
    elif isinstance(value, str):
        end = now
        start = parse_span("timeframe", value).before(now)
    else:
        raise BadRequest(
            'timeframe must be a span like "7 days", a unix timestamp, '
            'or {"from": unix, "to": unix}'
        )
    if (end - start).total_seconds() > MAX_SPAN_SECONDS:
        raise BadRequest("timeframe must not exceed 10 years")
    return Window(start, end)


def within_retention(window: Window, retention_days: int, now: dt.datetime) -> Window:
    """The window without what is older than the retention horizon: such data counts as
    gone at query time on every backend, whether or not it has been deleted yet (plain
    PostgreSQL deletes rows hourly, TimescaleDB drops whole chunks)."""
    if retention_days <= 0:
        return window
    horizon = now - dt.timedelta(days=retention_days)
    return Window(max(window.start, horizon), max(window.end, horizon))


def parse_timezone(value: Any) -> str:
    if value is None:
        return "UTC"
    if not isinstance(value, str) or not _ZONE.match(value):
        raise BadRequest('timezone must be an IANA time zone name like "Europe/Berlin"')
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"timezone {value!r} is not a known IANA time zone") from None
    return value


def _number(field: str, value: Any, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    number = _finite(field, value, "a number")
    if not low <= number <= high:
        raise BadRequest(f"{field} must be between {low:g} and {high:g}")
    return number


def parse_ranges(value: Any) -> int:
    number = _number("ranges", value, 10, 1, 1000)
    if number != int(number):
        raise BadRequest("ranges must be an integer")
    return int(number)


def _object(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object")
    return value


def parse_selection(body: dict[str, Any]) -> Selection:
    query = body.get("query")
    identifier = body.get("identifier")
    if identifier is not None and (not isinstance(identifier, str) or not identifier):
        raise BadRequest("identifier must be a non-empty string")
    video = session = key = None
    if query is not None:
        query = _object("query", query)
        unknown = set(query) - set(_QUERY_FIELDS)
        if unknown:
            raise BadRequest(
                f"query has unknown field {sorted(unknown)[0]!r} (expected video, session or key)"
            )
        if query.get("video") is not None:
            video = _object("query.video", query["video"])
        if query.get("session") is not None:
            session = _object("query.session", query["session"])
        if query.get("key") is not None:
            key = query["key"]
            if not isinstance(key, str) or not key:
                raise BadRequest("query.key must be a non-empty string")
    if video is None and session is None and key is None and identifier is None:
        raise BadRequest("select videos with query.video, query.session, query.key or identifier")
    return Selection(video, session, key, identifier)


def bucket_count(window: Window, interval: Span) -> int:
    """An upper bound on the buckets an answer over `window` can have."""
    if interval.seconds:
        return int((window.end - window.start).total_seconds() // interval.seconds) + 2
    months = (window.end.year - window.start.year) * 12 + window.end.month - window.start.month
    return months // interval.months + 2


def bucket_query(
    body: dict[str, Any], now: dt.datetime, max_buckets: int, retention_days: int = 0
) -> BucketQuery:
    """The question of a bucketed endpoint; its window without what retention has
    dropped (the bucket limit applies to the window asked for)."""
    raw_interval = body.get("interval")
    interval = parse_span("interval", DEFAULT_INTERVAL if raw_interval is None else raw_interval)
    window = parse_timeframe(body.get("timeframe"), now)
    buckets = bucket_count(window, interval)
    if buckets > max_buckets:
        raise BadRequest(
            f"interval is too small for this timeframe: up to {buckets} buckets, "
            f"the limit is {max_buckets}"
        )
    return BucketQuery(
        selection=parse_selection(body),
        window=within_retention(window, retention_days, now),
        interval=interval,
        timezone=parse_timezone(body.get("timezone")),
        minimum_watch_seconds=_number(
            "minimum_watch_seconds", body.get("minimum_watch_seconds"), 1, 0, 86400 * 365
        ),
    )


def parse_breakdown(value: Any) -> Breakdown | None:
    if value is None:
        return None
    if value not in tuple(Breakdown):
        raise BadRequest("breakdown must be one of browser, platform, device")
    return Breakdown(value)


def engagement_query(
    body: dict[str, Any], now: dt.datetime, retention_days: int = 0
) -> EngagementQuery:
    normalize = body.get("normalize")
    if normalize is not None and normalize != "sessions":
        raise BadRequest('normalize must be "sessions" (or absent)')
    return EngagementQuery(
        selection=parse_selection(body),
        window=within_retention(parse_timeframe(body.get("timeframe"), now), retention_days, now),
        ranges=parse_ranges(body.get("ranges")),
        normalize=normalize,
    )


def parse_limit(value: Any, default: int, maximum: int) -> int:
    number = _number("limit", value, default, 1, maximum)
    if number != int(number):
        raise BadRequest("limit must be an integer")
    return int(number)


def parse_cursor(value: Any) -> tuple[dt.datetime, int] | None:
    """The opaque `next` of a sessions page: "<start in µs since the epoch>.<session id>"."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,20}\.[0-9]{1,20}", value):
        raise BadRequest("cursor must be the `next` value of a previous page")
    micros, session = value.split(".")
    try:
        moment = dt.datetime.fromtimestamp(int(micros) / 1e6, dt.UTC)
    except (OverflowError, ValueError, OSError):
        raise BadRequest("cursor must be the `next` value of a previous page") from None
    if int(session) > 2**63 - 1:
        raise BadRequest("cursor must be the `next` value of a previous page")
    return moment, int(session)


def sessions_query(
    body: dict[str, Any], now: dt.datetime, retention_days: int = 0
) -> SessionsQuery:
    """A page of the session list: selection, timeframe, limit (1-200, default 50), cursor,
    and optionally one `issue` (with `slow_start_seconds` for slow_start, default 4)."""
    issue = body.get("issue")
    if issue is not None and issue not in tuple(Issue):
        raise BadRequest(f"issue must be one of {', '.join(Issue)}")
    q = export_query({**body, "format": "ndjson"}, now, retention_days)
    return SessionsQuery(
        q.selection,
        q.window,
        parse_limit(body.get("limit"), 50, 200),
        parse_cursor(body.get("cursor")),
        None if issue is None else Issue(issue),
        _number(
            "slow_start_seconds",
            body.get("slow_start_seconds"),
            DEFAULT_SLOW_START_SECONDS,
            0.1,
            600,
        ),
    )


_SESSION_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() takes "²"


def parse_session_number(raw: str) -> int:
    """A session's number from a URL path: 1 to 19 ASCII digits within bigint."""
    if not _SESSION_NUMBER.fullmatch(raw) or int(raw) > 2**63 - 1:
        raise BadRequest("session must be a session number (ASCII digits)")
    return int(raw)


def make_cursor(started_at: dt.datetime, session: int) -> str:
    return f"{round(started_at.timestamp() * 1e6)}.{session}"


EXPORT_FORMATS = ("ndjson", "csv", "parquet")


def export_query(body: dict[str, Any], now: dt.datetime, retention_days: int = 0) -> ExportQuery:
    fmt = body.get("format", "ndjson")
    if fmt not in EXPORT_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    window = within_retention(parse_timeframe(body.get("timeframe"), now), retention_days, now)
    return ExportQuery(parse_selection(body), window, fmt)


def from_query_string(params: dict[str, str]) -> dict[str, Any]:
    """GET ?query=<json>&interval=... -> the same body a POST would carry."""
    body: dict[str, Any] = {}
    for name, raw in params.items():
        if name in ("query", "timeframe") and raw.lstrip().startswith(("{", "[")):
            try:
                body[name] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BadRequest(f"{name} is not valid JSON") from None
        else:
            body[name] = raw
    return body
