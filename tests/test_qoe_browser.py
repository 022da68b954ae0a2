"""End to end with the first-party client (/client/vidmetrics.js, imported cross-origin as
the ES module it is) in headless Chromium, against media served by a test server that
delays its first bytes by a known time and stalls mid-way: the startup and rebuffer times
stored must match what the page measured itself within 150 ms; a broken source is a
startup failure; closing the page before the first frame is an exit before start."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from app.model import quantiles
from tests.conftest import AUTH, Server, event_names, free_port
from tests.test_e2e_browser import CHROMIUM, E2E, SOCKET_OBSERVER, _run
from tests.test_ingest_socket import new_key

BUILD = E2E / "build"
FIRST_BYTES_DELAY = 1.5  # seconds before the media's first byte
HOLE_AT = 0.4  # of the file: bytes from here on are held back until the driver, 2 s into
# the stall this causes, asks for them (GET /release?run=...): a stall mid-way
TOLERANCE_MS = 150

PAGE = """<!doctype html>
<html><body>
<video id="video" src="__SRC__" muted playsinline preload="__PRELOAD__"></video>
__OBSERVER__
<script>
  // What the page itself measures: startup (first request -> playing) and stalls
  // (waiting -> playing after the start, not while seeking).
  const m = window.measured = { startup: null, stalls: [], errors: 0 };
  const v = document.querySelector("#video");
  let requested = null, started = false, waitingAt = null;
  v.addEventListener("play", () => { if (requested === null) requested = performance.now(); });
  v.addEventListener("playing", () => {
    const t = performance.now();
    if (!started) { started = true; m.startup = t - requested; }
    if (waitingAt !== null) { m.stalls.push(t - waitingAt); waitingAt = null; }
  });
  v.addEventListener("waiting", () => {
    if (started && !v.seeking && waitingAt === null) m.stalling = waitingAt = performance.now();
  });
  v.addEventListener("error", () => { m.errors++; });
  // shown at twice its size: a 100 % upscale while playing (the video quality score)
  v.addEventListener("loadedmetadata", () => {
    v.style.width = `${(2 * v.videoWidth) / devicePixelRatio}px`;
  });
  v.addEventListener("playing", () => {
    const ratio = devicePixelRatio;
    m.upscale = Math.min(v.clientWidth * ratio / v.videoWidth,
                         v.clientHeight * ratio / v.videoHeight) - 1;
  });
</script>
<script type="module">
  import { Metrics } from "__CLIENT__";
  Metrics.config = { socketPath: "__SOCKET__", apiKey: "__KEY__" };
  new Metrics("#video", { video_id: "__VIDEO__" }).monitor();
</script>
</body></html>
"""


# The same page, but the client is imported and attached only when the driver says so
LATE_PAGE = PAGE.replace(
    """<script type="module">
  import { Metrics } from "__CLIENT__";
  Metrics.config = { socketPath: "__SOCKET__", apiKey: "__KEY__" };
  new Metrics("#video", { video_id: "__VIDEO__" }).monitor();
</script>""",
    """<script>
  window.attach = async () => {
    const { Metrics } = await import("__CLIENT__");
    Metrics.config = { socketPath: "__SOCKET__", apiKey: "__KEY__" };
    window.metrics = new Metrics("#video", { video_id: "__VIDEO__" }).monitor();
  };
