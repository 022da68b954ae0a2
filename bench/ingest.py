"""Ingest load generator: N concurrent sessions speaking the real client's protocol.

Starts a vidmetrics server on an embedded PostgreSQL in a temporary directory (or uses
--server URL), opens N websockets, joins one `session:*` channel on each, and sends
play/pause events at --rate events/s per session for --seconds. Prints connected
sessions, events/s acknowledged (after commit), ack latency p50/p95/p99, server RSS per
socket and errors. Traffic goes only to the loopback address.

    .venv/bin/python bench/ingest.py --sessions 1000 --rate 10 --seconds 30
    .venv/bin/python bench/ingest.py --sessions 5000 --rate 0.2 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0.0.0 Safari/537.36")
PASSWORD = "bench"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "METRICS_PASSWORD": PASSWORD,
           "METRICS_DATA_DIR": str(tmp / "data"), "LOG_LEVEL": "warning",
           "METRICS_MAX_SOCKETS": "100000"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not start; see " + str(tmp / "server.log"))


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.acked = 0
        self.errors = 0
        self.connected = 0
        self.connect_errors = 0
        self.reasons: dict[str, int] = {}


async def session(url: str, key: str, rate: float, deadline: list[float], stats: Stats,
                  hold: asyncio.Event) -> None:
    """One page: join, wait for the start signal, then play/pause until deadline[0]."""
    try:
        ws = await connect(url, user_agent_header=UA, compression=None, open_timeout=60,
                           ping_interval=None, max_size=2**20)
    except (TimeoutError, OSError, Exception):  # noqa: BLE001 - count any failure
        stats.connect_errors += 1
        return
    sent: dict[str, float] = {}
    topic = "session:" + secrets.token_urlsafe(16)[:21]
    meta = {"video_id": f"bench-{random.randrange(50)}"}
    await ws.send(json.dumps(["1", "1", topic, "phx_join",
                              {"metadata": meta, "identifier": meta, "key": key,
                               "source_url": "http://bench.example/page"}]))
    joined = json.loads(await ws.recv())
    if joined[4]["status"] != "ok":
        stats.connect_errors += 1
        await ws.close()
        return
    stats.connected += 1

    async def reader() -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                start = sent.pop(frame[1], None)
                if start is None:
                    continue
                if frame[4]["status"] == "ok":
                    stats.acked += 1
                    stats.latencies.append(time.perf_counter() - start)
                else:
                    stats.errors += 1
                    reason = frame[4]["response"].get("reason", "?")
                    stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    task = asyncio.create_task(reader())
    await hold.wait()
    until = deadline[0]
    ref, position, playing = 1, 0.0, False
    interval = 1 / rate
    next_at = time.perf_counter() + random.random() * interval
    while True:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() >= until:
            break
        ref += 1
        if playing:
            position += interval
            payload = {"name": "pause", "duration": 600, "to": f"{position:.2f}"}
        else:
            payload = {"name": "play", "duration": 600, "from": 0 if position < 1 else position}
        playing = not playing
        sent[str(ref)] = time.perf_counter()
        await ws.send(json.dumps(["1", str(ref), topic, "event", payload]))
        next_at += interval
    await asyncio.sleep(2)  # let the last acks arrive
    stats.errors += len(sent)
    if sent:
        stats.reasons["no reply"] = stats.reasons.get("no reply", 0) + len(sent)
    await ws.close()
    task.cancel()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def run(args: argparse.Namespace, base: str, key: str, pid: int | None) -> None:
    parts = urlsplit(base)
    ws_url = f"ws://{parts.netloc}/socket/websocket?vsn=2.0.0&key={quote(key, safe='')}"
    stats = Stats()
    baseline = rss_kib(pid) if pid else 0
    hold = asyncio.Event()
    deadline = [float("inf")]
    tasks = []
    started = time.perf_counter()
    for i in range(args.sessions):
        tasks.append(asyncio.create_task(
            session(ws_url, key, args.rate, deadline, stats, hold)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    while stats.connected + stats.connect_errors < args.sessions:
        await asyncio.sleep(0.1)
        if time.perf_counter() - started > 120:
            break
    connect_time = time.perf_counter() - started
    await asyncio.sleep(1)
    loaded = rss_kib(pid) if pid else 0
    deadline[0] = time.perf_counter() + args.seconds
    hold.set()
    await asyncio.gather(*tasks)
    per_socket = (loaded - baseline) / max(1, stats.connected) if pid else float("nan")
    print(f"sessions requested      {args.sessions}")
    print(f"sessions connected      {stats.connected} (failed {stats.connect_errors}, "
          f"in {connect_time:.1f}s)")
    print(f"events acknowledged     {stats.acked} in {args.seconds}s = "
          f"{stats.acked / args.seconds:,.0f} events/s (target {args.sessions * args.rate:,.0f}/s,"
          f" ratio {stats.acked / args.seconds / (args.sessions * args.rate):.2f})")
    print(f"ack latency ms          p50 {pct(stats.latencies, .5):.1f}  "
          f"p95 {pct(stats.latencies, .95):.1f}  p99 {pct(stats.latencies, .99):.1f}")
    if pid:
        print(f"server RSS              {baseline / 1024:.1f} MiB idle, {loaded / 1024:.1f} MiB "
              f"with sockets = {per_socket:.1f} KiB per socket (target 24, ratio "
              f"{per_socket / 24:.2f})")
    print(f"errors                  {stats.errors} {stats.reasons or ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="events/s per session")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--server", help="use a running server (base URL, loopback only)")
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args()
    raise_fd_limit()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.server:
            base, pid = args.server.rstrip("/"), None
            if urlsplit(base).hostname not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit("--server must be on this machine (loopback)")
        else:
            port = 39000 + random.randrange(1000)
            proc = start_server(Path(tmp), port)
            base, pid = f"http://127.0.0.1:{port}", proc.pid
        try:
            key = httpx.post(f"{base}/api/v1/keys", auth=("admin", args.password)).json()["key"]
            asyncio.run(run(args, base, key, pid))
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)


if __name__ == "__main__":
    main()
