"""The dashboard in real headless Chromium over seeded data: every page at desktop and phone
width (screenshots in tests/e2e/build/screenshots), the numbers shown equal the API's
answers, the controls change what is fetched, CSV downloads match their panels."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import httpx
import pytest

from app.model.rows import Impression, VideoRef
from app.storage import rebuild, session_store
from tests.conftest import AUTH, PASSWORD, Server
from tests.test_e2e_browser import CHROMIUM, E2E
from tests.test_query_api import Data

SHOTS = E2E / "build" / "screenshots"
pytestmark = pytest.mark.e2e


@pytest.fixture
async def seeded(conn: asyncpg.Connection) -> Data:
    data = await Data(conn).setup()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    for day in range(6):
        for n in range(day + 1):
            start = (now - dt.timedelta(days=day, minutes=7 * n + 5)).isoformat()
            await data.session(
                start,
                [(0, 5 + n), (20, 23)],
                video={
                    "video_id": "intro" if n % 2 else "launch",
                    "title": "Intro" if n % 2 else "Launch",
                },
                browser="safari" if n % 3 else "chrome",
                device="mobile" if n % 2 else "desktop",
                page=f"https://shop.example/p/{n % 3}",
            )
    # page loads: one per session above, and 7 that never played
    refs = [
        VideoRef.of(data.key, None, {"video_id": v, "title": v.title()})
        for v in ("intro", "launch")
    ]
    ids = await session_store.ensure_videos(conn, refs)
    loads = [
        Impression(
            refs[n % 2],
            dt.datetime.now(dt.UTC) - dt.timedelta(hours=n + 1),
            "chrome",
            "mac",
            "desktop",
            None,
            None,
        )
        for n in range(28)
    ]
    async with conn.transaction():
        await session_store.copy_rows(conn, ids, [], [], [], impressions=loads)
    # two thirds of the views come from the vidmetrics client: QoE data (rollups rebuilt)
    await conn.execute(
        """UPDATE sessions s SET qoe = true, startup_ms = 400 + 150 * (s.id % 9),
                  rebuffer_count = (s.id % 4 = 0)::int,
                  rebuffer_seconds = (s.id % 4 = 0)::int * 1.5,
                  seek_count = 0, seek_ms = 0, failed_before_start = false,
                  exited_before_start = false, quick_exit = false,
                  upscale_max = (s.id % 5 = 0)::int::float8,
                  upscale_sum = (s.id % 5 = 0)::int * s.watch_seconds,
                  upscale_seconds = s.watch_seconds
             FROM videos v WHERE v.id = s.video_id AND v.key = $1 AND s.id % 3 <> 0""",
        data.key,
    )
    await conn.execute("UPDATE rollup_state SET done_at = NULL WHERE name = 'backfill'")
    await rebuild.backfill(conn)
    return data


def drive(server: Server, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    plan = {
        "base": server.http,
        "user": AUTH[0],
        "password": PASSWORD,
        "shots": str(SHOTS),
        "steps": steps,
    }
    result = subprocess.run(
        ["node", "dashboard.cjs", json.dumps(plan)],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=240,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def api(server: Server, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{server.http}/api/v1/{path}", auth=AUTH, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_dashboard_pages_show_what_the_api_answers(server: Server, seeded: Data) -> None:
    key = quote(seeded.key, safe="")
    video = quote(json.dumps({"video_id": "launch", "title": "Launch"}), safe="")
    base = f"/dashboard?key={key}&tz=Europe%2FBerlin&tf=7%20days&interval=1%20day"
    steps = []
    for width, height in ((1280, 800), (390, 844)):
        steps += [
            {"name": f"overview-{width}", "path": base, "width": width, "height": height},
            {
                "name": f"video-{width}",
                "path": f"{base}&view=video&video={video}",
                "width": width,
                "height": height,
            },
            {
                "name": f"sessions-{width}",
                "path": f"{base}&view=sessions",
                "width": width,
                "height": height,
            },
        ]
    for width, height in ((1280, 800), (390, 844)):
        steps.append(
            {
                "name": f"session-{width}",
                "path": f"{base}&view=sessions",
                "width": width,
                "height": height,
                "actions": [{"click": "#sessions tbody tr"}],
            }
        )
    report = {r["name"]: r for r in drive(server, steps)}
    for name, result in report.items():
        assert result["errors"] == [], (name, result["errors"])
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000

    selection = {"query": {"key": seeded.key}, "timeframe": "7 days"}
    plays = api(server, "plays", {**selection, "interval": "1 day", "timezone": "Europe/Berlin"})
    views = sum(b["views"] for b in plays["views"])
    watch = sum(b["total_view_time"] for b in plays["views"])
    overview = report["overview-1280"]
    assert number(overview["tiles"]["tile-views"]) == views == 21
    assert overview["tiles"]["tile-watch"] == f"{watch / 60:.1f} min"
    impressions = sum(b["impressions"] for b in plays["views"])
    assert impressions == 28
    assert overview["tiles"]["tile-play-rate"] == f"{100 * views / impressions:.1f} %"
    completion = api(
        server, "completion", {**selection, "interval": "1 day", "timezone": "Europe/Berlin"}
    )["completion"]
    reached = sum(b["reached"]["25"] for b in completion)
    assert f"Reached 25 %\n{reached}" in overview["main"].replace("\t", "\n")
    top = api(server, "videos", {**selection, "limit": 10})["videos"]
    assert [[r[0], number(r[1])] for r in overview["tables"]["top-videos"]] == [
        [v["video"]["title"], v["views"]] for v in top
    ]
    assert overview["charts"] >= 2  # plays, startup time
    qoe = api(server, "qoe", {**selection, "interval": "10 years", "timezone": "Europe/Berlin"})[
        "qoe"
    ][0]
    assert qoe["views"] > 5
    p50 = qoe["startup_time_ms"]["p50"]
    assert overview["tiles"]["tile-startup"] == (
        f"{round(p50)} ms" if p50 < 1000 else f"{p50 / 1000:.2f} s"
    )
    assert overview["tiles"]["tile-rebuffer"] == f"{qoe['rebuffer_percentage']:.1f} %"
    scores = qoe["scores"]
    assert scores["video_quality"] is not None and scores["video_quality"] < 100  # some upscaled
    for tile, name in (
        ("experience", "viewer_experience"),
        ("success", "playback_success"),
        ("startup", "startup_time"),
        ("smoothness", "smoothness"),
        ("quality", "video_quality"),
    ):
        assert overview["tiles"][f"tile-score-{tile}"] == f"{scores[name]:.0f}", tile
    assert "How are the scores computed?" in overview["main"]

    one = {
        "query": {"key": seeded.key, "video": {"video_id": "launch", "title": "Launch"}},
        "timeframe": "7 days",
    }
    video_plays = api(server, "plays", {**one, "interval": "1 day", "timezone": "Europe/Berlin"})
    assert number(report["video-1280"]["tiles"]["tile-views"]) == sum(
        b["views"] for b in video_plays["views"]
    )
    assert report["video-1280"]["charts"] >= 2  # plays and retention

    sessions = api(server, "sessions", {**selection, "limit": 50})["sessions"]
    shown = report["sessions-1280"]["tables"]["sessions"]
    assert len(shown) == len(sessions) == 21
    detail = report["session-1280"]
    assert "view=sessions" in detail["url"] and "session=" in detail["url"]
    assert (
        detail["tables"]["watched"] == [["0", "5"], ["20", "23"]]
        or len(detail["tables"]["watched"]) == 2
    )


def test_controls_change_what_is_fetched_and_csv_matches(server: Server, seeded: Data) -> None:
    key = quote(seeded.key, safe="")
    base = f"/dashboard?key={key}&tz=UTC&tf=7%20days&interval=1%20day"
    steps = [
        {
            "name": "tz",
            "path": base,
            "width": 1280,
            "height": 800,
            "actions": [{"select": "#tz", "value": "Asia/Kolkata"}],
        },
        {
            "name": "tf",
            "path": base,
            "width": 1280,
            "height": 800,
            "actions": [
                {"select": "#tf", "value": "30 days"},
                {"download": "#plays button"},
                {"download": "#top-videos button"},
            ],
        },
    ]
    report = {r["name"]: r for r in drive(server, steps)}
    for result in report.values():
        assert result["errors"] == []
    bodies = [json.loads(r["body"]) for r in report["tz"]["requests"] if r["body"]]
    assert any(b.get("timezone") == "Asia/Kolkata" for b in bodies)
    assert "tz=Asia%2FKolkata" in report["tz"]["url"]  # the state lives in the URL
    bodies = [json.loads(r["body"]) for r in report["tf"]["requests"] if r["body"]]
    assert any(b.get("timeframe") == "30 days" for b in bodies)
    assert parse_qs(urlsplit(report["tf"]["url"]).query)["tf"] == ["30 days"]

    plays = api(
        server,
        "plays",
        {
            "query": {"key": seeded.key},
            "timeframe": "30 days",
            "interval": "1 day",
            "timezone": "UTC",
        },
    )
    csv_rows = report["tf"]["downloads"]["#plays button"].strip().splitlines()
    assert csv_rows[0] == "interval,views,total_view_time"
    parsed = [(r.split(",")[0], int(r.split(",")[1]), float(r.split(",")[2])) for r in csv_rows[1:]]
    assert parsed == [(b["interval"], b["views"], b["total_view_time"]) for b in plays["views"]]
    top_csv = report["tf"]["downloads"]["#top-videos button"].strip().splitlines()
    assert len(top_csv) == 1 + len(report["tf"]["tables"]["top-videos"])


def test_dashboard_needs_credentials_and_loads_nothing_from_elsewhere(server: Server) -> None:
    assert httpx.get(f"{server.http}/dashboard").status_code == 401
    page = httpx.get(f"{server.http}/dashboard", auth=AUTH)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    total = len(page.content)
    for asset in (
        "main.js",
        "api.js",
        "ui.js",
        "style.css",
        "vendor/uPlot.iife.min.js",
        "vendor/uPlot.min.css",
    ):
        response = httpx.get(f"{server.http}/dashboard/{asset}", auth=AUTH)
        assert response.status_code == 200, asset
        total += len(response.content)
    assert total <= 250_000  # page weight, uncompressed
    assert "http://" not in page.text and "https://" not in page.text
    for bad in ("../app/cli.py", "..%2fsettings.py", "nope.js", "vendor/../main.py"):
        assert httpx.get(f"{server.http}/dashboard/{bad}", auth=AUTH).status_code == 404
    assert (
        (Path(__file__).parents[1] / "app" / "dashboard" / "vendor" / "uPlot.LICENSE")
        .read_text()
        .startswith("The MIT License")
    )


def test_qoe_tiles_open_the_sessions_with_that_issue(server: Server, seeded: Data) -> None:
    key = quote(seeded.key, safe="")
    base = f"/dashboard?key={key}&tz=Europe%2FBerlin&tf=7%20days&interval=1%20day"
    steps = [
        {
            "name": "issue-from-tile",
            "path": base,
            "width": 1280,
            "height": 900,
            "actions": [{"click": "#tile-rebuffer"}],
        },
        {
            "name": "scores-how",
            "path": base,
            "width": 1280,
            "height": 1100,
            "actions": [{"open": "#scores-how summary"}],
        },
        {
            "name": "issue-all-chip",
            "path": f"{base}&view=sessions&issue=stalled",
            "width": 390,
            "height": 844,
            "actions": [{"click": "#issue-filter a.chip:first-child"}],
        },
    ]
    report = {r["name"]: r for r in drive(server, steps)}
    for name, result in report.items():
        assert result["errors"] == [], (name, result["errors"])
    selection = {"query": {"key": seeded.key}, "timeframe": "7 days", "limit": 50}
    stalled = api(server, "sessions", {**selection, "issue": "stalled"})["sessions"]
    assert 0 < len(stalled) < 21
    opened = report["issue-from-tile"]
    assert "view=sessions" in opened["url"] and "issue=stalled" in opened["url"]
    rows = opened["tables"]["sessions"]
    assert len(rows) == len(stalled)
    assert all(row[-1] in ("Stalled", "StalledUpscaled") for row in rows)  # the Issues column
    assert "Sessions · Stalled" in opened["main"]
    how = report["scores-how"]["main"]
    assert "100 · 8 / (8 + startup seconds)" in how and "Viewer experience — ours" in how
    cleared = report["issue-all-chip"]
    assert "issue=" not in cleared["url"]
    assert len(cleared["tables"]["sessions"]) == 21
