"""A long run at a steady rate: does a day of traffic grow the server?

1,000 websockets (default) on a fresh embedded PostgreSQL, each playing session after
session: join a new topic, send play/pause events at a steady rate, leave after a random
number of events, and one time in five close the whole socket and connect again — so
sessions, channels and connections start and end all the time. Every 10 s it samples the
server's RSS, open file descriptors and asyncio tasks (from its /metrics) and the ack
latency of that window (from the generator). At the end it compares RSS and descriptors
with their values after the first minute (they must stay within 10 %), prints the p99 of
every window, and, after draining, acknowledged vs stored events. The server is pinned to
CPU 0; PostgreSQL and the generator share CPU 1 (as in bench/ingest.py). Appends a dated
section to bench/RESULTS.md. Loopback traffic only; it stops by itself.

    .venv/bin/python bench/soak.py                       # 1,000 sockets, 1 ev/s each, 10 min
    .venv/bin/python bench/soak.py --minutes 2 --sockets 200
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402  (a sibling script, not a package)
    PASSWORD,
    ROOT,
    frame,
    free_port,
    pinned,
    postgres_processes,
    text_frames,
    upgrade_request,
    wait_healthy,
)

KEY = "bench-soak"
SAMPLE_SECONDS = 10.0
RECONNECT_ONE_IN = 5  # sessions that end by closing the whole socket


class Soak:
    """What the generator saw, in total and in the current 10 s window; and how its
    viewers behave (bench/mixed.py plays one long session per socket of seeded videos)."""

    def __init__(
        self,
        port: int,
        rate: float,
        *,
        key: str = KEY,
        session_events: tuple[int, int] = (5, 30),
        reconnect_one_in: int = RECONNECT_ONE_IN,
        video: str = "soak-{n}",
        videos: int = 50,
    ) -> None:
        self.port, self.rate, self.key = port, rate, key
        self.session_events, self.reconnect_one_in = session_events, reconnect_one_in
        self.video, self.videos = video, videos
        self.acked = self.errors = self.sessions = self.reconnects = self.refused = 0
        self.window: list[float] = []
        self.stopping = False
        self.open: set[Viewer] = set()

    async def stop(self, slots: list[asyncio.Task[None]]) -> None:
        """Stop sending, wait (30 s at most) until every event sent has its reply, close
        every socket and end the viewer slots."""
        self.stopping = True
        deadline = time.monotonic() + 30
        while any(v.pending for v in self.open) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for viewer in list(self.open):
            if viewer.transport is not None:
                viewer.transport.close()
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)


class Viewer(asyncio.Protocol):
    """One websocket playing one session after another; replies parsed (they are few)."""

    def __init__(self, soak: Soak, index: int) -> None:
        self.soak, self.index = soak, index
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.ref = 0
        self.pending: dict[str, float] = {}  # ref -> when sent (events only)
        self.topic = ""
        self.join_ref = ""
        self.left = 0  # events left in this session
        self.position = 0.0
        self.playing = False
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # -- the connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.soak.open.add(self)
        self.transport.write(upgrade_request(f"/socket/websocket?vsn=2.0.0&key={self.soak.key}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.soak.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, event: str, payload: dict[str, object]) -> str:
        self.ref += 1
        ref = str(self.ref)
        assert self.transport is not None
        self.transport.write(frame(orjson.dumps(["1", ref, self.topic, event, payload]).decode()))
        return ref

    # -- one session after another ------------------------------------------------------
    def start_session(self) -> None:
        self.topic = f"session:soak{self.index}x{random.randrange(10**12)}"
        self.left = random.randint(*self.soak.session_events)
        self.position = 0.0
        self.playing = False
        self.soak.sessions += 1
        video = self.soak.video.format(n=self.index % self.soak.videos)
        self.join_ref = self.send(
            "phx_join",
            {
                "key": self.soak.key,
                "source_url": "https://soak.example/watch",
                "metadata": {"video_id": video},
            },
        )

    def next_event(self) -> None:
        self.timer = None
        if self.soak.stopping or self.transport is None or self.transport.is_closing():
            return
        if self.left <= 0:
            self.send("phx_leave", {})
            if random.randrange(self.soak.reconnect_one_in) == 0:
                self.soak.reconnects += 1
                self.closing = True  # closed once every event has its reply; a new
                self.close_when_answered()  # connection follows (see viewer_loop)
                return
            self.start_session()
            return
        self.left -= 1
        self.playing = not self.playing
        if self.playing:  # a session begins with play, then pause, play, ...
            ref = self.send(
                "event", {"name": "play", "from": round(self.position, 2), "duration": 600}
            )
        else:
            self.position += 2.0 / self.soak.rate  # a play/pause pair: real time
            ref = self.send(
                "event", {"name": "pause", "to": round(self.position, 2), "duration": 600}
            )
        self.pending[ref] = time.perf_counter()
        self.schedule()

    def close_when_answered(self) -> None:
        if self.closing and not self.pending and self.transport is not None:
            self.transport.close()

    def schedule(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(
            random.expovariate(self.soak.rate), self.next_event
        )

    # -- frames -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.soak.refused += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.buffer = self.buffer[end + 4 :]
            self.start_session()
        assert self.transport is not None
        texts, self.buffer = text_frames(self.buffer, self.transport)
        for body in texts:
            self.reply(orjson.loads(body))

    def reply(self, message: list[object]) -> None:
        _, ref, topic, event, payload = message
        if event != "phx_reply":
            return
        ok = isinstance(payload, dict) and payload.get("status") == "ok"
        sent = self.pending.pop(str(ref), None)  # refs are this socket's own, never reused
        if sent is not None:  # an event's acknowledgement (maybe of the session before)
            if ok:
                self.soak.acked += 1
                self.soak.window.append(time.perf_counter() - sent)
            else:
                self.soak.errors += 1
            self.close_when_answered()
        elif str(ref) == self.join_ref and topic == self.topic:  # this session's join
            if ok:
                self.schedule()
            else:
                self.soak.errors += 1


async def viewer_loop(soak: Soak, index: int) -> None:
    """One viewer slot: connect, play sessions until the socket is closed, connect again."""
    loop = asyncio.get_running_loop()
    while not soak.stopping:
        try:
            _, viewer = await loop.create_connection(
                lambda: Viewer(soak, index), "127.0.0.1", soak.port
            )
        except OSError:
            soak.refused += 1
            await asyncio.sleep(1)
            continue
        await viewer.closed  # type: ignore[attr-defined]


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", auth=("admin", PASSWORD), timeout=10).text
    wanted = {
        "process_resident_memory_bytes",
        "process_open_fds",
        "vidmetrics_asyncio_tasks",
        "vidmetrics_sockets",
        "vidmetrics_sessions_active",
    }
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


async def soak_run(
    port: int, sockets: int, rate: float, minutes: float, server: psutil.Process
) -> tuple[Soak, list[dict[str, float]]]:
    soak = Soak(port, rate)
    slots = []
    for i in range(sockets):
        slots.append(asyncio.create_task(viewer_loop(soak, i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    samples: list[dict[str, float]] = []
    began = time.monotonic()
    cpu_before = server.cpu_times()
    while time.monotonic() - began < minutes * 60:
        await asyncio.sleep(SAMPLE_SECONDS)
        window, soak.window = sorted(soak.window), []
        metrics = await asyncio.to_thread(scrape, port)
        cpu = server.cpu_times()
        samples.append(
            {
                "t": time.monotonic() - began,
                "acked": soak.acked,
                "sessions": soak.sessions,
                "rate": len(window) / SAMPLE_SECONDS,
                "p50": 1000 * statistics.median(window) if window else 0.0,
                "p99": 1000 * window[max(0, int(len(window) * 0.99) - 1)] if window else 0.0,
                "rss_mib": metrics.get("process_resident_memory_bytes", 0) / 2**20,
                "fds": metrics.get("process_open_fds", 0),
                "tasks": metrics.get("vidmetrics_asyncio_tasks", 0),
                "sockets": metrics.get("vidmetrics_sockets", 0),
                "channels": metrics.get("vidmetrics_sessions_active", 0),
                "cpu": (cpu.user + cpu.system - cpu_before.user - cpu_before.system)
                / SAMPLE_SECONDS,
            }
        )
        cpu_before = cpu
        s = samples[-1]
        print(
            f"  {s['t']:6.0f} s  {s['rate']:6.0f} ev/s  ack p50 {s['p50']:5.1f} p99 "
            f"{s['p99']:6.1f} ms  rss {s['rss_mib']:6.1f} MiB  fds {s['fds']:5.0f}  "
            f"tasks {s['tasks']:4.0f}  sockets {s['sockets']:5.0f}  channels "
            f"{s['channels']:5.0f}  cpu {s['cpu']:.2f}",
            flush=True,
        )
    await soak.stop(slots)
    return soak, samples


def stored_events(data: Path) -> int:
    from app.storage.embedded import EmbeddedPostgres

    async def count() -> int:
        import asyncpg

        conn = await asyncpg.connect(EmbeddedPostgres(data).url)
        try:
            return int(await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM sessions"))
        finally:
            await conn.close()

    return asyncio.run(count())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1.0, help="events per second per socket")
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp_name:
        data = Path(tmp_name) / "data"
        env = {
            **os.environ,
            "LOG_LEVEL": "warning",
            "METRICS_DATA_DIR": str(data),
            "METRICS_PASSWORD": PASSWORD,
            "METRICS_MAX_SOCKETS": str(args.sockets + 100),
        }
        env.pop("DATABASE_URL", None)
        subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", KEY],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        port = free_port()
        proc = subprocess.Popen(
            [*pinned(0), sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env={**env, "PORT": str(port), "HOST": "127.0.0.1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz")
            if (os.cpu_count() or 1) > 1:
                for p in postgres_processes():
                    p.cpu_affinity([1])
            print(
                f"soak: {args.sockets} sockets, {args.rate:g} events/s each, {args.minutes:g} min",
                flush=True,
            )
            soak, samples = asyncio.run(
                soak_run(port, args.sockets, args.rate, args.minutes, psutil.Process(proc.pid))
            )
            time.sleep(1.0)
            stored = stored_events(data)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    report(args, soak, samples, stored)


def report(
    args: argparse.Namespace, soak: Soak, samples: list[dict[str, float]], stored: int
) -> None:
    minute = next((s for s in samples if s["t"] >= 60), samples[0])
    last = samples[-1]
    after = [s for s in samples if s["t"] >= 60] or samples
    p99s = [s["p99"] for s in after]
    rss_change = last["rss_mib"] / minute["rss_mib"] - 1
    fds_change = last["fds"] / minute["fds"] - 1
    verdict = "flat" if abs(rss_change) <= 0.10 and abs(fds_change) <= 0.10 else "GROWING"
    print(
        f"after 1 min: rss {minute['rss_mib']:.1f} MiB, fds {minute['fds']:.0f}, tasks "
        f"{minute['tasks']:.0f}; at the end: rss {last['rss_mib']:.1f} MiB "
        f"({100 * rss_change:+.1f} %), fds {last['fds']:.0f} ({100 * fds_change:+.1f} %), "
        f"tasks {last['tasks']:.0f}: {verdict}"
    )
    print(
        f"ack p99 per 10 s window after the first minute: median {statistics.median(p99s):.1f}"
        f" ms, max {max(p99s):.1f} ms; {soak.sessions:,} sessions, {soak.reconnects:,} "
        f"reconnects, {soak.errors} errors, {soak.refused} refused"
    )
    print(
        f"acknowledged {soak.acked:,}, stored {stored:,}: {soak.acked - stored} "
        "acknowledged events missing"
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with open(ROOT / "bench" / "RESULTS.md", "a") as results:
        results.write(
            f"\n### soak, {dt.date.today()}, commit {commit}, {os.cpu_count()} cores\n\n"
            f"{args.sockets} sockets, {args.rate:g} events/s each, {args.minutes:g} min; "
            f"{soak.sessions:,} sessions, {soak.reconnects:,} reconnects; acknowledged "
            f"{soak.acked:,}, stored {stored:,} ({soak.acked - stored} missing); "
            f"{soak.errors} errors.\n\n"
            "| | RSS MiB | open fds | asyncio tasks | ack p99 ms (window) |\n"
            "|---|---|---|---|---|\n"
            f"| after 1 min | {minute['rss_mib']:.1f} | {minute['fds']:.0f} | "
            f"{minute['tasks']:.0f} | {minute['p99']:.1f} |\n"
            f"| end | {last['rss_mib']:.1f} ({100 * rss_change:+.1f} %) | {last['fds']:.0f} "
            f"({100 * fds_change:+.1f} %) | {last['tasks']:.0f} | {last['p99']:.1f} |\n"
            f"| p99 over windows after 1 min | | | | median {statistics.median(p99s):.1f}, "
            f"max {max(p99s):.1f} |\n\nVerdict: {verdict}.\n"
        )


if __name__ == "__main__":
    main()
