"""The one builder of WHERE clauses for questions and exports: values go in as `$n`
parameters, conditions are assembled from constant fragments (column names chosen by the
code, never by a client)."""

from __future__ import annotations

from typing import Any

from app.model.query import Selection, Window


class Params:
    """One statement's values, handed out as $n placeholders, and the conditions that
    every question and export uses, built on them."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"

    def videos(self, sel: Selection, column: str) -> list[str]:
        """`column` (a video id) is one of the selected videos: by key, metadata
        containment, legacy identifier; nothing when the selection names none."""
        conditions = self.of_videos(sel)
        if not conditions:
            return []
        return [f"{column} IN (SELECT id FROM videos WHERE {' AND '.join(conditions)})"]

    def of_videos(self, sel: Selection, alias: str = "") -> list[str]:
        """The selection's conditions on a videos row (`alias`.column)."""
        at = f"{alias}." if alias else ""
        conditions = []
        if sel.key is not None:
            conditions.append(f"{at}key = {self.add(sel.key, 'text')}")
        if sel.video is not None:
            conditions.append(f"{at}metadata @> {self.add(sel.video, 'jsonb')}")
        if sel.identifier is not None:
            conditions.append(f"{at}identifier = {self.add(sel.identifier, 'text')}")
        return conditions

    def between(self, column: str, window: Window) -> list[str]:
        """start <= column < end."""
        return [
            f"{column} >= {self.add(window.start, 'timestamptz')}",
            f"{column} < {self.add(window.end, 'timestamptz')}",
        ]

    def within(self, column: str, windows: list[Window]) -> str:
        """`column` in any of the windows (one plain range each: index-friendly)."""
        return (
            "(" + " OR ".join(f"({' AND '.join(self.between(column, w))})" for w in windows) + ")"
        )

    def session_data(self, sel: Selection, alias: str) -> list[str]:
        """The session's data contains the selection's `session` object, if it has one."""
        if sel.session is None:
            return []
        return [f"{alias}.session_data @> {self.add(sel.session, 'jsonb')}"]

    def sessions(self, sel: Selection, window: Window, alias: str = "s") -> list[str]:
        """The selection's sessions (or page loads) that started in the window."""
        return [
            *self.videos(sel, f"{alias}.video_id"),
            *self.between(f"{alias}.started_at", window),
            *self.session_data(sel, alias),
        ]


def where(conditions: list[str]) -> str:
    """The conditions joined by AND (TRUE when there are none)."""
    return " AND ".join(conditions) if conditions else "TRUE"
