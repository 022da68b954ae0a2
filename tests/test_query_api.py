"""The REST API against hand-computed expectations on data written through the storage layer."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from app.model.rows import IntervalRow, SessionRow, VideoRef
from app.storage import key_store, session_store
from tests.conftest import AUTH, Server, serving, start_server

UTC = dt.UTC
_ids = itertools.count(10**12)


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def unix(text: str) -> int:
    return int(t(text).timestamp())


class Data:
    """Writes sessions for one fresh key through the storage layer."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.key = "k-" + secrets.token_hex(6)

    async def setup(self) -> Data:
        await key_store.insert_key(self.conn, self.key)
        return self

    async def session(
        self,
        started: str,
        watched: list[tuple[float, float]] | None = None,
        *,
        video: dict[str, Any] | None = None,
        identifier: str | None = None,
        browser: str = "chrome",
        platform: str = "mac",
        device: str = "desktop",
        page: str | None = "http://example.com/",
        duration: float | None = 20.0,
        session_data: dict[str, Any] | None = None,
    ) -> None:
        ref = VideoRef.of(self.key, identifier, video if video is not None else {"video_id": "a"})
        start = t(started)
        row = SessionRow(
            next(_ids),
            start,
            ref,
            browser,
            platform,
            device,
            page,
            session_data,
            ended_at=start + dt.timedelta(minutes=5),
            duration=duration,
        )
        intervals = []
        for a, b in watched or []:
            intervals.append(IntervalRow(row.id, ref, a, b))
            row.watch_seconds += b - a
            row.furthest = max(row.furthest, b)
        ids = await session_store.ensure_videos(self.conn, [ref])
        await session_store.copy_rows(self.conn, ids, [row], intervals, [])


# Every test here runs on plain PostgreSQL and on TimescaleDB (when one can be had): the
# two must give identical answers.
@pytest.fixture(scope="module", params=["postgresql", "timescaledb"])
def database_url(request: pytest.FixtureRequest, database_url: str) -> str:
    if request.param == "timescaledb":
        return str(request.getfixturevalue("timescale_url"))
    return database_url


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(database_url, tmp_path_factory)


@pytest.fixture
async def data(conn: asyncpg.Connection) -> Data:
    return await Data(conn).setup()


