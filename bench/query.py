"""Query latency, rollups vs raw: seeds N sessions over 30 days (via `vidmetrics seed`,
50 videos, Zipf-like) into a fresh embedded PostgreSQL (or --database-url), starts a server,
and reports warm p50/p95 of plays, sources, qoe and engagement through the API (rollup path),
beside the same questions answered by the raw path (storage called directly with
use_rollups=False, fewer repeats), for one video and all videos of a key, UTC and
Europe/Berlin, intervals 1 hour and 1 day; plus storage in bytes per event. Appends a dated
section to bench/RESULTS.md. Loopback traffic only.

    .venv/bin/python bench/query.py --sessions 1000000 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.model.query import BucketQuery, EngagementQuery  # noqa: E402
from app.query import params  # noqa: E402
from app.storage import db, stats  # noqa: E402
from app.storage.embedded import EmbeddedPostgres  # noqa: E402

PASSWORD = "bench"
TARGET_MS = 100.0


def env_for(tmp: Path, port: int, url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "METRICS_PASSWORD": PASSWORD,
        "METRICS_DATA_DIR": str(tmp / "data"),
        "LOG_LEVEL": "warning",
    }
    env.pop("DATABASE_URL", None)
    if url:
        env["DATABASE_URL"] = url
    return env


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)]


ENDPOINTS = ("plays", "sources", "qoe", "engagement", "sessions")
ISSUES = ("failed", "startup_failure", "exit_before_start", "stalled", "slow_start", "low_quality")


def issue_pages(client: httpx.Client, repeats: int) -> list[str]:
    """The session list's first page (50) per `issue`, for one video and all videos,
    beside the unfiltered first page (the baseline: newest first by the plain index)."""
    print(
        f"  {'sessions':<11} {'selection':<11} {'issue':<18} {'first':>7} {'p50':>7} {'p95':>7} "
        f"{'unfiltered p50':>15} {'ratio':>6}"
    )
    lines = [
        "\n| sessions | selection | issue | first ms | p50 ms | p95 ms | unfiltered p50 ms "
        "| ratio |\n|---|---|---|---|---|---|---|---|\n"
    ]
    for label in ("one video", "all videos"):
        query: dict[str, object] = {"key": "bench"}
        if label == "one video":
            query["video"] = {"video_id": "seed-0"}
        measured: dict[str, tuple[float, float, float]] = {}
        for issue in (None, *ISSUES):
            body = {"query": query, "timeframe": "30 days", "limit": 50}
            if issue:
                body["issue"] = issue
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                response = client.post("/api/v1/sessions", json=body)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text
                assert len(response.json()["sessions"]) <= 50
            p50, p95 = percentiles(times[1:])
            measured[issue or "(none)"] = (times[0], p50, p95)
        base = measured["(none)"][1]
        for issue, (first, p50, p95) in measured.items():
            print(
                f"  {'sessions':<11} {label:<11} {issue:<18} {first:>7.1f} {p50:>7.1f} "
                f"{p95:>7.1f} {base:>15.1f} {p50 / base:>5.1f}x",
                flush=True,
            )
            lines.append(
                f"| sessions | {label} | {issue} | {first:.1f} | {p50:.1f} | {p95:.1f} | "
                f"{base:.1f} | {p50 / base:.1f}x |\n"
            )
    return lines


def cases(endpoints: tuple[str, ...] = ENDPOINTS) -> list[tuple[str, str, str | None, str]]:
    out = []
    for path in endpoints:
        for label in ("one video", "all videos"):
            for tz in ("UTC", "Europe/Berlin"):
                for interval in ("1 hour", "1 day"):
                    if path == "engagement" and (tz != "UTC" or interval != "1 day"):
                        continue  # engagement has no buckets
                    out.append((path, label, tz, interval))
    return out


def body_for(label: str, tz: str, interval: str) -> dict[str, object]:
    query: dict[str, object] = {"key": "bench"}
    if label == "one video":
        query["video"] = {"video_id": "seed-0"}
    return {"query": query, "timeframe": "30 days", "interval": interval, "timezone": tz}


async def raw_times(url: str, path: str, body: dict[str, object], repeats: int) -> list[float]:
    conn = await db.connect(url)
    try:
        times = []
        for i in range(repeats + 1):
            now = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            if path == "engagement":
                q: BucketQuery | EngagementQuery = params.engagement_query(body, now)
                await stats.engagement(conn, q, use_rollups=False)  # type: ignore[arg-type]
            else:
                q = params.bucket_query(body, now, 10**6)
                fn = {"plays": stats.plays, "sources": stats.sources, "qoe": stats.qoe}[path]
                await fn(conn, q, use_rollups=False)  # type: ignore[operator]
            if i:  # the first run warms the cache
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await conn.close()


async def storage(url: str) -> tuple[int, int, int]:
    conn = await db.connect(url)
    try:
        events = await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM sessions")
        sessions = await conn.fetchval("SELECT count(*) FROM sessions")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        return int(events), int(sessions), int(size)
    finally:
        await conn.close()


def run(
    sessions: int,
    repeats: int,
    raw_repeats: int,
    url: str | None,
    data_dir: Path | None = None,
    endpoints: tuple[str, ...] = ENDPOINTS,
) -> list[str]:
    print(f"\n== {sessions:,} sessions over 30 days, 50 videos ==", flush=True)
    lines = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = data_dir or Path(tmp_name)
        seeded = 0.0
        if not (tmp / "data" / "seeded").exists():  # --data-dir: seed once, measure often
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "seed",
                    "--sessions",
                    str(sessions),
                    "--days",
                    "30",
                    "--videos",
                    "50",
                    "--key",
                    "bench",
                    "--quiet",
                ],
                cwd=ROOT,
                env=env_for(tmp, 0, url),
                check=True,
            )
            seeded = time.perf_counter() - started
            (tmp / "data" / "seeded").write_text(str(seeded))
            print(f"  seeded in {seeded:.0f}s ({sessions / seeded:,.0f} sessions/s)", flush=True)
        else:
            seeded = float((tmp / "data" / "seeded").read_text())
        port = 38000 + random.randrange(1000)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env_for(tmp, port, url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            db_url = url or EmbeddedPostgres(tmp / "data").url  # the server's running cluster
            events, n_sessions, size = asyncio.run(storage(db_url))
            print(
                f"  storage: {size / 1e6:,.0f} MB for {n_sessions:,} sessions / {events:,} "
                f"events = {size / max(events, 1):.0f} B per event",
                flush=True,
            )
            header = (
                f"  {'endpoint':<11} {'selection':<11} {'timezone':<14} {'interval':<7} "
                f"{'p50':>7} {'p95':>7} {'raw p50':>8} {'speed-up':>8}"
            )
            print(header)
            lines.append(
                f"\n### query, {dt.date.today()}, {sessions:,} sessions "
                f"(seeded in {seeded:.0f}s), storage {size / max(events, 1):.0f} B "
                f"per event ({size / 1e6:,.0f} MB, {events:,} events)\n"
            )
            lines.append(
                "| endpoint | selection | timezone | interval | p50 ms | p95 ms "
                "| raw p50 ms | speed-up |\n|---|---|---|---|---|---|---|---|\n"
            )
            with httpx.Client(base_url=base, auth=("admin", PASSWORD), timeout=300) as client:
                for path, label, tz, interval in cases(
                    tuple(e for e in endpoints if e != "sessions")
                ):
                    body = body_for(label, tz, interval)
                    client.post(f"/api/v1/{path}", json=body)  # warm
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        response = client.post(f"/api/v1/{path}", json=body)
                        times.append((time.perf_counter() - t0) * 1000)
                        assert response.status_code == 200, response.text
                    p50, p95 = percentiles(times)
                    raw = asyncio.run(raw_times(db_url, path, body, raw_repeats))
                    raw50 = statistics.median(raw)
                    row = (
                        f"  {path:<11} {label:<11} {tz:<14} {interval:<7} {p50:>7.1f} "
                        f"{p95:>7.1f} {raw50:>8.0f} {raw50 / p50:>7.0f}x"
                    )
                    print(row, flush=True)
                    lines.append(
                        f"| {path} | {label} | {tz} | {interval} | {p50:.1f} | "
                        f"{p95:.1f} | {raw50:.0f} | {raw50 / p50:.0f}x |\n"
                    )
                if "sessions" in endpoints:
                    lines += issue_pages(client, repeats)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--database-url", help="use this database instead of an embedded one")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument(
        "--data-dir", type=Path, help="keep the embedded database here (seeded once, reused)"
    )
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    for n in args.sessions:
        lines = run(
            n,
            args.repeats,
            args.raw_repeats,
            args.database_url,
            args.data_dir,
            tuple(args.endpoints),
        )
        with open(ROOT / "bench" / "RESULTS.md", "a") as results:
            results.write(lines[0].rstrip("\n") + f", commit {commit}, {os.cpu_count()} cores\n")
            results.writelines(lines[1:])


if __name__ == "__main__":
    main()
