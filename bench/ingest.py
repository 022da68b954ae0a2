"""Ingest throughput that measures the server, not the generator.

One invocation runs, side by side on the same machine:
  1. a bare starlette + uvicorn websocket echo (same uvicorn settings as vidmetrics), and
  2. `vidmetrics serve` on a fresh embedded PostgreSQL,
each pinned to CPU 0 (where the machine has more than one), driven by a raw-protocol
generator pinned to CPU 1 (PostgreSQL runs there too, beside the generator, so that the
server process has a core of its own as the echo does): pre-encoded, pre-masked websocket
frames written on bare asyncio protocols; replies are counted from frame headers, never
parsed. Every socket keeps K events outstanding (a new one is sent when a reply arrives),
or sends one event every --every seconds. Prints events/s, the vidmetrics/echo ratio, ack
p50/p99, CPU seconds of server, PostgreSQL and generator, server RSS per socket, and,
after draining, acknowledged vs stored events (they must be equal). Appends a dated
section to bench/RESULTS.md.
Loopback traffic only.

    .venv/bin/python bench/ingest.py --sockets 1000 --outstanding 1 4 --seconds 20
    .venv/bin/python bench/ingest.py --sockets 10000 --every 5 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
PASSWORD = "bench"
MASK = b"\x11\x22\x33\x44"

ECHO_APP = """
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

async def echo(ws):
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        await ws.send_text(message["text"])

app = Starlette(routes=[WebSocketRoute("/socket/websocket", echo)])
"""


def frame(text: str) -> bytes:
    """A masked client text frame."""
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    )
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def upgrade_request(path: str) -> bytes:
    """A websocket upgrade request for `path`, as a desktop Chrome sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nUser-Agent: {UA}\r\n\r\n"
    ).encode()


