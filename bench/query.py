"""Query latency: seeds N sessions over 30 days (via `vidmetrics seed`) into a fresh embedded
PostgreSQL, starts a server, and reports p50/p95 of every query endpoint for one video and
for all videos of a key, with and without a timezone. Loopback traffic only.

    .venv/bin/python bench/query.py --sessions 100000 1000000
"""

from __future__ import annotations

import argparse
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
PASSWORD = "bench"
TARGET_MS = 100.0


def env_for(tmp: Path, port: int) -> dict[str, str]:
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "METRICS_PASSWORD": PASSWORD,
           "METRICS_DATA_DIR": str(tmp / "data"), "LOG_LEVEL": "warning"}
    env.pop("DATABASE_URL", None)
    return env


def seed(tmp: Path, sessions: int) -> None:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "seed", "--sessions", str(sessions),
                    "--days", "30", "--videos", "50", "--key", "bench", "--quiet"],
                   cwd=ROOT, env=env_for(tmp, 0), check=True)
    print(f"  seeded in {time.perf_counter() - started:.0f}s")


def measure(client: httpx.Client, path: str, body: dict[str, object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post(path, json=body)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return times


def run(sessions: int, repeats: int) -> None:
    print(f"\n== {sessions:,} sessions over 30 days, 50 videos ==")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seed(tmp, sessions)
        port = 38000 + random.randrange(1000)
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT,
                                env=env_for(tmp, port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            selections = {
                "one video": {"query": {"key": "bench", "video": {"video_id": "seed-0"}}},
                "all videos of key": {"query": {"key": "bench"}},
            }
            print(f"  {'endpoint':<12} {'selection':<18} {'timezone':<14} "
                  f"{'p50 ms':>8} {'p95 ms':>8} {'p95/target':>10}")
            with httpx.Client(base_url=base, auth=("admin", PASSWORD), timeout=120) as client:
                for path in ("plays", "engagement", "sources", "watching"):
                    for label, sel in selections.items():
                        for tz in (None, "Europe/Berlin"):
                            if path in ("engagement", "watching") and tz:
                                continue
                            body: dict[str, object] = {**sel, "timeframe": "30 days",
                                                       "interval": "1 day"}
                            if tz:
                                body["timezone"] = tz
                            measure(client, f"/api/v1/{path}", body, 1)  # warm
                            times = measure(client, f"/api/v1/{path}", body, repeats)
                            p50 = statistics.median(times)
                            p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
                            print(f"  {path:<12} {label:<18} {tz or '-':<14} {p50:>8.1f} "
                                  f"{p95:>8.1f} {p95 / TARGET_MS:>10.2f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for n in args.sessions:
        run(n, args.repeats)


if __name__ == "__main__":
    main()