def post(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/api/v1/{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def zero(keys: str) -> dict[str, int]:
    return dict.fromkeys(keys.split(), 0)


BROWSERS = "brave chrome edge firefox ie opera other safari"
DEVICES = "desktop mobile other tablet"
PLATFORMS = "android ios linux mac other windows"
MAY = {"from": unix("2023-05-01T00:00:00"), "to": unix("2023-05-10T00:00:00")}


async def test_plays_buckets_thresholds_and_breakdowns(api: httpx.Client, data: Data) -> None:
    await data.session("2023-05-02T08:00:00", [(0, 6.267)])
    await data.session(
        "2023-05-02T23:59:59.999", [(0, 2.0)], browser="safari", platform="ios", device="mobile"
    )
    await data.session("2023-05-02T12:00:00", [(0, 0.5)], browser="firefox", platform="linux")
    await data.session(
        "2023-05-03T00:00:00", [(0, 40.0)], browser="edge", platform="windows", device="tablet"
    )
    await data.session("2023-05-03T10:00:00", [], browser="opera")  # never watched
    base = {"query": {"key": data.key}, "interval": "1 day", "timeframe": MAY}

    views = post(api, "plays", base)["views"]
    assert [v["interval"] for v in views] == [
        "2023-05-02T00:00:00.000000",
        "2023-05-03T00:00:00.000000",
    ]
    assert views[0] == {
        "interval": "2023-05-02T00:00:00.000000",
        "views": 2,
        "total_view_time": 8.267,
        "browser": {**zero(BROWSERS), "chrome": 1, "safari": 1},
        "device_type": {**zero(DEVICES), "desktop": 1, "mobile": 1},
        "platform": {**zero(PLATFORMS), "mac": 1, "ios": 1},
        "impressions": 0,
        "play_rate": None,
    }
    assert views[1]["views"] == 1 and views[1]["device_type"]["tablet"] == 1

    def counts(minimum: float) -> list[int]:
        body = {**base, "minimum_watch_seconds": minimum}
        return [v["views"] for v in post(api, "plays", body)["views"]]

    assert counts(0) == [3, 2]
    assert counts(1) == [2, 1]
    assert counts(3) == [1, 1]
    assert counts(30) == [1]
    hourly = post(api, "plays", {**base, "interval": "12 hours"})["views"]
    assert [v["interval"][11:13] for v in hourly] == ["00", "12", "00"]


async def test_month_buckets_and_calendar_alignment(api: httpx.Client, data: Data) -> None:
    for day in (
        "2023-01-31T23:00:00",
        "2023-02-01T00:30:00",
        "2023-02-28T10:00:00",
        "2023-04-01T00:00:00",
        "2023-06-30T23:59:59",
    ):
        await data.session(day, [(0, 5)])
    window = {"from": unix("2023-01-01T00:00:00"), "to": unix("2023-12-31T00:00:00")}
    body = {"query": {"key": data.key}, "timeframe": window}
    monthly = post(api, "plays", {**body, "interval": "1 month"})["views"]
    assert [(v["interval"][:10], v["views"]) for v in monthly] == [
        ("2023-01-01", 1),
        ("2023-02-01", 2),
        ("2023-04-01", 1),
        ("2023-06-01", 1),
    ]
    quarterly = post(api, "plays", {**body, "interval": "3 months"})["views"]
    assert [(v["interval"][:10], v["views"]) for v in quarterly] == [
        ("2023-01-01", 3),
        ("2023-04-01", 2),
    ]
    yearly = post(api, "plays", body)["views"]  # default interval: 12 months
    assert [(v["interval"], v["views"]) for v in yearly] == [("2023-01-01T00:00:00.000000", 5)]
    weekly = post(api, "plays", {**body, "interval": "1 week"})["views"]
    assert weekly[0]["interval"] == "2023-01-30T00:00:00.000000"  # a Monday


async def test_timezone_across_dst(api: httpx.Client, data: Data) -> None:
    # Berlin switches to CEST at 2023-03-26 01:00 UTC
    await data.session("2023-03-25T23:30:00", [(0, 5)])  # 00:30 CET on the 26th
    await data.session("2023-03-26T22:30:00", [(0, 5)])  # 00:30 CEST on the 27th
    await data.session("2023-03-26T21:30:00", [(0, 5)])  # 23:30 CEST on the 26th
    window = {"from": unix("2023-03-20T00:00:00"), "to": unix("2023-03-30T00:00:00")}
    body = {"query": {"key": data.key}, "interval": "1 day", "timeframe": window}
    utc = post(api, "plays", body)["views"]
    assert [(v["interval"][:10], v["views"]) for v in utc] == [("2023-03-25", 1), ("2023-03-26", 2)]
    berlin = post(api, "plays", {**body, "timezone": "Europe/Berlin"})["views"]
    assert [(v["interval"], v["views"]) for v in berlin] == [
        ("2023-03-26T00:00:00.000000", 2),
        ("2023-03-27T00:00:00.000000", 1),
    ]
    sources = post(api, "sources", {**body, "timezone": "Europe/Berlin"})["sources"]
    assert [s["interval"] for s in sources] == [
        "2023-03-26T00:00:00.000000",
        "2023-03-27T00:00:00.000000",
    ]


async def test_selections(api: httpx.Client, data: Data) -> None:
    await data.session(
        "2023-05-02T08:00:00",
        [(0, 5)],
        video={"video_id": "a", "series": "x"},
        session_data={"plan": "pro", "team": 1},
    )
    await data.session("2023-05-02T09:00:00", [(0, 5)], video={"video_id": "b", "series": "x"})
    await data.session(
        "2023-05-02T10:00:00", [(0, 5)], video={"video_id": "c"}, session_data={"plan": "free"}
    )
    await data.session(
        "2023-05-02T11:00:00", [(0, 5)], identifier="legacy-1", video={"title": "Old"}
    )

    def views(selection: dict[str, Any]) -> int:
        body = {**selection, "interval": "1 day", "timeframe": MAY}
        return sum(v["views"] for v in post(api, "plays", body)["views"])

    assert views({"query": {"key": data.key}}) == 4
    assert views({"query": {"key": data.key, "video": {"series": "x"}}}) == 2
    assert views({"query": {"key": data.key, "video": {"video_id": "a"}}}) == 1
    assert views({"query": {"key": data.key, "session": {"plan": "pro"}}}) == 1
    assert (
        views({"query": {"key": data.key, "video": {"series": "x"}, "session": {"plan": "free"}}})
        == 0
    )
    assert views({"query": {"key": data.key}, "identifier": "legacy-1"}) == 1
    assert views({"query": {"video": {"video_id": "nope-" + data.key}}}) == 0
    assert post(api, "plays", {"query": {"key": "no-such-key"}})["views"] == []


async def test_engagement(api: httpx.Client, data: Data) -> None:
    video = {"video_id": "eng"}
    await data.session("2023-05-02T08:00:00", [(0, 15)], video=video, duration=40)
    await data.session("2023-05-02T08:10:00", [(10, 10.5)], video=video, duration=40)
    await data.session("2023-05-02T08:20:00", [(35, 40)], video=video, duration=40)
    await data.session("2023-05-02T08:30:00", [(5, 6), (8, 10)], video=video, duration=None)
    body = {"query": {"key": data.key, "video": video}, "timeframe": MAY, "ranges": 4}
    answer = post(api, "engagement", body)["engagement"]
    assert answer == [
        {"range": 0, "range_time": {"from": 0.0, "to": 10.0}, "viewers": 2},
        {"range": 1, "range_time": {"from": 10.0, "to": 20.0}, "viewers": 2},
        {"range": 2, "range_time": {"from": 20.0, "to": 30.0}, "viewers": 0},
        {"range": 3, "range_time": {"from": 30.0, "to": 40.0}, "viewers": 1},
    ]
    default = post(api, "engagement", {**body, "ranges": None})["engagement"]
    assert len(default) == 10 and default[1]["range_time"] == {"from": 4.0, "to": 8.0}
    # the share of the 4 selected sessions that watched each range (PeerTube's retention)
    shares = post(api, "engagement", {**body, "normalize": "sessions"})["engagement"]
    assert [r["share"] for r in shares] == [0.5, 0.5, 0.0, 0.25]
    assert [r["viewers"] for r in shares] == [2, 2, 0, 1]
    bad = api.post("/api/v1/engagement", json={**body, "normalize": "viewers"})
    assert bad.status_code == 400 and "normalize" in bad.json()["error"]
    empty = post(api, "engagement", {**body, "query": {"key": "none"}})
    assert empty == {"engagement": []}


async def test_engagement_without_duration_uses_furthest_position(
    api: httpx.Client, data: Data
) -> None:
    video = {"video_id": "live"}
    await data.session("2023-05-02T08:00:00", [(0, 3), (9, 12)], video=video, duration=None)
    body = {"query": {"key": data.key}, "timeframe": MAY, "ranges": 4}
    answer = post(api, "engagement", body)["engagement"]
    assert [a["viewers"] for a in answer] == [1, 0, 0, 1]
    assert answer[3]["range_time"] == {"from": 9.0, "to": 12.0}


async def test_sources(api: httpx.Client, data: Data) -> None:
    await data.session("2023-05-02T08:00:00", [(0, 5)], page="http://a.example/x")
    await data.session("2023-05-02T09:00:00", [(0, 5)], page="http://a.example/x")
    await data.session("2023-05-02T09:30:00", [(0, 5)], page="http://b.example/")
    await data.session("2023-05-02T09:40:00", [(0, 0.2)], page="http://c.example/")
    await data.session("2023-05-03T09:00:00", [(0, 5)], page="http://b.example/")
    body = {"query": {"key": data.key}, "interval": "1 day", "timeframe": MAY}
    assert post(api, "sources", body) == {
        "sources": [
            {"interval": "2023-05-02T00:00:00.000000", "path": "http://a.example/x", "views": 2},
            {"interval": "2023-05-02T00:00:00.000000", "path": "http://b.example/", "views": 1},
            {"interval": "2023-05-03T00:00:00.000000", "path": "http://b.example/", "views": 1},
        ]
    }
    with_short = post(api, "sources", {**body, "minimum_watch_seconds": 0})["sources"]
    assert len(with_short) == 4


async def test_get_with_query_string_and_with_json_body(api: httpx.Client, data: Data) -> None:
    await data.session("2023-05-02T08:00:00", [(0, 5)])
    import json

    params = {
        "query": json.dumps({"key": data.key}),
        "interval": "1 day",
        "timeframe": json.dumps(MAY),
        "minimum_watch_seconds": "1",
    }
    by_query = api.get("/api/v1/plays", params=params)
    assert by_query.status_code == 200, by_query.text
    by_body = api.request(
        "GET",
        "/api/v1/plays",
        json={"query": {"key": data.key}, "interval": "1 day", "timeframe": MAY},
    )
    assert by_body.status_code == 200
    assert by_query.json() == by_body.json()
    assert by_query.json()["views"][0]["views"] == 1
    since = api.get(
        "/api/v1/plays",
        params={"query": json.dumps({"key": data.key}), "timeframe": str(MAY["from"])},
    )
    assert since.status_code == 200 and since.json()["views"][0]["views"] == 1


async def test_relative_timeframe_and_defaults(api: httpx.Client, data: Data) -> None:
    now = dt.datetime.now(UTC)
    await data.session((now - dt.timedelta(days=2)).replace(tzinfo=None).isoformat(), [(0, 5)])
    await data.session((now - dt.timedelta(days=20)).replace(tzinfo=None).isoformat(), [(0, 5)])
    default = post(api, "plays", {"query": {"key": data.key}})["views"]  # 7 days, 12 months
    assert sum(v["views"] for v in default) == 1
    month = post(api, "plays", {"query": {"key": data.key}, "timeframe": "1 month"})["views"]
    assert sum(v["views"] for v in month) == 2


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "query.video"),
        ({"query": "abc"}, "query"),
        ({"query": [1]}, "query"),
        ({"query": {"video": "x"}}, "query.video"),
        ({"query": {"session": 3}}, "query.session"),
        ({"query": {"key": 5}}, "query.key"),
        ({"query": {"vidoe": {}}}, "vidoe"),
        ({"query": {"key": "k"}, "identifier": 7}, "identifier"),
        ({"query": {"key": "k"}, "interval": "soon"}, "interval"),
        ({"query": {"key": "k"}, "interval": "1 day; DROP TABLE sessions"}, "interval"),
        ({"query": {"key": "k"}, "interval": "0 days"}, "interval"),
        ({"query": {"key": "k"}, "interval": "-1 days"}, "interval"),
        ({"query": {"key": "k"}, "interval": "11 years"}, "interval"),
        ({"query": {"key": "k"}, "interval": 5}, "interval"),
        ({"query": {"key": "k"}, "timeframe": "forever"}, "timeframe"),
        ({"query": {"key": "k"}, "timeframe": "5000 days"}, "timeframe"),
        ({"query": {"key": "k"}, "timeframe": {"from": 20, "to": 10}}, "timeframe.from"),
        ({"query": {"key": "k"}, "timeframe": {"from": 10}}, "timeframe"),
        ({"query": {"key": "k"}, "timeframe": {"from": "x", "to": 10}}, "timeframe.from"),
        ({"query": {"key": "k"}, "timeframe": -5}, "timeframe"),
        ({"query": {"key": "k"}, "timeframe": [1]}, "timeframe"),
        ({"query": {"key": "k"}, "timezone": "Mars/Olympus"}, "timezone"),
        ({"query": {"key": "k"}, "timezone": "UTC'; --"}, "timezone"),
        ({"query": {"key": "k"}, "minimum_watch_seconds": "lots"}, "minimum_watch_seconds"),
        ({"query": {"key": "k"}, "minimum_watch_seconds": -1}, "minimum_watch_seconds"),
    ],
)
def test_bucket_validation(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    for path in ("plays", "sources"):
        response = api.post(f"/api/v1/{path}", json=body)
        assert response.status_code == 400, (path, response.text)
        assert field in response.json()["error"], response.json()


@pytest.mark.parametrize("ranges", [0, 100000, -1, 2.5, "ten", True])
def test_engagement_ranges_validation(api: httpx.Client, ranges: Any) -> None:
    response = api.post("/api/v1/engagement", json={"query": {"key": "k"}, "ranges": ranges})
    assert response.status_code == 400 and "ranges" in response.json()["error"]


def test_error_envelope(api: httpx.Client, server: Server) -> None:
    as_json = {"content-type": "application/json"}
    cases = [
        (api.post("/api/v1/plays", content=b"{not json", headers=as_json), 400, "not valid JSON"),
        (api.post("/api/v1/plays", content=b"[1,2]", headers=as_json), 400, "JSON object"),
        (api.get("/api/v1/nothing"), 404, "no route"),
        (api.put("/api/v1/plays", json={}), 405, "not allowed"),
        (
            api.post(
                "/api/v1/plays", content=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers=as_json
            ),
            413,
            "larger than",
        ),
        (api.delete("/api/v1/keys/does-not-exist"), 404, "no key"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["error"] and text in body["error"]


def test_auth(server: Server) -> None:
    url = f"{server.http}/api/v1/plays"
    missing = httpx.post(url, json={"query": {"key": "k"}})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Basic realm="vidmetrics"'
    assert missing.json() == {"error": "authentication required"}
    assert httpx.post(url, json={}, auth=("admin", "wrong")).status_code == 401
    assert httpx.post(url, json={}, auth=("root", AUTH[1])).status_code == 401
    assert httpx.post(url, json={}, headers={"authorization": "Basic !!!"}).status_code == 401
    assert httpx.post(url, json={"query": {"key": "k"}}, auth=AUTH).status_code == 200
    assert httpx.get(f"{server.http}/api/v1/openapi.json").status_code == 200  # public


def test_keys(api: httpx.Client, server: Server) -> None:
    created = api.post("/api/v1/keys", json={})
    assert created.status_code == 201
    key = created.json()["key"]
    import base64

    assert len(base64.b64decode(key)) == 16 and created.json()["disabled_at"] is None
    custom = "custom-" + secrets.token_hex(4)
    assert api.post("/api/v1/keys", json={"key": custom}).json() == {
        "key": custom,
        "disabled_at": None,
    }
    assert api.post("/api/v1/keys", json={"key": custom}).status_code == 409
    assert api.post("/api/v1/keys", json={"key": ""}).status_code == 400
    assert api.post("/api/v1/keys", json={"key": "a b"}).status_code == 400
    listed = {k["key"]: k for k in api.get("/api/v1/keys").json()["keys"]}
    assert key in listed and custom in listed
    from urllib.parse import quote

    revoked = api.delete(f"/api/v1/keys/{quote(key, safe='')}")
    assert revoked.json() == {"message": "Key revoked"}
    listed = {k["key"]: k for k in api.get("/api/v1/keys").json()["keys"]}
    assert listed[key]["disabled_at"] is not None
    assert api.delete("/api/v1/keys/unknown-key").status_code == 404


async def test_data_under_revoked_key_stays_queryable(api: httpx.Client, data: Data) -> None:
    await data.session("2023-05-02T08:00:00", [(0, 5)])
    assert api.delete(f"/api/v1/keys/{data.key}").status_code == 200
    body = {"query": {"key": data.key}, "interval": "1 day", "timeframe": MAY}
    assert post(api, "plays", body)["views"][0]["views"] == 1


async def test_retention_horizon_is_applied_at_query_time(
    data: Data, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Data older than METRICS_RETENTION_DAYS counts as gone on every backend, whether or
    not it has been deleted yet (TimescaleDB drops whole chunks, plain PostgreSQL rows)."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    for days in (3, 9, 11, 20):
        await data.session(
            (now - dt.timedelta(days=days)).replace(tzinfo=None).isoformat(), [(0, 5)]
        )
    srv = start_server(
        tmp_path_factory.mktemp("ret"),
        {"DATABASE_URL": database_url, "METRICS_RETENTION_DAYS": "10"},
    )
    try:
        with httpx.Client(base_url=srv.http, auth=AUTH) as client:
            plays = post(
                client,
                "plays",
                {"query": {"key": data.key}, "interval": "1 year", "timeframe": "30 days"},
            )
            assert sum(b["views"] for b in plays["views"]) == 2
            engagement = post(
                client,
                "engagement",
                {"query": {"key": data.key}, "timeframe": "30 days", "ranges": 1},
            )
            assert engagement["engagement"][0]["viewers"] == 2
    finally:
        srv.stop()