def split_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole server frames at the front of `buffer` as (opcode, payload), and the rest."""
    frames = []
    while len(buffer) >= 2:
        n, start = buffer[1] & 0x7F, 2
        if n == 126:
            if len(buffer) < 4:
                break
            n, start = int.from_bytes(buffer[2:4], "big"), 4
        elif n == 127:
            if len(buffer) < 10:
                break
            n, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + n:
            break
        frames.append((buffer[0] & 0x0F, buffer[start : start + n]))
        buffer = buffer[start + n :]
    return frames, buffer


def pong(ping_payload: bytes) -> bytes:
    """A masked client pong answering a server ping (control payloads are < 126 bytes)."""
    n = len(ping_payload)
    return (
        bytes([0x8A, 0x80 | n]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(ping_payload))
    )


def text_frames(buffer: bytes, transport: asyncio.Transport) -> tuple[list[bytes], bytes]:
    """The text messages at the front of `buffer`, and the rest; a server ping among them
    (the keep-alive, no reply) is answered on `transport`."""
    frames, rest = split_frames(buffer)
    texts = []
    for opcode, body in frames:
        if opcode == 0x9:
            transport.write(pong(body))
        elif opcode == 0x1:
            texts.append(body)
    return texts, rest


class Client(asyncio.Protocol):
    """One websocket: handshake, join, then events; replies counted from frame headers."""

    def __init__(self, run: Run, index: int) -> None:
        self.run, self.index = run, index
        topic = f"session:bench{index}x{random.randrange(10**9)}"
        self.join = frame(
            f'["1","1","{topic}","phx_join",{{"key":"{run.key}",'
            f'"metadata":{{"video_id":"bench-{index % 20}"}}}}]'
        )
        self.events = [
            frame(f'["1","2","{topic}","event",{{"name":"play","from":0,"duration":3600}}]'),
            frame(f'["1","3","{topic}","event",{{"name":"pause","to":1,"duration":3600}}]'),
        ]
        self.sent: deque[float] = deque()
        self.buffer = b""
        self.upgraded = False
        self.joined = asyncio.get_running_loop().create_future()
        self.flip = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(upgrade_request(self.run.path))

    def send_event(self) -> None:
        assert self.transport is not None
        self.transport.write(self.events[self.flip])
        self.flip ^= 1
        self.sent.append(time.perf_counter())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.upgraded = True
            self.buffer = self.buffer[end + 4 :]
            assert self.transport is not None
            self.transport.write(self.join)
        assert self.transport is not None
        texts, self.buffer = text_frames(self.buffer, self.transport)
        for body in texts:
            self.reply(body)

    def reply(self, body: bytes) -> None:
        ok = self.run.echo or b'"ok"' in body  # the echo answers with the frame itself
        if not self.joined.done():
            self.joined.set_result(ok)
            return
        if not self.sent:
            return
        latency = time.perf_counter() - self.sent.popleft()
        run = self.run
        if ok:
            if run.measuring:
                run.acked += 1
                run.latencies.append(latency)
            run.total_acked += 1
        else:
            run.errors += 1
        if run.outstanding and not run.stopping:
            self.send_event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost += 1


class Run:
    def __init__(self, port: int, key: str, outstanding: int, echo: bool) -> None:
        self.port, self.key, self.outstanding, self.echo = port, key, outstanding, echo
        self.path = f"/socket/websocket?vsn=2.0.0&key={key}"
        self.acked = self.total_acked = self.errors = self.lost = 0
        self.latencies: list[float] = []
        self.measuring = self.stopping = False
        self.clients: list[Client] = []


async def drive(
    port: int, key: str, sockets: int, outstanding: int, every: float, seconds: float, echo: bool
) -> Run:
    loop = asyncio.get_running_loop()
    run = Run(port, key, outstanding, echo)
    for i in range(sockets):
        _, client = await loop.create_connection(lambda i=i: Client(run, i), "127.0.0.1", port)
        run.clients.append(client)  # type: ignore[arg-type]
    joined = await asyncio.gather(*(c.joined for c in run.clients))
    if not all(joined):
        raise SystemExit(f"{joined.count(False)} joins were refused")
    if outstanding:
        for c in run.clients:
            for _ in range(outstanding):
                c.send_event()
    else:  # every socket sends one event every `every` seconds, spread evenly

        async def pace() -> None:
            rate = len(run.clients) / every  # events per second over all sockets
            began, i = time.perf_counter(), 0
            while not run.stopping:
                due = int((time.perf_counter() - began) * rate)
                while i < due:  # catch up in small batches: sleeps are coarse
                    run.clients[i % len(run.clients)].send_event()
                    i += 1
                await asyncio.sleep(0.005)

        loop.create_task(pace())
    await asyncio.sleep(min(3.0, seconds / 4))  # warm up
    run.measuring = True
    await asyncio.sleep(seconds)
    run.measuring = False
    run.stopping = True
    deadline = time.monotonic() + 30
    while any(c.sent for c in run.clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # drain: every event sent gets its reply
    for c in run.clients:
        if c.transport is not None:
            c.transport.close()
    return run


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 else []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def free_port() -> int:
    """A port nobody listens on now (a random one sometimes was: the server then exits)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code in (200, 404):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def measure(
    label: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    key: str,
    case: dict,
    health: str,
    stored: object = None,
    pg_cpu: int | None = None,
) -> dict:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}{health}")
        if callable(stored):
            key = stored("key")
        server = psutil.Process(proc.pid)
        servers = [server, *server.children(recursive=True)]
        if pg_cpu is not None:  # PostgreSQL beside the generator, the server's core its own
            for p in postgres_processes():  # the postmaster first: backends inherit it
                p.cpu_affinity([pg_cpu])
        rss_before = sum(p.memory_info().rss for p in servers if p.name() != "postgres")
        pg, me = postgres_processes(), psutil.Process()
        cpu0 = (
            cpu_seconds([p for p in servers if p.name() != "postgres"]),
            cpu_seconds(pg),
            cpu_seconds([me]),
        )
        started = time.perf_counter()
        run = asyncio.run(
            drive(
                port,
                key,
                case["sockets"],
                case["outstanding"],
                case["every"],
                case["seconds"],
                label == "echo",
            )
        )
        elapsed = time.perf_counter() - started
        rss_after = sum(
            p.memory_info().rss for p in servers if p.is_running() and p.name() != "postgres"
        )
        cpu1 = (
            cpu_seconds([p for p in servers if p.name() != "postgres"]),
            cpu_seconds(pg),
            cpu_seconds([me]),
        )
        lat = sorted(run.latencies) or [0.0]
        result = {
            "label": label,
            "rate": run.acked / case["seconds"],
            "p50": 1000 * statistics.median(lat),
            "p99": 1000 * lat[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0],
            "errors": run.errors,
            "lost": run.lost,
            "acked": run.total_acked,
            "cpu": [(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)],
            "rss_per_socket": max(0, rss_after - rss_before) / case["sockets"] / 1024,
        }
        if callable(stored):
            time.sleep(1.0)
            result["stored"] = stored("count")
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--outstanding", type=int, nargs="+", default=[1, 4])
    ap.add_argument(
        "--every",
        type=float,
        default=0.0,
        help="instead of --outstanding: one event per socket every N seconds",
    )
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the generator on CPU 1, servers on CPU 0
    cases = (
        [{"sockets": args.sockets, "outstanding": 0, "every": args.every, "seconds": args.seconds}]
        if args.every
        else [
            {"sockets": args.sockets, "outstanding": k, "every": 0.0, "seconds": args.seconds}
            for k in args.outstanding
        ]
    )
    lines = []
    acked_so_far = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "echo.py").write_text(ECHO_APP)
        data = tmp / "data"
        base_env = {**os.environ, "LOG_LEVEL": "warning"}
        base_env.pop("DATABASE_URL", None)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "bench-ingest"],
            cwd=ROOT,
            env={**base_env, "METRICS_DATA_DIR": str(data)},
            check=True,
            capture_output=True,
        )
        for case in cases:
            port = free_port()
            echo = measure(
                "echo",
                [
                    *pinned(0),
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "echo:app",
                    "--app-dir",
                    str(tmp),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "--ws-per-message-deflate",
                    "false",
                    "--http",
                    "httptools",
                    "--ws",
                    "websockets-sansio",
                    "--ws-ping-interval",
                    "0",
                    "--backlog",
                    "4096",
                ],
                base_env,
                port,
                "x",
                case,
                "/",
            )
            port = free_port()
            env = {
                **base_env,
                "METRICS_DATA_DIR": str(data),
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "METRICS_PASSWORD": PASSWORD,
                "METRICS_MAX_EVENTS_PER_SECOND": "100000",
                "METRICS_MAX_SOCKETS": str(case["sockets"] + 100),
                "METRICS_WORKERS": str(args.workers),
            }

            def stored(what: str, port: int = port) -> object:
                if what == "key":
                    return "bench-ingest"
                from app.storage.embedded import EmbeddedPostgres

                url = EmbeddedPostgres(data).url

                async def count() -> int:
                    import asyncpg

                    conn = await asyncpg.connect(url)
                    try:
                        return int(
                            await conn.fetchval(
                                "SELECT coalesce(sum(event_count), 0) FROM sessions"
                            )
                        )
                    finally:
                        await conn.close()

                return asyncio.run(count())

            # one worker shares CPU 0 with nothing; N workers get every core (and so
            # share CPU 1 with the generator)
            server_cpu = pinned(0) if args.workers == 1 else []
            ours = measure(
                "vidmetrics",
                [*server_cpu, sys.executable, "-m", "app.cli", "serve"],
                env,
                port,
                "bench-ingest",
                case,
                "/healthz",
                stored=lambda what, s=stored: s(what),
                pg_cpu=1 if server_cpu else None,
            )
            acked_so_far += ours["acked"]
            ratio = ours["rate"] / echo["rate"] if echo["rate"] else 0.0
            shape = (
                f"K={case['outstanding']}"
                if case["outstanding"]
                else f"1 event / {case['every']:g} s"
            )
            print(f"{case['sockets']} sockets, {shape}, workers={args.workers}:")
            for r in (echo, ours):
                print(
                    f"  {r['label']:10} {r['rate']:9,.0f} events/s  ack p50 {r['p50']:6.1f} ms "
                    f"p99 {r['p99']:6.1f} ms  cpu server {r['cpu'][0]:.2f} pg "
                    f"{r['cpu'][1]:.2f} generator {r['cpu'][2]:.2f}  "
                    f"rss/socket {r['rss_per_socket']:.1f} KiB  errors {r['errors']}"
                )
            lost = acked_so_far - int(ours.get("stored", 0))
            print(
                f"  ratio vidmetrics/echo {ratio:.2f}; acknowledged {acked_so_far:,}, "
                f"stored {ours.get('stored', 0):,}: {lost} acknowledged events missing"
            )
            lines.append(
                f"| {case['sockets']} | {shape} | {args.workers} | {echo['rate']:,.0f} "
                f"| {ours['rate']:,.0f} | {ratio:.2f} | {ours['p50']:.1f} / "
                f"{ours['p99']:.1f} | {ours['cpu'][0]:.2f} / {ours['cpu'][1]:.2f} / "
                f"{ours['cpu'][2]:.2f} | {ours['rss_per_socket']:.1f} | "
                f"{acked_so_far:,} / {ours.get('stored', 0):,} |\n"
            )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with open(ROOT / "bench" / "RESULTS.md", "a") as results:
        results.write(
            f"\n### ingest, {dt.date.today()}, commit {commit}, {os.cpu_count()} cores"
            "\n\n| sockets | load | workers | echo ev/s | vidmetrics ev/s | ratio "
            "| ack p50 / p99 ms | cpu server / pg / generator | RSS KiB/socket "
            "| acked / stored (cumulative) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n"
        )
        results.writelines(lines)


if __name__ == "__main__":
    main()
