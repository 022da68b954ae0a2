"""One anonymous client must never hurt another: a test per finding of the hardening
review, each against a real server process, real sockets and the real database."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from app.ingest.writer import WriteFailed, Writer
from app.model.rows import SessionRow, VideoRef
from app.storage import db
from tests.conftest import AUTH, PASSWORD, Server, start_server, timeline_of
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, sessions_for, topic, wait_for


def deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels):
        value = {"a": value}
    return value


# -- 1. NUL characters: refused at validation, and the writer isolates a refused member ---
@pytest.mark.parametrize("where", ["metadata", "identifier", "session_data", "source_url", "event"])
async def test_nul_is_refused_and_other_clients_keep_committing(
    server: Server, conn: asyncpg.Connection, where: str
) -> None:
    key = new_key(server)
    poison, good = await Phx.open(server.ws()), await Phx.open(server.ws())
    tp, tg = topic(), topic()
    payload = join_payload(key, video_id="poison")
    if where == "metadata":
        payload["metadata"] = {"video_id": "poisonA\u0000"}
    elif where == "identifier":
        payload["identifier"] = "id\u0000"
    elif where == "session_data":
        payload["session_data"] = {"user\u0000": "x"}
    elif where == "source_url":
        payload["source_url"] = "https://site.example/a\u0000b"
    joined = await poison.join(tp, payload)
    if where == "event":
        assert joined["status"] == "ok"
        reply = await poison.event(tp, name="play", duration=10, language="de\u0000")
    else:
        reply = joined
    assert reply["status"] == "error"
    assert "NUL" in reply["response"]["reason"]
    assert (await good.join(tg, join_payload(key, video_id="fine")))["status"] == "ok"
    assert (await good.event(tg, name="play", duration=10, **{"from": 0}))["status"] == "ok"
    for _ in range(5):
        assert (await good.event(tg, name="timeupdate"))["status"] == "ok"
    assert (await poison.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
    await poison.close()
    await good.close()
    rows = await sessions_for(conn, key)
    assert len(rows) == 1


async def test_writer_commits_good_members_when_one_is_refused(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Defence in depth: a value no validation caught fails only its own event."""
    await conn.execute("INSERT INTO ingest_keys (key) VALUES ('writer-iso') ON CONFLICT DO NOTHING")
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    writer = Writer(pool, flush_interval=0.05, max_rows=1000)
    writer.start()
    try:
        now = dt.datetime.now(dt.UTC)
        video = VideoRef.of("writer-iso", None, {"video_id": "iso"})
        ids = [await writer.new_session_id() for _ in range(3)]

        def row(session_id: int, page: str) -> SessionRow:
            return SessionRow(
                id=session_id,
                started_at=now,
                video=video,
                browser="chrome",
                platform="linux",
                device="desktop",
                page=page,
                session_data=None,
            )

        futures = [
            writer.write([row(ids[0], "https://ok.example/1")]),
            writer.write([row(ids[1], "https://bad.example/\u0000")]),
            writer.write([row(ids[2], "https://ok.example/2")]),
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], WriteFailed)
        assert "cannot be stored" in str(results[1])
        stored = await conn.fetch("SELECT id FROM sessions WHERE id = ANY($1::bigint[])", ids)
        assert sorted(r["id"] for r in stored) == [ids[0], ids[2]]
        assert writer.healthy  # a refused value is not an outage
    finally:
        await writer.stop()
        await pool.close()


