"""The real Alembic migrations: up, down, up again, and no drift from tables.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.storage import db, timescale
from app.storage.tables import metadata
from tests.conftest import private_postgres, query


def _tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(db.sqlalchemy_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:

            def compare(sync_conn):  # type: ignore[no-untyped-def]
                ctx = MigrationContext.configure(sync_conn)
                return compare_metadata(ctx, metadata)

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def test_up_down_up_and_no_drift(tmp_path: Path) -> None:
    with private_postgres(tmp_path / "m") as url:
        db.migrate(url)
        db.migrate(url)  # idempotent
        tables = _tables(url)
        assert {
            "ingest_keys",
            "videos",
            "sessions",
            "impressions",
            "playing",
            "alembic_version",
        } <= tables
        assert not {"watch_intervals", "events"} & tables  # both live in sessions rows
        assert asyncio.run(_diff(url)) == []
        db.downgrade(url, "base")
        assert _tables(url) == {"alembic_version"}
        db.migrate(url)
        assert asyncio.run(_diff(url)) == []


def test_timescale_sql_files_parse_into_statements() -> None:
    for name in (*timescale.SCHEMA_FILES, "policies.sql"):
        statements = timescale.statements(timescale.SQL_DIR / name)
        assert statements and all(not s.startswith("--") for s in statements)
    hyper = timescale.statements(timescale.SQL_DIR / "001_hypertables.sql")
    assert sum("create_hypertable" in s for s in hyper) == 3


OLD_ROWS = """
INSERT INTO ingest_keys (key) VALUES ('k');
INSERT INTO videos (id, key, identity) VALUES (1, 'k', 'v');
-- 7: from before 0003 (no islands yet); 8: islands already kept; 9: no events at all
INSERT INTO sessions (id, started_at, video_id, browser, platform, device, watch_seconds)
VALUES (7, '2026-11-01 10:00:00+00', 1, 'chrome', 'mac', 'desktop', 9),
       (8, '2026-11-01 11:00:00+00', 1, 'safari', 'ios', 'mobile', 4),
       (9, '2026-11-01 12:00:00+00', 1, 'chrome', 'mac', 'desktop', 0);
UPDATE sessions SET islands = '{0, 4}', distinct_seconds = 4 WHERE id = 8;
INSERT INTO watch_intervals VALUES
    (7, 1, '2026-11-01 10:00:00+00', '2026-11-01 10:00:00+00', 0, 5, 5),
    (7, 1, '2026-11-01 10:00:00+00', '2026-11-01 10:00:07+00', 3, 6, 3),
    (7, 1, '2026-11-01 10:00:00+00', '2026-11-01 10:00:20+00', 10, 11, 1),
    (7, 1, '2026-11-01 10:00:00+00', '2026-11-01 10:00:30+00', 2, 2, 0),
    (8, 1, '2026-11-01 11:00:00+00', '2026-11-01 11:00:00+00', 0, 4, 4);
INSERT INTO events VALUES
    (7, 1, '2026-11-01 10:00:05+00', 'pause', '{"to": 5.0, "duration": 60.0}'),
    (7, 1, '2026-11-01 10:00:00+00', 'play', '{"from": 0.0, "language": "de-CH"}'),
    (7, 1, '2026-11-01 10:00:30.0004+00', 'ended', NULL),
    (8, 1, '2026-11-01 10:59:59.5+00', 'rendition', '{"width": 1280.0, "height": 720.0}'),
    (8, 1, '2026-11-01 11:00:00+00', 'play', '{"from": 0.0}'),
    (99, 1, '2026-11-01 09:00:00+00', 'play', NULL);  -- its session is gone (retention)
"""


def test_0007_moves_events_and_intervals_into_the_session_rows(tmp_path: Path) -> None:
    """An install with raw event and interval rows keeps every event (in order, payloads
    intact) and every watched range after the upgrade; a downgrade puts them back."""
    import datetime as dt

    from app.storage import summaries

    async def timeline(url: str, session: int) -> list[tuple[float, str, object]]:
        conn = await db.connect(url)
        try:
            found = await summaries.one_session(conn, session)
            assert found is not None
            summary, events = found
            return [
                ((e.at - summary.started_at).total_seconds(), e.name, e.payload) for e in events
            ]
        finally:
            await conn.close()

    with private_postgres(tmp_path / "m") as url:
        db.migrate(url, "0006")
        for statement in OLD_ROWS.strip().split(";\n"):
            query(url, statement)
        db.migrate(url)
        rows = {r[0]: r[1:] for r in query(url, "SELECT id, islands, event_count FROM sessions")}
        assert rows[7] == ([0.0, 6.0, 10.0, 11.0], 3)
        assert rows[8] == ([0.0, 4.0], 2) and rows[9] == ([], 0)
        assert asyncio.run(timeline(url, 7)) == [
            (0.0, "play", {"from": 0.0, "language": "de-CH"}),
            (5.0, "pause", {"to": 5.0, "duration": 60.0}),
            (30.0, "ended", {}),
        ]
        assert asyncio.run(timeline(url, 8)) == [
            (-0.5, "rendition", {"width": 1280.0, "height": 720.0}),
            (0.0, "play", {"from": 0.0}),
        ]
        assert asyncio.run(timeline(url, 9)) == []
        assert not {"events", "watch_intervals"} & _tables(url)

        db.downgrade(url, "0006")
        assert query(url, "SELECT id, distinct_seconds FROM sessions ORDER BY id") == [
            (7, 7.0),
            (8, 4.0),
            (9, 0.0),
        ]
        assert query(
            url, "SELECT session_id, at, name, payload::text FROM events ORDER BY session_id, at"
        ) == [
            (
                7,
                dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC),
                "play",
                '{"from": 0.0, "language": "de-CH"}',
            ),
            (
                7,
                dt.datetime(2026, 11, 1, 10, 0, 5, tzinfo=dt.UTC),
                "pause",
                '{"to": 5.0, "duration": 60.0}',
            ),
            (7, dt.datetime(2026, 11, 1, 10, 0, 30, tzinfo=dt.UTC), "ended", None),
            (
                8,
                dt.datetime(2026, 11, 1, 10, 59, 59, 500000, tzinfo=dt.UTC),
                "rendition",
                '{"width": 1280.0, "height": 720.0}',
            ),
            (8, dt.datetime(2026, 11, 1, 11, 0, tzinfo=dt.UTC), "play", '{"from": 0.0}'),
        ]
        assert query(
            url, "SELECT session_id, media_from, media_to FROM watch_intervals ORDER BY 1, 2"
        ) == [(7, 0.0, 6.0), (7, 10.0, 11.0), (8, 0.0, 4.0)]
