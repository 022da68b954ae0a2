"""SQL for exports: per-session summaries streamed with a server-side cursor (constant
memory at any size), and the outbox of ended sessions for the export webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.model.query import Issue, Selection, SessionsQuery, Window
from app.model.results import EventEntry, Summary
from app.storage import timeline
from app.storage.driver import Connection, Pool, Record
from app.storage.rollups import qoe_of
from app.storage.tables import ISSUE_PREDICATES
from app.storage.where import Params, where

BATCH = 2000


_COLUMNS = """
    s.id, s.started_at, s.ended_at, v.identifier, v.metadata, s.browser, s.platform,
    s.device, s.page, s.duration, s.watch_seconds, s.furthest, s.played, s.qoe, s.startup_ms,
    s.rebuffer_count, s.rebuffer_seconds, s.seek_count, s.seek_ms, s.failure,
    s.failed_before_start, s.exited_before_start, s.quick_exit, s.upscale_max, s.upscale_sum,
    s.upscale_seconds, s.islands
"""


def _summary(row: Record) -> Summary:
    islands = row["islands"] or []  # merged and sorted already: rounded to milliseconds here
    watched = [
        (round(islands[i], 3), round(islands[i + 1], 3)) for i in range(0, len(islands) - 1, 2)
    ]
    return Summary(
        row["id"],
        row["started_at"],
        row["ended_at"],
        row["identifier"],
        row["metadata"],
        row["browser"],
        row["platform"],
        row["device"],
        row["page"],
        row["duration"],
        row["watch_seconds"],
        row["furthest"],
        watched,
        row["played"],
        qoe_of(row),
    )


async def count_sessions(conn: Connection, sel: Selection, window: Window) -> int:
    p = Params()
    condition = where(p.sessions(sel, window))
    return int(await conn.fetchval(f"SELECT count(*) FROM sessions s WHERE {condition}", *p.values))


async def stream(
    conn: Connection, sel: Selection, window: Window, batch: int = BATCH
) -> AsyncIterator[list[Summary]]:
    """Batches of session summaries, oldest first, read through a cursor (the caller's
    connection must stay checked out while iterating)."""
    p = Params()
    sql = (
        f"SELECT {_COLUMNS} FROM sessions s JOIN videos v ON v.id = s.video_id "
        f"WHERE {where(p.sessions(sel, window))} ORDER BY s.started_at, s.id"
    )
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        # a stream may take as long as its reader: not bound by a question's budget (at
        # most two run at once, see the export route)
        await conn.execute("SET LOCAL statement_timeout = 0")
        cursor = await conn.cursor(sql, *p.values)
        while True:
            rows = await cursor.fetch(batch)
            if not rows:
                return
            yield [_summary(r) for r in rows]


# -- the webhook outbox --------------------------------------------------------------
async def due_summaries(conn: Connection, limit: int) -> list[Summary]:
    """Claim up to `limit` due outbox entries (locked until the caller's transaction ends;
    other processes skip them) and return their sessions' summaries."""
    rows = await conn.fetch(
        f"""
        WITH due AS (
            SELECT session_id, session_started_at FROM export_outbox
             WHERE next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        SELECT {_COLUMNS}
          FROM due JOIN sessions s ON s.id = due.session_id
                                  AND s.started_at = due.session_started_at
          JOIN videos v ON v.id = s.video_id
         ORDER BY s.started_at, s.id
        """,
        limit,
    )
    return [_summary(r) for r in rows]


async def delivered(conn: Connection, sessions: list[int]) -> None:
    await conn.execute("DELETE FROM export_outbox WHERE session_id = ANY($1::bigint[])", sessions)


async def retry_later(conn: Connection, sessions: list[int], error: str) -> None:
    """Exponential back-off per entry: 1 s, 2 s, 4 s ... at most 10 minutes."""
    await conn.execute(
        """
        UPDATE export_outbox
           SET attempts = attempts + 1, last_error = $2,
               next_attempt_at = now() + make_interval(secs => least(600, 2 ^ attempts))
         WHERE session_id = ANY($1::bigint[])
        """,
        sessions,
        error[:500],
    )


async def drop_orphans(conn: Connection) -> None:
    """Forget outbox entries whose session is gone (retention)."""
    await conn.execute(
        "DELETE FROM export_outbox o WHERE NOT EXISTS (SELECT 1 FROM sessions s "
        "WHERE s.id = o.session_id AND s.started_at = o.session_started_at)"
    )


async def pending(conn: Connection | Pool) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM export_outbox"))


# -- session drill-down -----------------------------------------------------------------
def _issue(q: SessionsQuery) -> list[str]:
    if q.issue is None:
        return []
    if q.issue is Issue.SLOW_START:
        # a literal (a parsed, bounded float, never client text): a threshold at or above
        # the default then provably falls in the partial index sessions_issue_slow_start
        return [f"startup_ms > {float(q.slow_start_seconds) * 1000!r}::float8"]
    # the partial index's own predicate (its columns are the sessions' alone in the query)
    return [ISSUE_PREDICATES[q.issue.value]]


async def page_of_sessions(conn: Connection, q: SessionsQuery) -> list[Summary]:
    """Newest first, at most q.limit; `before` is the (started_at, id) of the last
    session already shown; with q.issue, only the sessions that had it.

    Per selected video, its newest sessions come from the (video_id, started_at) index
    (or the issue's partial index), newest first, at most q.limit each; the page is the
    newest of those. One ordered scan over all the videos' sessions cannot use either
    index for the order, and sorted a month of a key's sessions (seconds at 10 M)."""
    p = Params()
    videos = p.of_videos(q.selection, "v")
    conditions = [
        "s.video_id = v.id",
        *p.between("s.started_at", q.window),
        *p.session_data(q.selection, "s"),
        *_issue(q),
    ]
    if q.before is not None:
        conditions.append(
            f"(s.started_at, s.id) < ({p.add(q.before[0], 'timestamptz')}, "
            f"{p.add(q.before[1], 'bigint')})"
        )
    limit = p.add(q.limit, "int")
    rows = await conn.fetch(
        f"""
        WITH page AS MATERIALIZED (
            SELECT n.id, n.started_at FROM videos v CROSS JOIN LATERAL (
                SELECT s.id, s.started_at FROM sessions s WHERE {where(conditions)}
                 ORDER BY s.started_at DESC, s.id DESC LIMIT {limit}) n
             WHERE {where(videos)}
             ORDER BY n.started_at DESC, n.id DESC LIMIT {limit})
        SELECT {_COLUMNS} FROM page
          JOIN sessions s ON s.id = page.id AND s.started_at = page.started_at
          JOIN videos v ON v.id = s.video_id
         ORDER BY s.started_at DESC, s.id DESC""",
        *p.values,
    )
    return [_summary(r) for r in rows]


async def one_session(
    conn: Connection,
    session_id: int,
) -> tuple[Summary, list[EventEntry]] | None:
    """A session's summary and every stored raw event in order (None: no such session)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, s.events FROM sessions s JOIN videos v ON v.id = s.video_id "
        f"WHERE s.id = $1",
        session_id,
    )
    if row is None:
        return None
    blobs = [
        row["events"],
        *[
            r[0]
            for r in await conn.fetch(
                "SELECT events FROM session_events"
                " WHERE session_id = $1 AND session_started_at = $2 ORDER BY seq",
                session_id,
                row["started_at"],
            )
        ],
    ]
    return _summary(row), [
        EventEntry(at, name, payload)
        for blob in blobs
        for at, name, payload in timeline.decode(blob, row["started_at"])
    ]
