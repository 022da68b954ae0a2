"""The real case: answers while events arrive, acknowledgements while questions run.

Seeds N sessions (`vidmetrics seed`, 30 days, 50 videos, key `bench`) into an embedded
PostgreSQL (kept in --data-dir to seed once and measure often), starts `vidmetrics serve`
and measures, in one run:
  (a) quiet: each dashboard question alone — its first answer, then warm p50/p95;
  (b) live ingest alone: --sockets websockets each playing one session of a seeded video,
      one play/pause every --every seconds (1,000 × 0.5 s ≈ 2,000 events/s), positions
      rising in real time: ack p50/p99;
  (c) live ingest plus a dashboard's worth of questions (the overview and video pages'
      requests, concurrently, in a loop): per-endpoint p50/p95 and any 503/504, beside
      ack p50/p99.
Then, after draining, acknowledged vs stored events. Server, PostgreSQL and generator share
the machine's cores unpinned, as they do on a small install. Appends a dated section to
bench/RESULTS.md. Loopback traffic only; it stops by itself.

    .venv/bin/python bench/mixed.py --sessions 1000000 --data-dir /tmp/mixed-1m
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import wait_healthy  # noqa: E402
from query import PASSWORD, env_for, percentiles  # noqa: E402  (sibling scripts)
from soak import Soak, viewer_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench"
KEY_ONLY = {"query": {"key": KEY}, "timeframe": "30 days"}
ONE_VIDEO = {"query": {"key": KEY, "video": {"video_id": "seed-0"}}, "timeframe": "30 days"}
# what the overview and the video page of the dashboard ask, in that order
DASHBOARD = [
    ("plays", {**KEY_ONLY, "interval": "1 hour", "minimum_watch_seconds": 0}),
    ("completion", {**KEY_ONLY, "interval": "1 hour"}),
    ("qoe", {**KEY_ONLY, "interval": "1 hour"}),
    ("sources", {**KEY_ONLY, "interval": "1 hour"}),
    ("videos", {**KEY_ONLY, "limit": 10}),
    ("engagement", {**KEY_ONLY}),
    ("plays", {**ONE_VIDEO, "interval": "1 hour"}),
    ("engagement", {**ONE_VIDEO}),
    ("qoe", {**ONE_VIDEO, "interval": "1 hour"}),
]


def label(path: str, body: dict[str, object]) -> str:
    query = body["query"]
    assert isinstance(query, dict)
    return f"{path} ({'one video' if 'video' in query else 'all videos'})"


async def ask(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, object],
    times: dict[str, list[float]],
    refused: dict[str, int],
) -> None:
    started = time.perf_counter()
    response = await client.post(f"/api/v1/{path}", json=body)
    name = label(path, body)
    if response.status_code in (503, 504):
        refused[name] = refused.get(name, 0) + 1
        return
    assert response.status_code == 200, response.text
    times.setdefault(name, []).append((time.perf_counter() - started) * 1000)


async def quiet(client: httpx.AsyncClient, repeats: int) -> dict[str, tuple[float, ...]]:
    out = {}
    for path, body in DASHBOARD:
        first: dict[str, list[float]] = {}
        await ask(client, path, body, first, {})
        times: dict[str, list[float]] = {}
        for _ in range(repeats):
            await ask(client, path, body, times, {})
        name = label(path, body)
        p50, p95 = percentiles(times[name])
        out[name] = (first[name][0], p50, p95)
        print(
            f"  quiet  {name:<26} first {first[name][0]:7.0f} ms  p50 {p50:6.1f}  p95 {p95:6.1f}",
            flush=True,
        )
    return out


async def live(
    port: int, args: argparse.Namespace, with_questions: bool, soak: Soak
) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """One phase: acks (ms) of the phase, and the questions' times when asked."""
    soak.window = []
    times: dict[str, list[float]] = {}
    refused: dict[str, int] = {}
    deadline = time.monotonic() + args.seconds
    if with_questions:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120, auth=("admin", PASSWORD)
        ) as client:
            while time.monotonic() < deadline:  # a dashboard reloaded again and again
                await asyncio.gather(
                    *(ask(client, path, body, times, refused) for path, body in DASHBOARD)
                )
    else:
        await asyncio.sleep(args.seconds)
    acks = sorted(1000 * x for x in soak.window)
    return acks, times, refused


def ack_figures(acks: list[float]) -> tuple[float, float]:
    if not acks:
        return 0.0, 0.0
    return statistics.median(acks), acks[max(0, int(len(acks) * 0.99) - 1)]