</script>""",
)
assert LATE_PAGE != PAGE


class MediaServer:
    """Serves a video over HTTP Range, slowly: the first request of a run waits
    FIRST_BYTES_DELAY before answering, and bytes past HOLE_AT of the file are held until
    the run is released (or 30 s have passed)."""

    def __init__(self, video: Path) -> None:
        self.data = video.read_bytes()
        self.runs: dict[str, float] = {}
        self.released: set[str] = set()
        self.pages: dict[str, str] = {}

    async def release(self, request: Request) -> Response:
        self.released.add(request.query_params.get("run", ""))
        return Response("released")

    async def media(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "broken":
            await asyncio.sleep(0.3)
            return Response("no such video", status_code=404)
        if kind == "hang":  # nothing ever arrives
            await asyncio.sleep(60)
            return Response(status_code=504)
        run = request.query_params.get("run", "")
        first = run not in self.runs
        began = self.runs.setdefault(run, time.monotonic())
        if first:
            await asyncio.sleep(FIRST_BYTES_DELAY)
        size = len(self.data)
        start, end = 0, size - 1
        header = request.headers.get("range", "")
        if header.startswith("bytes="):
            low, _, high = header[6:].partition("-")
            start = int(low or 0)
            end = min(int(high), size - 1) if high else size - 1
        hole = int(size * HOLE_AT)

        async def body() -> Any:
            position = start
            while position <= end:
                while (
                    position >= hole and run not in self.released and time.monotonic() < began + 30
                ):
                    await asyncio.sleep(0.01)
                stop = min(end + 1, position + 16384, hole if position < hole else end + 1)
                yield self.data[position:stop]
                position = stop

        return StreamingResponse(
            body(),
            status_code=206,
            media_type="video/webm",
            headers={
                "Accept-Ranges": "bytes",
                "Content-Length": str(end - start + 1),
                "Content-Range": f"bytes {start}-{end}/{size}",
                "Cache-Control": "no-store",
            },
        )

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.pages[request.path_params["name"]])


@pytest.fixture(scope="module")
def media_site() -> Iterator[tuple[str, MediaServer]]:
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if not (E2E / "node_modules" / "playwright-core").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund"], E2E)
    BUILD.mkdir(exist_ok=True)
    video = BUILD / "qoe.webm"  # 30 frames/s, so a painted frame follows `playing` closely
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
                "testsrc=duration=20:size=160x120:rate=30",
                "-c:v",
                "libvpx",
                "-b:v",
                "60k",
                "-g",
                "30",
                "-y",
                str(video),
            ],
            E2E,
        )
    media = MediaServer(video)
    app = Starlette(
        routes=[
            Route("/media/{kind}.webm", media.media),
            Route("/release", media.release),
            Route("/pages/{name}", media.page),
        ]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://localhost:{port}", media
    server.should_exit = True
    thread.join(5)


def drive(
    site: tuple[str, MediaServer], server: Server, key: str, kind: str, mode: str
) -> dict[str, Any]:
    base, media = site
    name = f"{mode}-{key[:8]}.html".replace("/", "_").replace("+", "_")
    media.pages[name] = (
        # nothing is fetched before the play request, except for a broken source, whose
        # failure comes first (before anybody asked to play)
        (LATE_PAGE if mode.startswith("late-") else PAGE)
        .replace("__OBSERVER__", SOCKET_OBSERVER)
        .replace("__SRC__", f"/media/{kind}.webm?run={name}")
        .replace("__PRELOAD__", "auto" if kind == "broken" else "none")
        .replace("__CLIENT__", f"{server.http}/client/vidmetrics.js")
        .replace("__SOCKET__", f"ws://127.0.0.1:{server.port}/socket")
        .replace("__KEY__", key)
        .replace("__VIDEO__", f"qoe-{mode}")
    )
    result = subprocess.run(
        ["node", str(E2E / "qoe.cjs"), f"{base}/pages/{name}?secret=1", mode],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr}"
    observed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [line for line in observed["logs"] if "vidmetrics" in line or "pageerror" in line]
    return observed["measured"]  # type: ignore[no-any-return]


async def _final(conn: asyncpg.Connection, key: str) -> asyncpg.Record:
    """The key's one session, once its end (exit or disconnect) has been written."""
    deadline = time.monotonic() + 15
    while True:
        rows = await conn.fetch(
            "SELECT s.* FROM sessions s JOIN videos v ON v.id = s.video_id WHERE v.key = $1", key
        )
        ended = len(rows) == 1 and "exit" in await event_names(conn, rows[0]["id"])
        if len(rows) == 1 and (ended or rows[0]["exited_before_start"] is not None):
            return rows[0]
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.2)


