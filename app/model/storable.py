"""Checks that client-supplied JSON values can be stored and serialised safely.

Shared by ingest and query (neither imports the other). PostgreSQL refuses NUL in `text`
and `jsonb`; orjson refuses to serialise more than 254 levels of nesting; both must be
caught at validation, with a reason a client can read, before anything reaches the
serialiser or the database. The walk is iterative, so no input can exhaust the stack.
"""

from __future__ import annotations

from typing import Any

# the deepest nesting any client JSON (a frame, a request body) may have
MAX_JSON_DEPTH = 32


class UnsafeValue(ValueError):
    """The value cannot be stored as given; the message says why (no client text in it)."""


def check_text(name: str, value: str) -> None:
    if "\x00" in value:
        raise UnsafeValue(f"{name} must not contain NUL characters")


def check_json(name: str, value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise UnsafeValue when `value` nests deeper than `max_depth` containers or holds a
    string (value or object key) with a NUL character."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise UnsafeValue(f"{name} must not contain NUL characters")
        elif isinstance(item, dict):
            if depth >= max_depth:
                raise UnsafeValue(f"{name} is nested deeper than {max_depth} levels")
            for key, child in item.items():
                if "\x00" in key:
                    raise UnsafeValue(f"{name} must not contain NUL characters")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth >= max_depth:
                raise UnsafeValue(f"{name} is nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in item)
