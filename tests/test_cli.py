"""The CLI commands against the real database."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import asyncpg
from argon2 import PasswordHasher

from tests.conftest import ROOT


def cli(
    database_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keys_create_list_revoke(database_url: str) -> None:
    created = cli(database_url, "keys", "create")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert cli(database_url, "keys", "create", "cli-custom-key").stdout.strip() == "cli-custom-key"
    dup = cli(database_url, "keys", "create", "cli-custom-key")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    listed = cli(database_url, "keys", "list").stdout
    assert f"{key}\tactive" in listed and "cli-custom-key\tactive" in listed
    assert cli(database_url, "keys", "revoke", "cli-custom-key").returncode == 0
    assert "cli-custom-key\trevoked" in cli(database_url, "keys", "list").stdout
    missing = cli(database_url, "keys", "revoke", "never-existed")
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_migrate_is_idempotent(database_url: str) -> None:
    result = cli(database_url, "migrate")
    assert result.returncode == 0 and "schema at head" in result.stdout


def test_hash_password() -> None:
    result = cli("", "hash-password", stdin="hunter2\n")
    assert result.returncode == 0
    digest = result.stdout.strip()
    assert digest.startswith("$argon2id$") and PasswordHasher().verify(digest, "hunter2")
    assert "hunter2" not in result.stdout + result.stderr


async def _seeded(
    conn: asyncpg.Connection,
    key: str,
    seed_value: int,
) -> list[tuple[object, ...]]:
    """Seed 300 sessions under `key` (a fixed end) and read them back, ids aside."""
    from app.storage import demo, key_store, session_store

    await key_store.insert_key(conn, key)
    refs = demo.videos(key, 5)
    ids = await session_store.ensure_videos(conn, refs)
    await demo.seed(
        [conn],
        demo.MODEL,
        sessions=300,
        days=7,
        end=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        seed_value=seed_value,
        video_ids=[ids[(r.key, r.identity)] for r in refs],
        durations=demo.durations(seed_value, 5),
        chunk=128,
    )
    rows = await conn.fetch(
        """SELECT v.metadata, s.started_at, s.browser, s.watch_seconds, s.page, s.islands,
                  s.played, s.startup_ms, s.events
             FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1
            ORDER BY s.started_at, s.played""",
        key,
    )
    loads = await conn.fetch(
        "SELECT i.at, i.page FROM impressions i JOIN videos v ON v.id = i.video_id "
        "WHERE v.key = $1 ORDER BY i.at",
        key,
    )
    return [tuple(r) for r in rows] + [tuple(r) for r in loads]


async def test_seed_is_deterministic(conn: asyncpg.Connection) -> None:
    first = await _seeded(conn, "det-a", 7)
    assert len(first) > 500
    assert first == await _seeded(conn, "det-b", 7)
    assert first != await _seeded(conn, "det-c", 8)


async def test_seed_volume_and_shape(database_url: str, conn: asyncpg.Connection) -> None:
    result = cli(
        database_url,
        "seed",
        "--sessions",
        "5000",
        "--days",
        "10",
        "--videos",
        "7",
        "--key",
        "seed-test",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "seeded 5000 sessions" in result.stdout and "sessions/s" in result.stdout
    assert await conn.fetchval(
        "SELECT done_at IS NOT NULL FROM rollup_state WHERE name = 'backfill'"
    )
    row = await conn.fetchrow(
        """SELECT count(*) AS n, count(DISTINCT s.video_id) AS videos,
                  count(DISTINCT browser) AS browsers, min(started_at) AS first,
                  max(started_at) AS last, count(DISTINCT page) AS pages
             FROM sessions s JOIN videos v ON v.id = s.video_id
            WHERE v.key = 'seed-test' AND s.played"""
    )
    assert row["n"] == 5000 and 2 <= row["videos"] <= 7 and row["browsers"] >= 6
    assert row["last"] - row["first"] > dt.timedelta(days=9) and row["pages"] >= 5
    stats = await conn.fetchrow(
        """SELECT count(*) AS islands, bool_and(s.islands[2 * k] > s.islands[2 * k - 1])
                      AS ordered, bool_and(s.islands[2 * k] <= s.duration + 1e-6) AS within,
                  (SELECT sum(event_count) FROM sessions) AS events,
                  (SELECT count(*) FROM sessions WHERE length(events) > 0) AS timelines
             FROM sessions s JOIN videos v ON v.id = s.video_id,
                  generate_series(1, cardinality(s.islands) / 2) AS k
            WHERE v.key = 'seed-test'"""
    )
    assert stats["islands"] > 5000 and stats["ordered"] and stats["within"]
    assert stats["events"] > 10000 and stats["timelines"] >= 5000
    # plausible QoE: ~40 % of views report it; startup ~1 s; some stalls, exits, failures
    qoe = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE s.qoe) AS views,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY s.startup_ms) AS startup,
                  count(*) FILTER (WHERE s.rebuffer_count > 0) AS stalled,
                  count(*) FILTER (WHERE s.exited_before_start AND NOT s.played) AS exits,
                  count(*) FILTER (WHERE s.failed_before_start AND NOT s.played) AS failed
             FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = 'seed-test'"""
    )
    assert 1700 < qoe["views"] < 2500 and 600 < qoe["startup"] < 2000
    assert qoe["stalled"] > 200 and qoe["exits"] > 20 and qoe["failed"] > 2


def test_bad_seed_arguments() -> None:
    result = cli("", "seed", "--days", "0")
    assert result.returncode == 2 and "--days" in result.stderr


def test_failed_start_exits_non_zero(database_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}
        env.update(
            {
                "DATABASE_URL": database_url,
                "METRICS_PASSWORD": "pw",
                "HOST": "127.0.0.1",
                "PORT": str(port),
            }
        )
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0, result.stderr[-2000:]
    assert "failed to start" in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("vidmetrics ")
