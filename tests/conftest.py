"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), a real TimescaleDB when
one can be had (TEST_TIMESCALE_URL, or a throwaway cluster from ../shared/timescaledb),
the real migrations, and real server processes on unused ports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from app.storage import db, summaries
from app.storage.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "test-secret"
AUTH = ("admin", PASSWORD)
TABLES = (
    "rollup_plays",
    "rollup_sources",
    "rollup_engagement",
    "rollup_key_plays",
    "rollup_key_sources",
    "rollup_impressions",
    "rollup_key_impressions",
    "rollup_completion",
    "rollup_key_completion",
    "impressions",
    "export_outbox",
    "playing",
    "session_events",
    "sessions",
    "videos",
    "ingest_keys",
)


async def islands_of(conn: asyncpg.Connection, session_id: int) -> list[tuple[float, float]]:
    """A session's merged watched media ranges, in media order."""
    flat = await conn.fetchval("SELECT islands FROM sessions WHERE id = $1", session_id) or []
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


async def timeline_of(
    conn: asyncpg.Connection,
    session_id: int,
) -> list[tuple[dt.datetime, str, dict[str, Any]]]:
    """A session's stored raw events (at, name, payload), in the order they arrived."""
    found = await summaries.one_session(conn, session_id)
    return [] if found is None else [(e.at, e.name, e.payload) for e in found[1]]


async def event_names(conn: asyncpg.Connection, session_id: int) -> list[str]:
    return [name for _, name, _ in await timeline_of(conn, session_id)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        db.downgrade(given, "base")
        db.migrate(given)
        yield given
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    pg.acquire()
    url = pg.start()
    db.migrate(url)
    try:
        yield url
    finally:
        pg.stop()
        pg.release()


SHARED_TIMESCALE = ROOT.parent / "shared" / "timescaledb"
TIMESCALE_LIB = Path("/usr/lib/postgresql/15/lib/timescaledb.so")


@contextlib.contextmanager
def timescale_cluster(path: Path, *, preload: bool = True) -> Iterator[str]:
    """A throwaway TimescaleDB cluster (../shared/timescaledb/cluster.sh); yields its URL.
    preload=False leaves the extension installed but not in shared_preload_libraries."""
    cluster = SHARED_TIMESCALE / "cluster.sh"
    if not cluster.exists():
        pytest.skip(
            "no TimescaleDB here: ../shared/timescaledb is not beside this checkout "
            "(or set TEST_TIMESCALE_URL)"
        )
    if not TIMESCALE_LIB.exists():
        pytest.skip(
            "TimescaleDB is not installed: run ../shared/timescaledb/install.sh "
            "(as root; .ci/run does)"
        )
    data, port = path / "cluster", str(free_port())
    url = subprocess.run(
        ["bash", str(cluster), "start", str(data), port],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    if not preload:
        subprocess.run(["bash", str(cluster), "stop", str(data)], check=True, timeout=60)
        conf = data / "postgresql.conf"
        conf.write_text(
            conf.read_text().replace(
                "shared_preload_libraries = 'timescaledb'", "shared_preload_libraries = ''"
            )
        )
        subprocess.run(
            ["bash", str(cluster), "start", str(data), port],
            check=True,
            capture_output=True,
            timeout=120,
        )
    try:
        yield url
    finally:
        subprocess.run(["bash", str(cluster), "stop", str(data)], timeout=60)


@pytest.fixture(scope="session")
def timescale_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated TimescaleDB: TEST_TIMESCALE_URL, or a cluster started here; else skip."""
    given = os.environ.get("TEST_TIMESCALE_URL")
    if given:
        db.downgrade(given, "base")
        db.migrate(given)
        yield given
        return
    with timescale_cluster(tmp_path_factory.mktemp("tsdb")) as url:
        db.migrate(url)
        yield url


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await db.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.contextmanager
def private_postgres(path: Path) -> Iterator[str]:
    """A throwaway embedded PostgreSQL of the test's own (no schema); yields its URL."""
    pg = EmbeddedPostgres(path)
    pg.acquire()
    try:
        yield pg.start()
    finally:
        pg.stop()
        pg.release()


def query(url: str, sql: str) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (for sync tests)."""

    async def run() -> list[asyncpg.Record]:
        conn = await db.connect(url)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


async def truncate(connection: asyncpg.Connection) -> None:
    await connection.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")


@pytest.fixture
async def clean(conn: asyncpg.Connection) -> asyncpg.Connection:
    """A connection to an emptied database (app tests truncate)."""
    await truncate(conn)
    return conn


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, key: str | None = None, vsn: str = "2.0.0", source_url: str | None = None) -> str:
        query = f"vsn={vsn}"
        if key is not None:
            query += "&key=" + quote(key, safe="")
        if source_url is not None:
            query += "&source_url=" + quote(source_url, safe="")
        return f"ws://127.0.0.1:{self.port}/socket/websocket?{query}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    tmp: Path, env: dict[str, str], *, wait_healthy: bool = True, nofile: int | None = None
) -> Server:
    """A `vidmetrics serve` process; nofile caps its file descriptors (soft and hard)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}
    full_env.update(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "METRICS_PASSWORD": PASSWORD,
            "METRICS_KEY_REFRESH_SECONDS": "0.2",
            "LOG_LEVEL": "info",
            "METRICS_DATA_DIR": str(tmp / "data"),
        }
    )
    full_env.pop("DATABASE_URL", None)
    full_env.update(env)
    log = tmp / f"server-{port}.log"
    with open(log, "wb") as out:

        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit if nofile is not None else None,
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 60
    while wait_healthy:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                break
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not become healthy:\n{server.output()}")
        time.sleep(0.1)
    return server


def serving(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on `database_url` for as long as the fixture that yields from this lives."""
    srv = start_server(tmp_path_factory.mktemp("srv"), {"DATABASE_URL": database_url})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(database_url, tmp_path_factory)


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, auth=AUTH, timeout=30) as client:
        yield client


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