async def test_startup_and_rebuffering_match_what_the_page_measured(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "slow", "play")
    assert measured["startup"] >= FIRST_BYTES_DELAY * 1000 - 50, measured
    assert len(measured["stalls"]) == 1 and measured["stalls"][0] > 500, measured
    row = await _final(conn, key)
    assert row["qoe"] and row["played"]
    assert abs(row["startup_ms"] - measured["startup"]) <= TOLERANCE_MS, (row, measured)
    assert row["rebuffer_count"] == 1
    assert abs(row["rebuffer_seconds"] * 1000 - measured["stalls"][0]) <= TOLERANCE_MS, (
        dict(row),
        measured,
    )
    assert row["failure"] is None and not row["exited_before_start"]
    print(
        f"startup: page {measured['startup']:.0f} ms, stored {row['startup_ms']:.0f} ms; "
        f"stall: page {measured['stalls'][0]:.0f} ms, stored "
        f"{row['rebuffer_seconds'] * 1000:.0f} ms"
    )
    names = await event_names(conn, row["id"])
    assert names[0] == "play_request" and names[-1] == "exit", names
    assert (
        names.index("first_frame")
        < names.index("rebuffering_start")
        < names.index("rebuffering_end")
    ), names
    assert {"first_frame", "rebuffering_start", "rebuffering_end", "rendition", "exit"} <= set(
        names
    ), names
    assert row["page"].endswith(".html") and "secret" not in row["page"]

    answer = httpx.post(
        f"{server.http}/api/v1/qoe",
        auth=AUTH,
        json={"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"},
    ).json()["qoe"]
    assert answer[0]["views"] == 1 and answer[0]["rebuffer_count"] == 1
    assert answer[0]["startup_time_ms"]["p50"] == pytest.approx(
        row["startup_ms"], rel=quantiles.RELATIVE_ERROR + 1e-6
    )  # one view: its own bucket

    # the scores and issues the page's own measurement implies (startup and stall within
    # the tolerance above, the upscale exactly)
    (listed,) = httpx.post(
        f"{server.http}/api/v1/sessions",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day"},
    ).json()["sessions"]
    scores = listed["qoe"]["scores"]
    assert measured["upscale"] == pytest.approx(1.0, abs=0.01), measured
    assert listed["qoe"]["upscale_max_percentage"] == pytest.approx(100 * measured["upscale"])
    quality = 100 * math.exp(-0.33 * measured["upscale"])
    assert scores["video_quality"] == pytest.approx(quality, abs=0.2), scores
    startup = [800 / (8 + (measured["startup"] + d) / 1000) for d in (TOLERANCE_MS, -TOLERANCE_MS)]
    assert startup[0] <= scores["startup_time"] <= startup[1], (scores, measured)
    watch, stall = row["watch_seconds"], measured["stalls"][0] / 1000
    smooth = [
        (100 / math.sqrt(1.25) + 100 * math.exp(-10 * s / (watch + s))) / 2
        for s in (stall + TOLERANCE_MS / 1000, stall - TOLERANCE_MS / 1000)
    ]
    assert smooth[0] <= scores["smoothness"] <= smooth[1], (scores, measured, watch)
    assert scores["playback_success"] == 100.0
    assert scores["viewer_experience"] == pytest.approx(
        (scores["startup_time"] + scores["smoothness"] + scores["video_quality"]) / 3, abs=0.02
    )
    implied = (
        ["stalled"] * bool(measured["stalls"])
        + ["slow_start"] * (measured["startup"] > 4000)
        + ["low_quality"] * (measured["upscale"] > 0.25)
    )
    assert listed["issues"] == implied
    bucket = httpx.post(
        f"{server.http}/api/v1/qoe",
        auth=AUTH,
        json={"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"},
    ).json()["qoe"][0]
    assert bucket["scores"] == scores  # one view: the bucket's scores are its own


async def test_a_broken_source_is_a_startup_failure(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "broken", "broken")
    assert measured["errors"] >= 1 and measured["startup"] is None
    row = await _final(conn, key)
    assert row["qoe"] and not row["played"]
    assert row["failure"] == 4 and row["failed_before_start"]
    assert not row["exited_before_start"]
    body = {"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"}
    qoe = httpx.post(f"{server.http}/api/v1/qoe", auth=AUTH, json=body).json()["qoe"][0]
    assert qoe["startup_failure_percentage"] == 100.0 and qoe["views"] == 1
    assert qoe["scores"]["playback_success"] == 0.0
    assert qoe["scores"]["viewer_experience"] == 0.0
    plays = httpx.post(
        f"{server.http}/api/v1/plays", auth=AUTH, json={**body, "minimum_watch_seconds": 0}
    ).json()["views"]
    assert [p["views"] for p in plays] == [0]  # loaded, never played: an impression only


async def test_closing_the_page_before_the_first_frame_is_an_exit_before_start(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "hang", "exit")
    assert measured["startup"] is None and measured["errors"] == 0
    row = await _final(conn, key)
    assert row["qoe"] and not row["played"] and row["exited_before_start"]
    assert row["failure"] is None and row["startup_ms"] is None
    qoe = httpx.post(
        f"{server.http}/api/v1/qoe",
        auth=AUTH,
        json={"query": {"key": key}, "interval": "1 day", "timeframe": "1 day"},
    ).json()["qoe"][0]
    assert qoe["exits_before_start_percentage"] == 100.0


async def test_a_client_attached_after_a_failure_reports_it(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "broken", "late-broken")
    assert measured["errors"] >= 1
    row = await _final(conn, key)
    assert row["qoe"] and not row["played"]
    assert row["failure"] == 4 and row["failed_before_start"]
    names = await event_names(conn, row["id"])
    assert names.count("playback_failure") == 1, names