# -- 2. deep nesting: a clear refusal, never a traceback -----------------------------------
async def test_deep_nesting_is_refused_cleanly(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    for levels in (5, 40, 300):
        reply = await phx.join(topic(), {"key": key, "metadata": deep(levels)})
        assert reply["status"] == "error"
        assert "nested deeper" in reply["response"]["reason"]
    # deeper than any JSON parser here goes: still an error reply, not a dropped socket
    await phx.send_raw(
        '["1","99","session:x","phx_join",' + '{"a":' * 5000 + "1" + "}" * 5000 + "]"
    )
    reply = await phx.wait_ref(None)
    assert reply[4]["status"] == "error" and "malformed" in reply[4]["response"]["reason"]
    t = topic()
    assert (await phx.join(t, join_payload(key)))["status"] == "ok"
    reply = await phx.event(t, name="play", extra=deep(300))
    assert reply["status"] == "error" and "nested deeper" in reply["response"]["reason"]
    assert (await phx.push("phoenix", "heartbeat", {}))[4]["status"] == "ok"
    await phx.close()
    with httpx.Client(base_url=server.http, auth=AUTH) as api:
        for levels in (40, 300):
            response = api.post("/api/v1/plays", json={"query": {"video": deep(levels)}})
            assert response.status_code == 400
            assert "nested deeper" in response.json()["error"]
    assert "Recursion limit" not in server.output()
    assert "Traceback" not in server.output()


# -- 3. a non-ASCII Authorization header is a 401 ------------------------------------------
def test_non_ascii_authorization_is_401(server: Server) -> None:
    for value in ("Basic äöü", "Basic " + "é" * 10, "Basic \u00ff\u00fe"):
        response = httpx.get(
            f"{server.http}/api/v1/keys", headers={"authorization": value.encode("latin-1")}
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "malformed basic credentials"


# -- 4. revocation reaches channels that are already open ---------------------------------
async def test_revocation_stops_open_channels(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    playing, idle = topic(), topic()
    assert (await phx.join(playing, join_payload(key, video_id="a")))["status"] == "ok"
    assert (await phx.join(idle, join_payload(key, video_id="b")))["status"] == "ok"
    assert (await phx.event(playing, name="play", duration=60, **{"from": 0}))["status"] == "ok"
    response = httpx.delete(f"{server.http}/api/v1/keys/{quote(key, safe='')}", auth=AUTH)
    assert response.status_code == 200
    # within a second every open channel of the key is closed by the server ...
    closed = set()
    deadline = time.monotonic() + 1.5
    while len(closed) < 2 and time.monotonic() < deadline:
        frame = await phx.recv(timeout=1.5)
        if frame[3] == "phx_close":
            closed.add(frame[2])
    assert closed == {playing, idle}
    # ... and an event pushed on it anyway is not acknowledged, and creates no session
    reply = await phx.push(idle, "event", {"name": "play", "from": 0}, join_ref=phx.join_refs[idle])
    assert reply[4]["status"] == "error"
    await phx.close()
    rows = await sessions_for(conn, key)
    assert len(rows) == 1  # only the session that started before the revocation
    watching = httpx.post(
        f"{server.http}/api/v1/watching", auth=AUTH, json={"query": {"key": key}}
    ).json()
    assert watching == {"watching": 0}


# -- 5. a global budget for what clients make the server hold -----------------------------
async def test_session_memory_budget(tmp_path: Path, database_url: str) -> None:
    srv = start_server(
        tmp_path, {"DATABASE_URL": database_url, "METRICS_MAX_SESSION_STATE_MB": "1"}
    )
    try:
        key = new_key(srv)
        big = {"video_id": "v", "pad": "x" * 3900}
        sockets, refused = [], None
        for _ in range(20):
            phx = await Phx.open(srv.ws())
            sockets.append(phx)
            for _ in range(16):
                reply = await phx.join(topic(), {"key": key, "metadata": big, "session_data": big})
                if reply["status"] == "error":
                    refused = reply["response"]["reason"]
                    break
            if refused:
                break
        assert refused is not None and "memory limit" in refused
        metrics = httpx.get(f"{srv.http}/metrics", auth=AUTH).text
        assert "vidmetrics_session_state_bytes" in metrics
        for phx in sockets:
            await phx.close()

        async def joins_again() -> bool:
            phx = await Phx.open(srv.ws())
            ok = (await phx.join(topic(), {"key": key, "metadata": big}))["status"] == "ok"
            await phx.close()
            return ok

        await wait_for(joins_again)
    finally:
        srv.stop()


# -- 6. connections that never finish a request are reaped --------------------------------
def _silent(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_slow_and_silent_connections_are_reaped(tmp_path: Path, database_url: str) -> None:
    srv = start_server(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "METRICS_REQUEST_TIMEOUT_SECONDS": "1",
            "METRICS_MAX_HTTP_CONNECTIONS": "30",
            "METRICS_SOCKET_IDLE_SECONDS": "1",
        },
    )
    try:
        silent = _silent(srv.port)
        partial_headers = _silent(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        partial_body = _silent(
            srv.port,
            b"POST /api/v1/plays HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        for sock in (silent, partial_headers, partial_body):
            assert _closed_by_server(sock, within=4)
            sock.close()
        # more silent connections than the cap: the server stays reachable
        flood = [_silent(srv.port) for _ in range(60)]
        await asyncio.sleep(2.5)  # the flood's deadlines pass
        assert httpx.get(f"{srv.http}/healthz", timeout=5).status_code == 200
        for sock in flood:
            sock.close()
        # a websocket that sends nothing at all is closed too
        phx = await Phx.open(srv.ws())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(phx.ws.recv(), 6)
    finally:
        srv.stop()


async def test_socket_cap_is_kept_below_the_descriptor_limit(
    tmp_path: Path, database_url: str
) -> None:
    srv = start_server(tmp_path, {"DATABASE_URL": database_url}, nofile=512)
    try:
        assert "file descriptor limit is 512" in srv.output()
        assert httpx.get(f"{srv.http}/healthz").status_code == 200
    finally:
        srv.stop()


# -- 7. nothing identifying survives in what is stored ------------------------------------
async def test_matrix_params_ports_and_unknown_fields_are_not_stored(
    server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    url = "https://Site.example:443/page;jsessionid=SECRET/more;x=1?y=2#f"
    assert (await phx.join(t, join_payload(key, url=url)))["status"] == "ok"
    assert (
        await phx.event(
            t,
            name="play",
            duration=20,
            **{"from": 0},
            email="someone@example.com",
            tracking_id="abc123",
        )
    )["status"] == "ok"
    assert (await phx.event(t, name="pause", duration=20, to="1.5"))["status"] == "ok"
    await phx.close()
    rows = await sessions_for(conn, key)
    assert rows[0]["page"] == "https://site.example/page/more"
    events = await timeline_of(conn, rows[0]["id"])
    assert {name: payload for _, name, payload in events} == {
        "play": {"duration": 20.0, "from": 0.0},
        "pause": {"duration": 20.0, "to": 1.5},
    }
    dump = str(events) + str(await conn.fetch("SELECT * FROM sessions"))
    for secret in ("SECRET", "someone@example.com", "abc123", ":443"):
        assert secret not in dump


def test_http_port_80_is_dropped_too() -> None:
    from app.ingest.sessions import strip_url

    assert strip_url("http://a.example:80/x;y") == "http://a.example/x"
    assert strip_url("http://a.example:8080/") == "http://a.example:8080/"


# -- 8. cross-site form posts are refused -------------------------------------------------
def test_post_requires_json_content_type(api: httpx.Client) -> None:
    before = api.get("/api/v1/keys").json()["keys"]
    for content_type, body in (
        ("text/plain", b'{"key": "from-a-form"}'),
        ("application/x-www-form-urlencoded", b"key=from-a-form"),
        ("multipart/form-data; boundary=x", b"--x--"),
    ):
        response = api.post("/api/v1/keys", content=body, headers={"content-type": content_type})
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["error"]
    response = api.post("/api/v1/plays", content=b'{"query": {"key": "k"}}')
    assert response.status_code == 415  # a body without any content type
    assert api.get("/api/v1/keys").json()["keys"] == before
    # GET with a JSON body (as Postman sends it) still works, with or without the header
    response = api.request("GET", "/api/v1/plays", content=b'{"query": {"key": "k"}}')
    assert response.status_code == 200
    assert api.post("/api/v1/keys", json={}).status_code == 201


# -- 9. the OpenAPI document and the server agree -----------------------------------------
def test_contract_edges(api: httpx.Client) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    request = doc["components"]["schemas"]["BucketRequest"]["properties"]
    assert request["identifier"]["minLength"] == 1
    assert api.post("/api/v1/plays", json={"identifier": ""}).status_code == 400
    key_schema = doc["paths"]["/api/v1/keys"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["properties"]["key"]
    import re

    pattern = re.compile(key_schema["pattern"])
    for candidate, accepted in (
        ("ok-Key_1+/=", True),
        ("with space", False),
        ("tab\t", False),
        ("", False),
        ("ü", False),
        ("x" * 201, False),
    ):
        assert bool(pattern.match(candidate)) is accepted
        response = api.post(
            "/api/v1/keys", json={"key": candidate + "-" if accepted else candidate}
        )
        assert (response.status_code == 201) is accepted, (candidate, response.text)
    response = api.options("/api/v1/keys")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}


# -- 10. client text never becomes a metric label ------------------------------------------
async def test_metric_labels_come_from_a_fixed_set(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    before = httpx.get(f"{server.http}/metrics", auth=AUTH).text.count("\n")
    for i in range(60):
        await phx.event(t, name=f"random-{i}-{time.monotonic_ns()}")
        await phx.push(t, f"other-{i}", {})
        await phx.join(f"session:{i}", {"key": f"nokey-{i}", "metadata": {}})
    await phx.close()
    text = httpx.get(f"{server.http}/metrics", auth=AUTH).text
    assert "random-" not in text and "other-" not in text and "nokey" not in text
    assert text.count("\n") <= before + 20


# -- 11. watch time cannot outrun the wall clock -------------------------------------------
async def test_watch_time_is_bounded_by_the_clock(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    assert (await phx.event(t, name="play", **{"from": 0}))["status"] == "ok"
    await asyncio.sleep(0.5)
    assert (await phx.event(t, name="pause", to=604800))["status"] == "ok"
    for _ in range(5):  # repeating the trick gains nothing more
        await phx.event(t, name="play", **{"from": 0})
        await phx.event(t, name="pause", to=604800)
    await phx.close()
    rows = await sessions_for(conn, key)
    assert 0 < rows[0]["watch_seconds"] <= 10 + 16 * 2


# -- 12. answers are bounded -----------------------------------------------------------------
def test_bucket_count_is_capped(api: httpx.Client) -> None:
    response = api.post(
        "/api/v1/plays",
        json={"query": {"key": "k"}, "interval": "1 second", "timeframe": "10 years"},
    )
    assert response.status_code == 400
    assert "limit is 10000" in response.json()["error"]
    response = api.post(
        "/api/v1/sources",
        json={"query": {"key": "k"}, "interval": "1 hour", "timeframe": "365 days"},
    )
    assert response.status_code == 200


# -- 13. password guessing is bounded --------------------------------------------------------
async def test_password_guessing_is_throttled(tmp_path: Path, database_url: str) -> None:
    from app.auth.basic import hash_password

    srv = start_server(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "METRICS_PASSWORD": "",
            "METRICS_PASSWORD_HASH": hash_password(PASSWORD),
            "METRICS_MAX_PASSWORD_CHECKS": "1",
        },
    )
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=60) as client:
            guesses = [client.get("/api/v1/keys", auth=("admin", f"guess-{i}")) for i in range(16)]
            statuses = [r.status_code for r in await asyncio.gather(*guesses)]
        assert set(statuses) <= {401, 429}
        assert statuses.count(429) >= 1  # more than one check plus 4 waiting: refused
        assert statuses.count(401) >= 1
        response = httpx.get(f"{srv.http}/api/v1/keys", auth=AUTH, timeout=30)
        assert response.status_code == 200
    finally:
        srv.stop()


# -- 14. a key path is decoded once ---------------------------------------------------------
def test_revoke_decodes_the_key_once(api: httpx.Client) -> None:
    for key in ("pct%41", "pctA"):
        api.post("/api/v1/keys", json={"key": key})
    response = api.delete("/api/v1/keys/pct%2541")
    assert response.status_code == 200
    states = {k["key"]: k["disabled_at"] for k in api.get("/api/v1/keys").json()["keys"]}
    assert states["pct%41"] is not None
    assert states["pctA"] is None


# -- 15. health tells the truth (the outage test checks the failing side) -----------------
def test_health_names_its_parts(server: Server) -> None:
    response = httpx.get(f"{server.http}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "writer": "ok"}
