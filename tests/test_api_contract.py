"""Auth modes, the OpenAPI document against real answers, and ingest -> API round trips."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.auth.basic import hash_password
from app.storage import db, session_store
from tests.conftest import Server, start_server
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, topic


def test_password_hash_mode(tmp_path: Path, database_url: str) -> None:
    srv = start_server(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "METRICS_PASSWORD": "",
            "METRICS_PASSWORD_HASH": hash_password("s3cret"),
        },
    )
    try:
        url = f"{srv.http}/api/v1/keys"
        assert httpx.get(url, auth=("admin", "wrong")).status_code == 401
        started = time.perf_counter()
        assert httpx.get(url, auth=("admin", "s3cret")).status_code == 200
        for _ in range(20):  # verified once, then cached: repeated requests stay cheap
            assert httpx.get(url, auth=("admin", "s3cret")).status_code == 200
        assert time.perf_counter() - started < 5
        assert "s3cret" not in srv.output()
    finally:
        srv.stop()


def test_auth_disabled(tmp_path: Path, database_url: str) -> None:
    srv = start_server(tmp_path, {"DATABASE_URL": database_url, "METRICS_AUTH_ENABLED": "false"})
    try:
        assert httpx.get(f"{srv.http}/api/v1/keys").status_code == 200
    finally:
        srv.stop()


def test_missing_password_with_external_database_is_a_clear_error(
    tmp_path: Path, database_url: str
) -> None:
    srv = start_server(
        tmp_path, {"DATABASE_URL": database_url, "METRICS_PASSWORD": ""}, wait_healthy=False
    )
    assert srv.proc.wait(30) == 2
    assert "METRICS_PASSWORD or METRICS_PASSWORD_HASH is required" in srv.output()


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
    return jsonschema.Draft202012Validator({"$ref": "urn:doc" + schema["$ref"]}, registry=registry)


def _check(doc: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    operation = doc["paths"][path][method]
    spec = operation["responses"][str(response.status_code)]
    schema = spec["content"]["application/json"]["schema"]
    _validator(doc, schema).validate(response.json())


async def test_openapi_matches_real_answers(api: httpx.Client, server: Server) -> None:
    doc = httpx.get(f"{server.http}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    await phx.event(t, name="play", duration=20, **{"from": 0})
    await asyncio.sleep(1.1)
    await phx.event(t, name="pause", duration=20, to=1.5)
    await phx.close()
    body = {"query": {"key": key}, "interval": "1 hour", "timeframe": "1 day"}
    calls = [
        ("/api/v1/plays", "post", api.post("/api/v1/plays", json=body)),
        ("/api/v1/sources", "post", api.post("/api/v1/sources", json=body)),
        ("/api/v1/engagement", "post", api.post("/api/v1/engagement", json=body)),
        ("/api/v1/watching", "post", api.post("/api/v1/watching", json=body)),
        ("/api/v1/plays", "get", api.get("/api/v1/plays", params={"query": "{}"})),
        ("/api/v1/keys", "get", api.get("/api/v1/keys")),
        ("/api/v1/keys", "post", api.post("/api/v1/keys", json={})),
        ("/api/v1/keys/{key}", "delete", api.delete("/api/v1/keys/nope")),
        ("/api/v1/plays", "post", httpx.post(f"{server.http}/api/v1/plays")),
    ]
    for path, method, response in calls:
        _check(doc, path, method, response)
    plays = calls[0][2].json()["views"]
    assert plays and plays[0]["views"] == 1 and plays[0]["total_view_time"] == 1.5
    assert calls[1][2].json()["sources"][0]["path"] == "http://example.com/watch"
    assert len(calls[2][2].json()["engagement"]) == 10


async def test_watching_now(api: httpx.Client, server: Server) -> None:
    key = new_key(server)
    sel = {"query": {"key": key}}
    players = []
    for i in range(3):
        phx = await Phx.open(server.ws())
        t = topic()
        await phx.join(t, join_payload(key, video_id=f"w{i % 2}"))
        assert (await phx.event(t, name="play", **{"from": 0}))["status"] == "ok"
        players.append((phx, t))
    assert api.post("/api/v1/watching", json=sel).json() == {"watching": 3}
    one = {"query": {"key": key, "video": {"video_id": "w1"}}}
    assert api.post("/api/v1/watching", json=one).json() == {"watching": 1}
    phx, t = players[0]
    assert (await phx.event(t, name="pause", to=0.5))["status"] == "ok"
    assert api.post("/api/v1/watching", json=sel).json() == {"watching": 2}
    await players[1][0].close()  # a disconnect stops watching

    async def settled() -> bool:
        return bool(api.post("/api/v1/watching", json=sel).json() == {"watching": 1})

    deadline = time.monotonic() + 5
    while not await settled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for phx, _ in players:
        await phx.close()


@pytest.mark.parametrize("path", ["plays", "sources", "engagement", "watching"])
def test_every_query_endpoint_requires_a_selection(api: httpx.Client, path: str) -> None:
    response = api.post(f"/api/v1/{path}", json={"interval": "1 day"})
    assert response.status_code == 400
    assert "query.video" in response.json()["error"]


def test_postman_collection_has_every_call() -> None:
    import json

    from app.query.openapi import document
    from tests.conftest import ROOT

    collection = json.loads((ROOT / "examples" / "vidmetrics.postman_collection.json").read_text())
    calls = {
        (
            item["request"]["method"],
            item["request"]["url"]["raw"]
            .replace("{{base_url}}", "")
            .replace("{{ingest_key}}", "{key}"),
        )
        for item in collection["item"]
    }
    for path, operations in document()["paths"].items():
        for method in operations:
            assert (method.upper(), path) in calls, (method, path)


def test_example_page_escapes_the_key(server: Server) -> None:
    page = httpx.get(f"{server.http}/", params={"key": '</script><script>alert(1)</script>"'})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "\\u003c/script\\u003e" in page.text


async def test_retention_deletes_only_old_data(conn: asyncpg.Connection, database_url: str) -> None:
    from tests.test_query_api import Data

    data = await Data(conn).setup()
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).replace(tzinfo=None).isoformat()
    new = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(tzinfo=None).isoformat()
    await data.session(old, [(0, 5)])
    await data.session(new, [(0, 5)])
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        await session_store.apply_retention(pool, 30, 0)
    finally:
        await pool.close()
    rows = await conn.fetch(
        "SELECT s.started_at FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1",
        data.key,
    )
    assert len(rows) == 1 and rows[0]["started_at"] > dt.datetime.now(dt.UTC) - dt.timedelta(
        days=30
    )
