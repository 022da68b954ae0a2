"""End to end: the unmodified @maveio/metrics client (from npm, bundled with esbuild) in headless
Chromium, against a real vidmetrics server; then a privacy sweep of every table and the log."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.staticfiles import StaticFiles

from tests.conftest import TABLES, Server, free_port, islands_of, timeline_of
from tests.test_ingest_socket import new_key

E2E = Path(__file__).resolve().parent / "e2e"
BUILD = E2E / "build"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET_QUERY = "utm_source=e2e-secret&email=someone%40example.com"

# Observes (does not alter) the page's websocket, so a driver knows the join was answered.
SOCKET_OBSERVER = """<script>
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (String(e.data).includes("phx_reply") && String(e.data).includes("session:"))
          window.socketReady = true;
      });
    }
  };
</script>
"""

PAGE = """<!doctype html>
<html><body>
<video id="video" src="/test.webm" muted playsinline preload="auto"></video>
__OBSERVER__
<script src="/metrics.js"></script>
<script>
  Metrics.config = { socketPath: "__SOCKET__", apiKey: "__KEY__" };
  new Metrics("#video", { video_id: "__VIDEO__" }).monitor();
</script>
</body></html>
"""


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def build() -> Path:
    """Bundle the npm client and generate a 20 s test video (ffmpeg)."""
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    assert shutil.which("ffmpeg"), "ffmpeg not found (apt-get install ffmpeg)"
    if not (E2E / "node_modules" / "@maveio" / "metrics").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund"], E2E)
    BUILD.mkdir(exist_ok=True)
    _run(
        [
            str(E2E / "node_modules" / ".bin" / "esbuild"),
            "entry.js",
            "--bundle",
            "--format=iife",
            f"--outfile={BUILD / 'metrics.js'}",
        ],
        E2E,
    )
    video = BUILD / "test.webm"
    if not video.exists():
        _run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=duration=20:size=160x120:rate=10",
                "-c:v",
                "libvpx",
                "-b:v",
                "40k",
                "-g",
                "10",
                "-y",
                str(video),
            ],
            E2E,
        )
    return BUILD


@pytest.fixture(scope="module")
def static_site(build: Path) -> Iterator[str]:
    """Serves the page and video (with HTTP Range, so the browser can seek)."""
    port = free_port()
    app = Starlette()
    app.mount("/", StaticFiles(directory=build))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://localhost:{port}"  # the page's host differs from the client's address
    server.should_exit = True
    thread.join(5)


def drive(
    static_site: str, server: Server, key: str, video_id: str, mode: str = "watch"
) -> dict[str, Any]:
    page = (
        PAGE.replace("__OBSERVER__", SOCKET_OBSERVER)
        .replace("__SOCKET__", f"ws://127.0.0.1:{server.port}/socket")
        .replace("__KEY__", key)
        .replace("__VIDEO__", video_id)
    )
    name = f"page-{video_id}.html"
    (BUILD / name).write_text(page)
    result = subprocess.run(
        ["node", str(E2E / "drive.cjs"), f"{static_site}/{name}?{SECRET_QUERY}#section", mode],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def _session(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    row = await conn.fetchrow(
        "SELECT s.* FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1", key
    )
    if row is None:
        return None
    return row if len(await islands_of(conn, row["id"])) >= 2 else None


@pytest.fixture(scope="module")
def e2e_run(static_site: str, server: Server) -> dict[str, Any]:
    key = new_key(server)
    observed = drive(static_site, server, key, "e2e-video")
    return {"key": key, **observed}


async def test_real_client_in_chromium(e2e_run: dict[str, Any], conn: asyncpg.Connection) -> None:
    key = e2e_run["key"]
    deadline = time.monotonic() + 15
    row = await _session(conn, key)
    while row is None:
        assert time.monotonic() < deadline, "no complete session was stored"
        await asyncio.sleep(0.1)
        row = await _session(conn, key)
    assert (row["browser"], row["platform"], row["device"]) == ("chrome", "linux", "desktop")
    assert row["page"].startswith("http://localhost:") and row["page"].endswith(".html")
    assert row["duration"] == pytest.approx(20, abs=0.2)
    video = await conn.fetchrow("SELECT metadata, identifier FROM videos v WHERE key = $1", key)
    assert video["metadata"] == {"video_id": "e2e-video"} and video["identifier"] is None
    # the merged ranges, as the <video> element's own `played` TimeRanges are
    intervals = await islands_of(conn, row["id"])
    played = e2e_run["played"]
    assert len(intervals) == len(played) == 2, (intervals, played)
    for (a, b), (pa, pb) in zip(intervals, played, strict=True):
        assert a == pytest.approx(pa, abs=0.5) and b == pytest.approx(pb, abs=0.5), (
            intervals,
            played,
        )
    assert row["watch_seconds"] == pytest.approx(sum(b - a for a, b in played), abs=0.7)
    assert row["ended_at"] is not None


async def test_privacy_sweep(
    e2e_run: dict[str, Any], conn: asyncpg.Connection, server: Server
) -> None:
    ua = e2e_run["ua"]
    assert "Chrome" in ua
    dump = []
    for table in TABLES:
        dump += [r[0] for r in await conn.fetch(f"SELECT row_to_json(t)::text FROM {table} t")]
    for (sid,) in await conn.fetch("SELECT id FROM sessions"):  # the packed raw events, read
        dump.append(str(await timeline_of(conn, sid)))
    text = "\n".join(dump)
    assert e2e_run["key"] in text  # the dump is real
    for secret in (ua, "HeadlessChrome", "127.0.0.1", "e2e-secret", "someone", "#section"):
        assert secret not in text, secret
    assert "utm_source" not in text
    log = server.output()
    for secret in (ua, "e2e-secret", "someone", "utm_source"):
        assert secret not in log, secret


async def test_a_load_without_play_and_a_play_to_the_end(
    static_site: str, server: Server, conn: asyncpg.Connection
) -> None:
    """The unmodified client: a page that never plays is one impression and no view; a page
    that plays to the end is a finish."""
    import httpx

    from tests.conftest import AUTH

    key = new_key(server)
    drive(static_site, server, key, "loaded-only", "load")
    drive(static_site, server, key, "to-the-end", "finish")
    body = {
        "query": {"key": key},
        "interval": "1 year",
        "timeframe": "1 day",
        "minimum_watch_seconds": 1,
    }
    deadline = time.monotonic() + 15
    while True:
        completion = httpx.post(f"{server.http}/api/v1/completion", auth=AUTH, json=body).json()[
            "completion"
        ]
        if completion and completion[0]["finishes"] == 1:
            break
        assert time.monotonic() < deadline, completion
        await asyncio.sleep(0.2)
    assert completion[0]["views"] == 1 and completion[0]["reached"]["100"] == 1
    plays = httpx.post(f"{server.http}/api/v1/plays", auth=AUTH, json=body).json()["views"]
    assert plays[0]["impressions"] == 2 and plays[0]["views"] == 1
    assert plays[0]["play_rate"] == 0.5
    loaded = {
        "query": {"key": key, "video": {"video_id": "loaded-only"}},
        **{k: v for k, v in body.items() if k != "query"},
    }
    only = httpx.post(f"{server.http}/api/v1/plays", auth=AUTH, json=loaded).json()["views"]
    assert [(b["impressions"], b["views"]) for b in only] == [(1, 0)]
