"""Exports: the streamed API in three formats, the CLI, and the webhook sink across a
receiver outage and a server restart."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyarrow.parquet as pq
import pytest

from tests.conftest import AUTH, ROOT, Server, start_server
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, topic, wait_for
from tests.test_query_api import MAY, Data


@pytest.fixture
async def data(conn: asyncpg.Connection) -> Data:
    d = await Data(conn).setup()
    await d.session("2023-05-02T10:00:00", [(0, 4), (2, 6), (10, 12)], page="https://a.example/x")
    await d.session(
        "2023-05-03T11:00:00",
        [(1, 2)],
        video={"video_id": "b"},
        browser="firefox",
        device="mobile",
        platform="android",
    )
    await d.session("2023-05-04T12:00:00", [], duration=None)
    return d


def _export(api: httpx.Client, fmt: str, key: str) -> httpx.Response:
    return api.post("/api/v1/export", json={"query": {"key": key}, "timeframe": MAY, "format": fmt})


async def test_export_formats_agree(api: httpx.Client, data: Data) -> None:
    response = _export(api, "ndjson", data.key)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [r["started_at"] for r in rows] == [
        "2023-05-02T10:00:00+00:00",
        "2023-05-03T11:00:00+00:00",
        "2023-05-04T12:00:00+00:00",
    ]
    first = rows[0]
    assert first["watched"] == [[0.0, 6.0], [10.0, 12.0]]
    assert first["watch_seconds"] == 10.0 and first["page"] == "https://a.example/x"
    assert first["metadata"] == {"video_id": "a"}
    assert rows[1]["device"] == "mobile" and rows[1]["browser"] == "firefox"
    assert rows[2]["watched"] == [] and rows[2]["duration"] is None
    for row in rows:
        assert set(row) == {
            "session",
            "started_at",
            "ended_at",
            "identifier",
            "metadata",
            "browser",
            "platform",
            "device",
            "page",
            "duration",
            "watch_seconds",
            "furthest",
            "watched",
            "played",
            "qoe",
        }
        assert row["played"] is True and row["qoe"] is None  # written without QoE data

    text = _export(api, "csv", data.key).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["session"]) for r in table] == [r["session"] for r in rows]
    assert json.loads(table[0]["watched"]) == first["watched"]
    assert table[2]["duration"] == "" and table[0]["qoe"] == "" and table[0]["played"] == "True"

    parquet = _export(api, "parquet", data.key)
    assert parquet.status_code == 200
    read = pq.read_table(io.BytesIO(parquet.content)).to_pylist()
    assert [r["session"] for r in read] == [r["session"] for r in rows]
    assert read[0]["watched"] == [{"from": 0.0, "to": 6.0}, {"from": 10.0, "to": 12.0}]
    assert read[1]["watch_seconds"] == pytest.approx(1.0)
    assert read[0]["played"] is True and read[0]["qoe"] is None


def test_export_validation(api: httpx.Client) -> None:
    bad = api.post("/api/v1/export", json={"query": {"key": "k"}, "format": "xml"})
    assert bad.status_code == 400 and "format" in bad.json()["error"]
    assert api.post("/api/v1/export", json={"format": "csv"}).status_code == 400
    empty = api.get("/api/v1/export", params={"query": '{"key": "nothing-here"}'})
    assert empty.status_code == 200 and empty.text == ""


async def test_cli_export(data: Data, database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "sessions.csv"
    env = {**os.environ, "DATABASE_URL": database_url}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "app.cli",
            "export",
            "--format",
            "csv",
            "--key",
            data.key,
            "--timeframe",
            "10 years",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "exported 3 sessions" in done.stdout
    assert len(list(csv.DictReader(out.open()))) == 3


# -- the webhook -----------------------------------------------------------------------
class Receiver:
    """A local webhook receiver that can be made to fail (an outage)."""

    def __init__(self) -> None:
        self.failing = True
        self.posts: list[dict[str, Any]] = []
        self.keys: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                payload = json.loads(body)
                receiver.posts.append(payload)
                receiver.keys.extend(s["idempotency_key"] for s in payload["sessions"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


async def _play(srv: Server, key: str, video: str, close: bool = True) -> Phx:
    phx = await Phx.open(srv.ws())
    t = topic()
    await phx.join(t, join_payload(key, video_id=video))
    assert (await phx.event(t, name="play", duration=30, **{"from": 0}))["status"] == "ok"
    assert (await phx.event(t, name="pause", duration=30, to=1.5))["status"] == "ok"
    if close:
        await phx.close()
    return phx


async def test_webhook_delivers_each_ended_session_across_outage_and_restart(
    tmp_path: Path, database_url: str, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    env = {"DATABASE_URL": database_url, "METRICS_EXPORT_WEBHOOK": receiver.url}
    (tmp_path / "a").mkdir()
    srv = start_server(tmp_path / "a", env)
    key = new_key(srv)
    for i in range(3):
        await _play(srv, key, f"v{i}")
    still_open = await _play(srv, key, "open", close=False)

    async def outbox_has(n: int) -> bool:
        return (
            await conn.fetchval(
                "SELECT count(*) FROM export_outbox o JOIN sessions s ON s.id = o.session_id "
                "JOIN videos v ON v.id = s.video_id WHERE v.key = $1",
                key,
            )
            == n
        )

    await wait_for(lambda: outbox_has(3))
    await asyncio.sleep(1.5)  # the receiver is down: retries are scheduled, nothing is lost
    assert receiver.keys == []
    assert await conn.fetchval("SELECT max(attempts) FROM export_outbox") >= 1
    assert srv.stop() == 0  # the open session ends at shutdown and joins the outbox
    await still_open.close()
    await wait_for(lambda: outbox_has(4))

    receiver.failing = False
    (tmp_path / "b").mkdir()
    srv = start_server(tmp_path / "b", env)
    try:

        async def all_delivered() -> bool:
            return await outbox_has(0) and len(set(receiver.keys)) >= 4

        await wait_for(all_delivered, timeout=40)
        sessions = await conn.fetch(
            "SELECT s.id FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1", key
        )
        assert {k.split("-")[1] for k in set(receiver.keys)} == {str(r["id"]) for r in sessions}
        delivered = [s for post in receiver.posts for s in post["sessions"]]
        assert all(s["watch_seconds"] == 1.5 and s["watched"] == [[0.0, 1.5]] for s in delivered)
        metrics = httpx.get(f"{srv.http}/metrics", auth=AUTH).text
        assert "vidmetrics_webhook_sessions_total" in metrics
    finally:
        srv.stop()


async def test_sessions_pages_and_one_session(api: httpx.Client, data: Data) -> None:
    body = {"query": {"key": data.key}, "timeframe": MAY, "limit": 2}
    first = api.post("/api/v1/sessions", json=body).json()
    assert [s["started_at"][:10] for s in first["sessions"]] == ["2023-05-04", "2023-05-03"]
    assert first["next"]
    second = api.post("/api/v1/sessions", json={**body, "cursor": first["next"]}).json()
    assert [s["started_at"][:10] for s in second["sessions"]] == ["2023-05-02"]
    assert second["next"] is None
    bad = api.post("/api/v1/sessions", json={**body, "cursor": "nope"})
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]
    one = api.get(f"/api/v1/sessions/{second['sessions'][0]['session']}").json()
    assert one["session"]["watched"] == [[0.0, 6.0], [10.0, 12.0]] and one["events"] == []
    assert api.get("/api/v1/sessions/999999999999999").status_code == 404
    assert api.get("/api/v1/sessions/abc").status_code == 400


async def test_session_events_relative_to_its_start(server: Server, api: httpx.Client) -> None:
    key = new_key(server)
    phx = await _play(server, key, "timeline")
    del phx
    listed = api.post("/api/v1/sessions", json={"query": {"key": key}, "timeframe": "1 day"})
    session = listed.json()["sessions"][0]["session"]
    detail = api.get(f"/api/v1/sessions/{session}").json()
    assert [e["name"] for e in detail["events"]] == ["play", "pause"]
    assert detail["events"][0]["at_ms"] == 0.0 and detail["events"][1]["at_ms"] >= 0
    assert detail["events"][1]["payload"] == {"duration": 30.0, "to": 1.5}


async def test_top_videos(api: httpx.Client, data: Data) -> None:
    top = api.post(
        "/api/v1/videos",
        json={"query": {"key": data.key}, "timeframe": MAY, "minimum_watch_seconds": 0},
    ).json()["videos"]
    assert [(v["video"], v["views"]) for v in top] == [
        ({"video_id": "a"}, 2),
        ({"video_id": "b"}, 1),
    ]
    assert top[0]["total_view_time"] == 10.0
    one = api.post(
        "/api/v1/videos", json={"query": {"key": data.key}, "timeframe": MAY, "limit": 1}
    ).json()["videos"]
    assert len(one) == 1


async def test_session_pages_across_videos_follow_one_order(
    api: httpx.Client, conn: asyncpg.Connection
) -> None:
    """Pages of the session list over many videos, with sessions that started at the same
    moment, and with the session-data filter: every session once, newest first, ties by
    id — as one ORDER BY over all of them says (the list is assembled per video)."""
    d = await Data(conn).setup()
    for n in range(23):
        await d.session(
            f"2023-05-0{1 + n % 4}T10:00:0{n % 3}",
            [(0, 1)],
            video={"video_id": f"v{n % 5}"},
            session_data={"plan": "pro" if n % 2 else "free"},
        )
    for extra, session in (({}, None), ({"session": {"plan": "pro"}}, {"plan": "pro"})):
        expected = [
            r["id"]
            for r in await conn.fetch(
                "SELECT s.id FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1"
                " AND ($2::jsonb IS NULL OR s.session_data @> $2::jsonb)"
                " ORDER BY s.started_at DESC, s.id DESC",
                d.key,
                session,
            )
        ]
        body = {"query": {"key": d.key, **extra}, "timeframe": MAY, "limit": 4}
        seen: list[int] = []
        cursor = None
        while True:
            page = api.post(
                "/api/v1/sessions", json={**body, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += [s["session"] for s in page["sessions"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == expected and len(expected) == (23 if session is None else 11)
