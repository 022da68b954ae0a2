"""The second hardening pass: each finding of the attacker's review (state changed from a
foreign page, live formulas and bare carriage returns in CSV files, a 500 on odd digits,
missing browser headers) against a real server process, real HTTP and real Chromium."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.conftest import Server
from tests.test_dashboard import drive as drive_dashboard
from tests.test_e2e_browser import CHROMIUM, E2E
from tests.test_query_api import MAY, Data

EVIL = '=HYPERLINK("http://evil.example","x")'


@pytest.fixture
async def data(conn: asyncpg.Connection) -> Data:
    return await Data(conn).setup()


# -- 1. nothing a foreign page can send changes state ---------------------------------------
def _keys(api: httpx.Client) -> set[str]:
    return {k["key"] for k in api.get("/api/v1/keys").json()["keys"]}


def test_key_creation_needs_a_json_body(api: httpx.Client) -> None:
    before = _keys(api)
    # what fetch(no-cors) and sendBeacon(url) send: a POST with no body and no content type
    response = api.post("/api/v1/keys?key=from-a-url")
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    # the query string is never read, even beside a JSON content type
    response = api.post("/api/v1/keys?key=from-a-url", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "query-string" in response.json()["error"]
    response = api.post("/api/v1/keys?key=from-a-url", json={})
    assert response.status_code == 400
    assert _keys(api) == before
    # the real thing: a JSON body (an empty one creates a random key)
    assert api.post("/api/v1/keys", headers={"content-type": "application/json"}).status_code == 201
    assert api.post("/api/v1/keys", json={"key": "from-json-1"}).status_code == 201
    assert "from-json-1" in _keys(api)


def test_no_cors_preflight_is_granted(server: Server) -> None:
    for method in ("POST", "DELETE"):
        response = httpx.options(
            f"{server.http}/api/v1/keys/x",
            headers={
                "origin": "https://evil.example",
                "access-control-request-method": method,
                "access-control-request-headers": "content-type, authorization",
            },
        )
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code in (401, 405)


@pytest.mark.e2e
def test_what_a_foreign_page_can_send_creates_no_key(api: httpx.Client, server: Server) -> None:
    """Every request a page on another origin can make without a preflight, exactly as
    Chromium sends it, replayed with the admin's credentials (what a logged-in browser adds):
    refused, and no key is created."""
    assert CHROMIUM and (E2E / "node_modules" / "playwright-core").exists()
    before = _keys(api)
    # another origin (localhost, not 127.0.0.1): a page of the server's without any policy
    plan = {"page": f"http://localhost:{server.port}/nope", "target": f"{server.http}/api/v1/keys"}
    result = subprocess.run(
        ["node", "crosssite.cjs", json.dumps(plan)],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sent = json.loads(result.stdout.strip().splitlines()[-1])["sent"]
    assert {s["url"].split("key=")[1] for s in sent} >= {
        "cross-fetch",
        "cross-form",
        "cross-beacon",
        "cross-text",
    }, sent
    for request in sent:
        assert request["method"] == "POST"
        headers = {
            k: v
            for k, v in request["headers"].items()
            if k.lower()
            in (
                "content-type",
                "origin",
                "referer",
                "sec-fetch-mode",
                "sec-fetch-site",
                "sec-fetch-dest",
            )
        }
        replayed = api.post(
            request["url"], headers=headers, content=(request["body"] or "").encode()
        )
        assert replayed.status_code in (400, 415), (request, replayed.text)
    assert _keys(api) == before


# -- 2./3. CSV: no live formulas, every CR or LF quoted -------------------------------------
async def test_csv_export_neutralises_formulas_and_quotes_line_breaks(
    api: httpx.Client, data: Data
) -> None:
    cells = [EVIL, "+1 call", "-2", "@SUM(A1)", "\tTab", "\rCR", "a\rb", "a\nb", "plain"]
    for n, identifier in enumerate(cells):
        await data.session(f"2023-05-02T10:{n:02d}:00", [(0, 4)], identifier=identifier)
    response = api.post(
        "/api/v1/export", json={"query": {"key": data.key}, "timeframe": MAY, "format": "csv"}
    )
    assert response.status_code == 200
    text = response.text
    table = list(csv.reader(io.StringIO(text, newline=""), strict=True))  # no "new-line
    # character seen in unquoted field"
    header, rows = table[0], table[1:]
    got = [dict(zip(header, row, strict=True)) for row in rows]
    assert [r["identifier"] for r in got] == [
        "'" + EVIL,
        "'+1 call",
        "'-2",
        "'@SUM(A1)",
        "'\tTab",
        "'\rCR",
        "a\rb",
        "a\nb",
        "plain",
    ]
    assert '"a\rb"' in text and '"a\nb"' in text  # quoted in the file itself
    for r in got:  # numbers stay numbers, JSON stays JSON
        assert r["duration"] == "20.0" and r["watch_seconds"] == "4.0"
        assert json.loads(r["metadata"]) == {"video_id": "a"}


@pytest.mark.e2e
async def test_dashboard_csv_neutralises_formulas(server: Server, data: Data) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    for n, title in enumerate((EVIL, "-negative\rtitle", "Fine")):
        start = (now - dt.timedelta(hours=n + 1)).isoformat()
        await data.session(start, [(0, 3 + n)], video={"video_id": f"v{n}", "title": title})
    key = quote(data.key, safe="")
    report = drive_dashboard(
        server,
        [
            {
                "name": "csv-formulas",
                "path": f"/dashboard?key={key}&tf=1%20day",
                "width": 1280,
                "height": 800,
                "actions": [{"download": "#top-videos button"}],
            }
        ],
    )[0]
    assert report["errors"] == [], report["errors"]
    text = report["downloads"]["#top-videos button"]
    table = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert table[0] == ["video", "views", "total_view_time"]
    assert sorted(r[0] for r in table[1:]) == sorted(["'" + EVIL, "'-negative\rtitle", "Fine"])
    assert all(r[1] == "1" and not r[2].startswith("'") for r in table[1:])


# -- 4. odd digits in a session id are a 400, not a 500 -------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "%C2%B2",
        "%E2%91%A0",
        "%D9%A3",
        "%EF%BC%91",
        "1%C2%B2",
        "12345678901234567890",
        "-1",
        "+1",
        "%201",
    ],
)
def test_session_ids_are_ascii_digits(api: httpx.Client, raw: str) -> None:
    response = api.get(f"/api/v1/sessions/{raw}")
    assert response.status_code == 400, (raw, response.status_code, response.text)
    assert "session" in response.json()["error"]


def test_a_declared_length_in_odd_digits_is_not_a_500(server: Server) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/plays HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: \xc2\xb2\r\n\r\n{}"
        )
        status = sock.recv(200).split(b"\r\n")[0]
    assert status.startswith(b"HTTP/1.1 4"), status


# -- 5. browser headers ------------------------------------------------------------------------
def _policy(response: httpx.Response) -> dict[str, str]:
    header = response.headers["content-security-policy"]
    return {d.split()[0]: d.strip() for d in header.split(";") if d.strip()}


def test_dashboard_has_a_strict_csp_and_cannot_be_framed(api: httpx.Client) -> None:
    response = api.get("/dashboard")
    assert response.status_code == 200
    policy = _policy(response)
    assert policy["default-src"] == "default-src 'self'"
    assert policy["script-src"] == "script-src 'self'"  # no inline script, no eval
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    for asset in ("/dashboard/main.js", "/dashboard/style.css"):
        assert api.get(asset).headers["x-content-type-options"] == "nosniff"


def test_example_page_headers(server: Server) -> None:
    first, second = (httpx.get(f"{server.http}/") for _ in range(2))
    assert first.headers["x-content-type-options"] == "nosniff"
    policy = _policy(first)
    nonce = policy["script-src"].split("'nonce-")[1].split("'")[0]
    assert f'<script type="module" nonce="{nonce}">' in first.text
    assert f'<style nonce="{nonce}">' in first.text
    assert "{{NONCE}}" not in first.text
    assert _policy(second)["script-src"] != policy["script-src"]  # a nonce per answer
    assert "'unsafe-inline'" not in first.headers["content-security-policy"]


def test_every_answer_says_nosniff(server: Server) -> None:
    for path in (
        "/healthz",
        "/api/v1/openapi.json",
        "/api/v1/plays",
        "/nope",
        "/client/vidmetrics.js",
    ):
        response = httpx.get(f"{server.http}{path}")
        assert response.headers["x-content-type-options"] == "nosniff", path