async def phases(port: int, args: argparse.Namespace) -> dict[str, object]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=300, auth=("admin", PASSWORD)
    ) as client:
        print("(a) quiet", flush=True)
        quiet_table = await quiet(client, args.repeats)
    rate = 1 / args.every
    soak = Soak(
        port,
        rate,
        key=KEY,
        session_events=(10**9, 10**9),
        reconnect_one_in=10**9,
        video="seed-{n}",
        videos=50,
    )
    slots = [asyncio.create_task(viewer_loop(soak, i)) for i in range(args.sockets)]
    await asyncio.sleep(5)  # every socket joined and sending
    print(f"(b) live ingest alone, {args.sockets} sockets × {rate:g} events/s", flush=True)
    ingest_only = await live(port, args, False, soak)
    print(
        f"    ack p50 / p99 {ack_figures(ingest_only[0])[0]:.1f} / "
        f"{ack_figures(ingest_only[0])[1]:.1f} ms",
        flush=True,
    )
    print("(c) live ingest + the dashboard's questions in a loop", flush=True)
    mixed = await live(port, args, True, soak)
    print(
        f"    ack p50 / p99 {ack_figures(mixed[0])[0]:.1f} / {ack_figures(mixed[0])[1]:.1f} ms",
        flush=True,
    )
    await soak.stop(slots)
    return {"quiet": quiet_table, "ingest": ingest_only, "mixed": mixed, "soak": soak}


async def stored_events(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(event_count), 0) FROM sessions "
                "WHERE started_at > now() - interval '1 day' "
                "AND page = 'https://soak.example/watch'"
            )
        )
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--data-dir", type=Path, help="keep the seeded database here")
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between a socket's events")
    ap.add_argument("--seconds", type=float, default=30, help="length of phases b and c")
    ap.add_argument("--repeats", type=int, default=20, help="warm repeats in phase a")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from app.storage.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.data_dir or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        if not (tmp / "data" / "seeded").exists():
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "seed",
                    "--sessions",
                    str(args.sessions),
                    "--days",
                    "30",
                    "--videos",
                    "50",
                    "--key",
                    KEY,
                    "--quiet",
                ],
                cwd=ROOT,
                env=env_for(tmp, 0, None),
                check=True,
            )
            (tmp / "data" / "seeded").write_text(str(time.perf_counter() - started))
        port = 39000 + os.getpid() % 1000
        env = {**env_for(tmp, port, None), "METRICS_MAX_SOCKETS": str(args.sockets + 100)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz")
            url = EmbeddedPostgres(tmp / "data").url
            before = asyncio.run(stored_events(url))
            result = asyncio.run(phases(port, args))
            time.sleep(1.0)
            stored = asyncio.run(stored_events(url)) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    report(args, result, stored)


def report(args: argparse.Namespace, result: dict[str, object], stored: int) -> None:
    soak = result["soak"]
    assert isinstance(soak, Soak)
    quiet_table = result["quiet"]
    ingest_acks, _, _ = result["ingest"]  # type: ignore[misc]
    mixed_acks, mixed_times, refused = result["mixed"]  # type: ignore[misc]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"\n### mixed, {dt.date.today()}, commit {commit}, {args.sessions:,} sessions, "
        f"{os.cpu_count()} cores\n\n",
        f"{args.sockets} sockets × one event every {args.every:g} s "
        f"(≈ {args.sockets / args.every:,.0f} events/s offered), phases of "
        f"{args.seconds:g} s.\n\n",
        "| question | quiet first ms | quiet p50 / p95 ms | live p50 / p95 ms | "
        "503/504 live |\n|---|---|---|---|---|\n",
    ]
    print("question                    quiet first  quiet p50/p95   live p50/p95")
    for name, (first, p50, p95) in quiet_table.items():  # type: ignore[attr-defined]
        live = mixed_times.get(name, [])
        l50, l95 = percentiles(live) if live else (0.0, 0.0)
        print(
            f"{name:<27} {first:9.0f}   {p50:6.1f} / {p95:6.1f}   {l50:7.1f} / {l95:7.1f}"
            f"   refused {refused.get(name, 0)}"
        )
        lines.append(
            f"| {name} | {first:.0f} | {p50:.1f} / {p95:.1f} | {l50:.1f} / {l95:.1f} "
            f"| {refused.get(name, 0)} |\n"
        )
    i50, i99 = ack_figures(ingest_acks)
    m50, m99 = ack_figures(mixed_acks)
    missing = soak.acked - stored
    print(
        f"ack p50/p99: ingest alone {i50:.1f} / {i99:.1f} ms "
        f"({len(ingest_acks) / args.seconds:,.0f} acks/s); "
        f"with questions {m50:.1f} / {m99:.1f} ms "
        f"({len(mixed_acks) / args.seconds:,.0f} acks/s)"
    )
    print(f"acknowledged {soak.acked:,}, stored {stored:,}: {max(0, missing)} missing")
    lines.append(
        f"\n| ack | p50 ms | p99 ms | acks/s |\n|---|---|---|---|\n"
        f"| live ingest alone | {i50:.1f} | {i99:.1f} | "
        f"{len(ingest_acks) / args.seconds:,.0f} |\n"
        f"| live ingest + questions | {m50:.1f} | {m99:.1f} | "
        f"{len(mixed_acks) / args.seconds:,.0f} |\n\n"
        f"Acknowledged {soak.acked:,}, stored {stored:,} "
        f"({max(0, missing)} missing).\n"
    )
    with open(ROOT / "bench" / "RESULTS.md", "a") as results:
        results.writelines(lines)


if __name__ == "__main__":
    main()