async def test_a_client_attached_during_playback_reports_the_play(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "slow", "late-playing")
    assert measured["startup"] is not None and not measured["stalls"]
    row = await _final(conn, key)
    assert row["qoe"] and row["played"] and row["watch_seconds"] > 0.5
    # a startup we did not see begin is unknown, and it is no exit before start
    assert row["startup_ms"] is None and not row["exited_before_start"]
    assert row["failure"] is None and row["rebuffer_count"] == 0
    names = await event_names(conn, row["id"])
    # the rendition it found comes first (the client reports it when it attaches)
    assert names[0] == "rendition", names
    names.remove("rendition")
    assert names[0] == "play" and "play_request" not in names and names[-1] == "exit", names


async def test_a_client_attached_during_a_stall_reports_it(
    media_site: tuple[str, MediaServer], server: Server, conn: asyncpg.Connection
) -> None:
    key = new_key(server)
    measured = await asyncio.to_thread(drive, media_site, server, key, "slow", "late-stalled")
    assert len(measured["stalls"]) == 1 and measured["stalls"][0] > 1500, measured
    row = await _final(conn, key)
    assert row["qoe"] and row["played"] and row["rebuffer_count"] == 1
    # counted from the moment the client saw it: at least the 1.5 s after attaching
    assert 1.3 <= row["rebuffer_seconds"] <= measured["stalls"][0] / 1000 + 0.15, (
        dict(row),
        measured,
    )
    names = await event_names(conn, row["id"])
    assert names[:3] == ["rendition", "play", "rebuffering_start"], names
    assert "rebuffering_end" in names


def test_the_client_is_small_and_served_to_any_origin(server: Server) -> None:
    import gzip

    response = httpx.get(f"{server.http}/client/vidmetrics.js")  # no credentials: public
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["access-control-allow-origin"] == "*"
    assert "export class Metrics" in response.text
    for banned in ("localStorage", "sessionStorage", "document.cookie", "location.href"):
        assert banned not in response.text, banned
    minified = subprocess.run(
        [str(E2E / "node_modules" / ".bin" / "esbuild"), "--minify", "--format=esm"],
        input=response.text,
        capture_output=True,
        text=True,
        cwd=E2E,
        timeout=60,
    )
    assert minified.returncode == 0, minified.stderr
    assert len(gzip.compress(minified.stdout.encode(), 9)) <= 6 * 1024
    assert len(gzip.compress(response.content, 9)) <= 6 * 1024  # even unminified


async def test_the_example_page_reports_qoe(server: Server, conn: asyncpg.Connection) -> None:
    key = new_key(server)
    shots = E2E / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    result = await asyncio.to_thread(
        subprocess.run,
        ["node", str(E2E / "qoe.cjs"), f"{server.http}/?key={quote(key, safe='')}", "example"],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "SCREENSHOT": str(shots / "example-page.png")},
    )
    assert result.returncode == 0, result.stderr
    assert not [
        line
        for line in json.loads(result.stdout.strip().splitlines()[-1])["logs"]
        if "vidmetrics" in line or "pageerror" in line
    ]
    row = await _final(conn, key)
    assert row["qoe"] and row["played"] and row["startup_ms"] is not None
    assert row["watch_seconds"] > 0.5


MISUSE = """<!doctype html>
<html><body><video id="video"></video>
<script type="module">
  import { Metrics } from "__CLIENT__";
  window.misuse = [];
  const attempt = (name, work) => {
    try { work(); window.misuse.push([name, "ok"]); }
    catch (error) { window.misuse.push([name, "threw " + error]); }
  };
  attempt("no arguments", () => new Metrics().monitor());
  attempt("missing element", () => new Metrics("#nope", { video_id: "x" }).monitor());
  attempt("not a video", () => new Metrics(document.body, { video_id: "x" }).monitor());
  attempt("demonitor before monitor", () => new Metrics("#video", { video_id: "x" }).demonitor());
  attempt("config null", () => { Metrics.config = null; });
  attempt("monitor twice", () => { const m = new Metrics("#video", { video_id: "x" });
                                   m.monitor(); m.monitor(); m.demonitor(); m.demonitor(); });
  window.misuseDone = true;
</script></body></html>
"""


def test_the_client_never_throws_into_the_page(
    media_site: tuple[str, MediaServer], server: Server
) -> None:
    base, media = media_site
    media.pages["misuse.html"] = MISUSE.replace("__CLIENT__", f"{server.http}/client/vidmetrics.js")
    result = subprocess.run(
        ["node", str(E2E / "qoe.cjs"), f"{base}/pages/misuse.html", "misuse"],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    observed = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(outcome == "ok" for _, outcome in observed["measured"]), observed
    assert not [line for line in observed["logs"] if line.startswith("pageerror")], observed
    assert any("[vidmetrics]" in line for line in observed["logs"])  # said on the console
