"""Dashboard first render: seeds N sessions (30 days, 50 videos) into a fresh embedded
PostgreSQL, starts a server, and loads each dashboard page in headless Chromium several
times, reporting the time from navigation until every panel is drawn (the page's
`data-ready` mark), beside the time of the API calls alone. Needs the e2e npm packages
(`./scripts/test` installs them) and Chromium. Appends to bench/RESULTS.md.

    .venv/bin/python bench/dashboard.py --sessions 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
E2E = ROOT / "tests" / "e2e"
PASSWORD = "bench"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument(
        "--data-dir", type=Path, help="keep the embedded database here (seeded once, reused)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.data_dir or Path(tmp_name)
        port = 39000 + random.randrange(1000)
        env = {
            **os.environ,
            "METRICS_DATA_DIR": str(tmp / "data"),
            "LOG_LEVEL": "warning",
            "METRICS_PASSWORD": PASSWORD,
            "PORT": str(port),
            "HOST": "127.0.0.1",
        }
        env.pop("DATABASE_URL", None)
        if not (tmp / "data" / "seeded").exists():
            print(f"seeding {args.sessions:,} sessions ...", flush=True)
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
                    "bench",
                    "--quiet",
                ],
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (tmp / "data" / "seeded").write_text(str(time.perf_counter() - started))
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            video = json.dumps({"video_id": "seed-0", "title": "Seed video 0"})
            pages = {
                "overview": "/dashboard?key=bench&tf=30%20days&interval=1%20day",
                "video": "/dashboard?key=bench&tf=30%20days&interval=1%20day&view=video"
                f"&video={httpx.QueryParams({'v': video})['v']}",
                "sessions": "/dashboard?key=bench&tf=30%20days&view=sessions",
            }
            steps = [
                {"name": f"{name}-{i}", "path": path, "width": 1280, "height": 800}
                for i in range(args.loads + 1)
                for name, path in pages.items()
            ]
            plan = {
                "base": base,
                "user": "admin",
                "password": PASSWORD,
                "shots": "",
                "steps": steps,
            }
            out = subprocess.run(
                ["node", "dashboard.cjs", json.dumps(plan)],
                cwd=E2E,
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
            )
            report = json.loads(out.stdout)
            size = sum(
                len(httpx.get(f"{base}/dashboard/{a}", auth=("admin", PASSWORD)).content)
                for a in (
                    "",
                    "main.js",
                    "api.js",
                    "ui.js",
                    "style.css",
                    "vendor/uPlot.iife.min.js",
                    "vendor/uPlot.min.css",
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    lines = [
        f"\n### dashboard, {dt.date.today()}, {args.sessions:,} sessions, page weight "
        f"{size / 1000:.0f} KB uncompressed\n\n| page | first render p50 ms | max ms |\n"
        "|---|---|---|\n"
    ]
    for name in ("overview", "video", "sessions"):
        times = [
            r["readyMs"]
            for r in report
            if r["name"].startswith(name + "-") and not r["name"].endswith("-0")
        ]  # load 0 warms the caches
        p50 = statistics.median(times)
        print(
            f"{name:9} first render p50 {p50:6.0f} ms  max {max(times):6.0f} ms "
            f"(target 1000 ms: {p50 / 1000:.2f})"
        )
        lines.append(f"| {name} | {p50:.0f} | {max(times):.0f} |\n")
    print(f"page weight {size / 1000:.0f} KB uncompressed")
    with open(ROOT / "bench" / "RESULTS.md", "a") as results:
        results.writelines(lines)


if __name__ == "__main__":
    main()
