"""The OpenAPI 3.1 document served at /api/v1/openapi.json (tests validate real answers
against it, so it cannot drift from the behaviour)."""

from __future__ import annotations

import functools
from typing import Any

from app.model.query import Issue
from app.model.results import SCORE_NAMES, SUMMARY_COLUMNS
from app.model.vocabulary import BROWSERS, DEVICES, PLATFORMS


def _counts(keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(keys),
        "additionalProperties": False,
        "properties": {k: {"type": "integer", "minimum": 0} for k in keys},
    }


# ingest keys: visible ASCII, no spaces (generated keys are base64)
CUSTOM_KEY = "a custom key (default: 16 random bytes, base64)"
KEY_PATTERN = r"^[!-~]{1,200}$"
SPAN = {"type": "string", "pattern": r"^\s*\d+\s+[A-Za-z]+\s*$", "examples": ["1 day"]}
SELECTION = {
    "query": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "video": {"type": "object", "description": "video metadata must contain this"},
            "session": {"type": "object", "description": "session metadata must contain this"},
            "key": {
                "type": "string",
                "minLength": 1,
                "description": "every video under this ingest key",
            },
        },
    },
    "identifier": {"type": "string", "minLength": 1, "description": "legacy video identifier"},
}
TIMEFRAME = {
    "oneOf": [
        SPAN,
        {"type": "number", "description": "unix seconds: from then until now"},
        {
            "type": "object",
            "required": ["from", "to"],
            "additionalProperties": False,
            "properties": {"from": {"type": "number"}, "to": {"type": "number"}},
        },
    ]
}
LABEL = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": {"type": "string"}},
    },
    "BucketRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "interval": SPAN,
            "timeframe": TIMEFRAME,
            "minimum_watch_seconds": {"type": "number", "minimum": 0, "default": 1},
            "timezone": {"type": "string", "default": "UTC"},
        },
    },
    "EngagementRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "timeframe": TIMEFRAME,
            "ranges": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "normalize": {
                "enum": ["sessions"],
                "description": "also give each range's share of the selected sessions (0..1)",
            },
        },
    },
    "QoeRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "interval": SPAN,
            "timeframe": TIMEFRAME,
            "timezone": {"type": "string", "default": "UTC"},
            "breakdown": {
                "enum": ["browser", "platform", "device"],
                "description": "also give the figures per browser, platform or device class",
            },
        },
    },
    "Qoe": {
        "type": "object",
        "required": ["qoe"],
        "additionalProperties": False,
        "properties": {
            "qoe": {
                "type": "array",
                "items": {
                    "allOf": [{"$ref": "#/components/schemas/QoeFigures"}],
                    "type": "object",
                    "required": ["interval"],
                    "properties": {
                        "interval": LABEL,
                        "breakdown": {
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/QoeFigures"},
                        },
                    },
                },
            }
        },
    },
    "Scores": {
        "type": "object",
        "description": (
            "viewer-experience scores, 0–100 (docs/api.md has each formula); null where a "
            "score does not apply (no startup time, never started, no renditions reported)"
        ),
        "required": list(SCORE_NAMES.values()),
        "additionalProperties": False,
        "properties": {
            name: {"type": ["number", "null"], "minimum": 0, "maximum": 100}
            for name in SCORE_NAMES.values()
        },
    },
    "QoeFigures": {
        "type": "object",
        "required": [
            "views",
            "startup_time_ms",
            "rebuffer_percentage",
            "rebuffer_frequency",
            "rebuffer_count",
            "rebuffer_seconds",
            "watch_seconds",
            "playback_failure_percentage",
            "startup_failure_percentage",
            "exits_before_start_percentage",
            "seek_latency_ms",
            "scores",
            "scored_views",
        ],
        "properties": {
            "views": {"type": "integer", "minimum": 0, "description": "views with QoE data"},
            "startup_time_ms": {
                "type": "object",
                "required": ["p50", "p95", "views"],
                "properties": {
                    "p50": {"type": ["number", "null"]},
                    "p95": {"type": ["number", "null"]},
                    "views": {"type": "integer", "minimum": 0},
                },
            },
            "rebuffer_percentage": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "rebuffer_frequency": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "rebuffer events per minute watched",
            },
            "rebuffer_count": {"type": "integer", "minimum": 0},
            "rebuffer_seconds": {"type": "number", "minimum": 0},
            "watch_seconds": {"type": "number", "minimum": 0},
            "playback_failure_percentage": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 100,
            },
            "startup_failure_percentage": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 100,
            },
            "exits_before_start_percentage": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 100,
            },
            "seek_latency_ms": {
                "type": "object",
                "required": ["p50", "views"],
                "properties": {
                    "p50": {"type": ["number", "null"]},
                    "views": {"type": "integer", "minimum": 0},
                },
            },
            "scores": {
                "allOf": [{"$ref": "#/components/schemas/Scores"}],
                "description": "each score's mean over the views it applies to",
            },
            "scored_views": {
                "type": "object",
                "description": "per score, the views it applies to",
                "required": list(SCORE_NAMES.values()),
                "additionalProperties": False,
                "properties": {n: {"type": "integer", "minimum": 0} for n in SCORE_NAMES.values()},
            },
        },
    },
    "SelectionRequest": {"type": "object", "properties": SELECTION},
    "VideosRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "interval": SPAN,
            "timeframe": TIMEFRAME,
            "minimum_watch_seconds": {"type": "number", "minimum": 0, "default": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        },
    },
    "SessionsRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "timeframe": TIMEFRAME,
            "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            "cursor": {"type": "string", "description": "`next` of the previous page"},
            "issue": {
                "enum": [i.value for i in Issue],
                "description": "only the sessions that had this issue (docs/api.md)",
            },
            "slow_start_seconds": {
                "type": "number",
                "minimum": 0.1,
                "maximum": 600,
                "default": 4,
                "description": "what counts as a slow start (issue slow_start)",
            },
        },
    },
    "Videos": {
        "type": "object",
        "required": ["videos"],
        "additionalProperties": False,
        "properties": {
            "videos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["video", "identifier", "views", "total_view_time"],
                    "properties": {
                        "video": {},
                        "identifier": {"type": ["string", "null"]},
                        "views": {"type": "integer", "minimum": 0},
                        "total_view_time": {"type": "number", "minimum": 0},
                    },
                },
            }
        },
    },
    "SessionSummary": {
        "type": "object",
        "required": list(SUMMARY_COLUMNS),
        "properties": {
            "session": {"type": "integer"},
            "issues": {
                "type": "array",
                "items": {"enum": [i.value for i in Issue]},
                "description": "what went wrong in this view (session list and detail only)",
            },
            "started_at": {"type": "string"},
            "ended_at": {"type": ["string", "null"]},
            "identifier": {"type": ["string", "null"]},
            "metadata": {},
            "browser": {"type": "string"},
            "platform": {"type": "string"},
            "device": {"type": "string"},
            "page": {"type": ["string", "null"]},
            "duration": {"type": ["number", "null"]},
            "watch_seconds": {"type": "number"},
            "furthest": {"type": "number"},
            "watched": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "played": {
                "type": "boolean",
                "description": "false: playback was requested (or failed) but never started",
            },
            "qoe": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "description": "this view's QoE (null: its client reports none)",
                        "properties": {
                            "startup_ms": {"type": ["number", "null"]},
                            "rebuffer_count": {"type": "integer"},
                            "rebuffer_seconds": {"type": "number"},
                            "seek_count": {"type": "integer"},
                            "seek_latency_ms": {"type": ["number", "null"]},
                            "failure": {"type": ["integer", "null"]},
                            "failed_before_start": {"type": "boolean"},
                            "exited_before_start": {"type": "boolean"},
                            "upscale_max_percentage": {
                                "type": ["number", "null"],
                                "minimum": 0,
                                "description": "the largest upscale shown while playing "
                                "(100: a rendition at 2× its size); null: not reported",
                            },
                            "upscale_mean_percentage": {
                                "type": ["number", "null"],
                                "minimum": 0,
                                "description": "the upscale weighted by seconds shown",
                            },
                            "scores": {"$ref": "#/components/schemas/Scores"},
                        },
                    },
                ]
            },
        },
    },
    "Sessions": {
        "type": "object",
        "required": ["sessions", "next"],
        "additionalProperties": False,
        "properties": {
            "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/SessionSummary"}},
            "next": {"type": ["string", "null"]},
        },
    },
    "Session": {
        "type": "object",
        "required": ["session", "events"],
        "additionalProperties": False,
        "properties": {
            "session": {"$ref": "#/components/schemas/SessionSummary"},
            "events": {
                "type": "array",
                "description": (
                    "the raw events still kept, in the order they arrived (empty after "
                    "METRICS_RAW_EVENTS_RETENTION_DAYS)"
                ),
                "items": {
                    "type": "object",
                    "required": ["at_ms", "name", "payload"],
                    "additionalProperties": False,
                    "properties": {
                        "at_ms": {
                            "type": "number",
                            "description": (
                                "whole milliseconds since the session started; "
                                "negative before its first play"
                            ),
                        },
                        "name": {"type": "string"},
                        "payload": {"type": "object"},
                    },
                },
            },
        },
    },
    "ExportRequest": {
        "type": "object",
        "properties": {
            **SELECTION,
            "timeframe": TIMEFRAME,
            "format": {"enum": ["ndjson", "csv", "parquet"], "default": "ndjson"},
        },
    },
    "Plays": {
        "type": "object",
        "required": ["views"],
        "additionalProperties": False,
        "properties": {
            "views": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "interval",
                        "views",
                        "total_view_time",
                        "browser",
                        "device_type",
                        "platform",
                        "impressions",
                        "play_rate",
                    ],
                    "properties": {
                        "interval": LABEL,
                        "views": {"type": "integer", "minimum": 0},
                        "total_view_time": {"type": "number", "minimum": 0},
                        "browser": _counts(BROWSERS),
                        "device_type": _counts(DEVICES),
                        "platform": _counts(PLATFORMS),
                        "impressions": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "joins (page loads of the video), played "
                            "or not, in this bucket",
                        },
                        "play_rate": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "description": "views / impressions; null without impressions",
                        },
                    },
                },
            }
        },
    },
    "Completion": {
        "type": "object",
        "required": ["completion"],
        "additionalProperties": False,
        "properties": {
            "completion": {
                "type": "array",
                "items": {
                    "allOf": [{"$ref": "#/components/schemas/CompletionFigures"}],
                    "type": "object",
                    "required": ["interval", "device_type"],
                    "properties": {
                        "interval": LABEL,
                        "device_type": {
                            "type": "object",
                            "required": list(DEVICES),
                            "properties": {
                                d: {"$ref": "#/components/schemas/CompletionFigures"}
                                for d in DEVICES
                            },
                        },
                    },
                },
            }
        },
    },
    "CompletionFigures": {
        "type": "object",
        "required": [
            "views",
            "views_with_duration",
            "reached",
            "finishes",
            "finish_rate",
            "average_percent_watched",
        ],
        "properties": {
            "views": {"type": "integer", "minimum": 0},
            "views_with_duration": {"type": "integer", "minimum": 0},
            "reached": {
                "type": "object",
                "required": ["25", "50", "75", "95", "100"],
                "additionalProperties": False,
                "properties": {
                    m: {"type": "integer", "minimum": 0} for m in ("25", "50", "75", "95", "100")
                },
            },
            "finishes": {"type": "integer", "minimum": 0},
            "finish_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "average_percent_watched": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        },
    },
    "Engagement": {
        "type": "object",
        "required": ["engagement"],
        "additionalProperties": False,
        "properties": {
            "engagement": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["range", "range_time", "viewers"],
                    "properties": {
                        "range": {"type": "integer", "minimum": 0},
                        "range_time": {
                            "type": "object",
                            "required": ["from", "to"],
                            "additionalProperties": False,
                            "properties": {"from": {"type": "number"}, "to": {"type": "number"}},
                        },
                        "viewers": {"type": "integer", "minimum": 0},
                        "share": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            }
        },
    },
    "Sources": {
        "type": "object",
        "required": ["sources"],
        "additionalProperties": False,
        "properties": {
            "sources": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["interval", "path", "views"],
                    "properties": {
                        "interval": LABEL,
                        "path": {"type": "string"},
                        "views": {"type": "integer", "minimum": 0},
                    },
                },
            }
        },
    },
    "Watching": {
        "type": "object",
        "required": ["watching"],
        "additionalProperties": False,
        "properties": {"watching": {"type": "integer", "minimum": 0}},
    },
    "Key": {
        "type": "object",
        "required": ["key", "disabled_at"],
        "additionalProperties": False,
        "properties": {
            "key": {"type": "string"},
            "disabled_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Keys": {
        "type": "object",
        "required": ["keys"],
        "additionalProperties": False,
        "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}},
    },
    "Message": {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {"message": {"type": "string"}},
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {
    "400": _answer("a field is missing or malformed; the message names it", "Error"),
    "401": _answer("missing or wrong credentials", "Error"),
    "408": _answer("the request body did not arrive in time", "Error"),
    "413": _answer("request body too large", "Error"),
    "415": _answer(
        "a POST body that is not application/json (a request that changes "
        "state: no JSON content type)",
        "Error",
    ),
    "429": _answer("too many authentication attempts at once; retry after a second", "Error"),
    "503": _answer(
        "every query connection is busy (METRICS_QUERY_POOL_SIZE); retry after a second", "Error"
    ),
    "504": _answer("the question ran past its budget (METRICS_QUERY_TIMEOUT_SECONDS)", "Error"),
}


def _query(summary: str, request: str, response: str) -> dict[str, Any]:
    body = {"required": False, "content": {"application/json": {"schema": _ref(request)}}}
    operation = {
        "summary": summary,
        "requestBody": body,
        "responses": {"200": _answer("the answer", response), **ERRORS},
    }
    get = {
        **operation,
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in (
                "query",
                "identifier",
                "interval",
                "timeframe",
                "timezone",
                "minimum_watch_seconds",
                "ranges",
                "limit",
                "cursor",
                "normalize",
                "breakdown",
            )
        ],
    }
    return {"post": operation, "get": get}


def _export() -> dict[str, Any]:
    body = {"required": False, "content": {"application/json": {"schema": _ref("ExportRequest")}}}
    streamed = {
        "description": "per-session summaries, streamed",
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    operation = {
        "summary": "Per-session summaries as NDJSON, CSV or Parquet (streamed)",
        "requestBody": body,
        "responses": {"200": streamed, **ERRORS},
    }
    get = {
        **operation,
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in ("query", "identifier", "timeframe", "format")
        ],
    }
    return {"post": operation, "get": get}


def _session_paths() -> dict[str, Any]:
    """One session and its raw events."""
    return {
        "/api/v1/sessions/{session}": {
            "get": {
                "summary": "One session and its raw events",
                "parameters": [
                    {
                        "name": "session",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    }
                ],
                "responses": {
                    "200": _answer("the session", "Session"),
                    "404": _answer("no such session", "Error"),
                    **ERRORS,
                },
            }
        },
    }


def _key_paths() -> dict[str, Any]:
    """Ingest key management (admin)."""
    return {
        "/api/v1/keys": {
            "post": {
                "summary": "Create an ingest key",
                "description": "The body must be sent as application/json (`{}` "
                "for a random key); the query string is not read.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "key": {
                                        "type": "string",
                                        "pattern": KEY_PATTERN,
                                        "description": CUSTOM_KEY,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _answer("created", "Key"),
                    "409": _answer("exists already", "Error"),
                    **ERRORS,
                },
            },
            "get": {
                "summary": "List ingest keys",
                "responses": {"200": _answer("all keys", "Keys"), **ERRORS},
            },
        },
        "/api/v1/keys/{key}": {
            "delete": {
                "summary": "Revoke an ingest key",
                "parameters": [
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _answer("revoked", "Message"),
                    "404": _answer("no such key", "Error"),
                    **ERRORS,
                },
            },
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vidmetrics",
            "version": "1",
            "description": "Anonymous video viewing sessions, bucketed.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
        "security": [{"basic": []}],
        "paths": {
            "/api/v1/plays": _query("Views per bucket with breakdowns", "BucketRequest", "Plays"),
            "/api/v1/engagement": _query(
                "Viewers per part of the timeline", "EngagementRequest", "Engagement"
            ),
            "/api/v1/completion": _query(
                "How far views got: milestones, finishes, average percent watched",
                "BucketRequest",
                "Completion",
            ),
            "/api/v1/sources": _query("Views per page per bucket", "BucketRequest", "Sources"),
            "/api/v1/qoe": _query(
                "Quality of experience per bucket: startup time, "
                "rebuffering, failures, exits before start, seek latency",
                "QoeRequest",
                "Qoe",
            ),
            "/api/v1/watching": _query("Sessions playing now", "SelectionRequest", "Watching"),
            "/api/v1/export": _export(),
            "/api/v1/videos": _query("Most viewed videos", "VideosRequest", "Videos"),
            "/api/v1/sessions": _query(
                "Sessions, newest first, paginated", "SessionsRequest", "Sessions"
            ),
            **_session_paths(),
            **_key_paths(),
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI"}},
                }
            },
        },
    }
