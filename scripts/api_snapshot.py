"""Every API answer on one seeded database, as one file, so that a change meant to keep
behaviour can be checked byte for byte: run it before and after, then `diff` the files.

    .venv/bin/python scripts/api_snapshot.py /tmp/before.txt
    ... change the code ...
    .venv/bin/python scripts/api_snapshot.py /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt

It seeds a fresh embedded PostgreSQL (deterministic: the same sessions on the same day),
starts the real server on it and asks every endpoint a fixed set of questions — good and
bad — over absolute timeframes, writing each status, content type and body as received.
Only values that depend on the wall clock (a key's `created_at`) are masked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "snapshot"
KEY = "snap"
VIDEO = {"video_id": "seed-0", "title": "Seed video 0"}
# the server makes the example page's key at start: a new value every run
MASKS = [
    (re.compile(rb'"key":"(?!snap")[^"]*"'), b'"key":"<made at start>"'),
    (re.compile(rb'"created_at":\s*"[^"]*"'), b'"created_at":"<masked>"'),
    (re.compile(rb'"created_at":\s*\d+(\.\d+)?'), b'"created_at":0'),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def questions(end: dt.datetime) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, JSON body) for every endpoint: the dashboard's questions and the
    refusals a client can meet."""
    day = int(end.timestamp())
    tf = {"from": day - 30 * 86400, "to": day}
    week = {"from": day - 7 * 86400, "to": day}
    key = {"query": {"key": KEY}}
    one = {"query": {"video": VIDEO}}
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for sel in (key, one, {"query": {"key": KEY, "session": {"path": "/"}}}):
        for interval in ("1 day", "6 hours", "1 month"):
            base = {**sel, "timeframe": tf, "interval": interval, "timezone": "Europe/Berlin"}
            out += [
                ("POST", f"/api/v1/{name}", base)
                for name in ("plays", "sources", "completion", "qoe")
            ]
            out.append(("POST", "/api/v1/plays", {**base, "minimum_watch_seconds": 2.5}))
        out.append(("POST", "/api/v1/engagement", {**sel, "timeframe": tf}))
        out.append(
            (
                "POST",
                "/api/v1/engagement",
                {**sel, "timeframe": week, "ranges": 7, "normalize": "sessions"},
            )
        )
        out.append(("POST", "/api/v1/videos", {**sel, "timeframe": tf}))
        out.append(("POST", "/api/v1/sessions", {**sel, "timeframe": tf, "limit": 5}))
        out.append(("POST", "/api/v1/watching", sel))
    for breakdown in ("browser", "platform", "device"):
        out.append(
            (
                "POST",
                "/api/v1/qoe",
                {**key, "timeframe": tf, "interval": "1 day", "breakdown": breakdown},
            )
        )
    for fmt in ("ndjson", "csv"):
        out.append(("POST", "/api/v1/export", {**one, "timeframe": week, "format": fmt}))
    out += [
        (
            "GET",
            "/api/v1/plays?"
            + str(
                httpx.QueryParams(
                    {
                        "query": json.dumps(key["query"]),
                        "timeframe": json.dumps(week),
                        "interval": "1 day",
                    }
                )
            ),
            None,
        ),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", "/api/v1/keys", None),
        ("GET", "/api/v1/sessions/1", None),
        ("GET", "/api/v1/sessions/999999999", None),
        ("GET", "/api/v1/sessions/x1", None),
        ("POST", "/api/v1/plays", {"query": {}, "timeframe": tf}),
        ("POST", "/api/v1/plays", {**key, "timeframe": "7 weeks", "interval": "1 second"}),
        ("POST", "/api/v1/plays", {**key, "timeframe": {"from": 1}, "interval": "1 day"}),
        (
            "POST",
            "/api/v1/plays",
            {**key, "timeframe": tf, "interval": "1 day", "timezone": "Mars/Olympus"},
        ),
        ("POST", "/api/v1/qoe", {**key, "timeframe": tf, "interval": "1 day", "breakdown": "shoe"}),
        ("POST", "/api/v1/engagement", {**key, "timeframe": tf, "ranges": 0}),
        ("POST", "/api/v1/export", {**key, "timeframe": tf, "format": "xml"}),
        ("POST", "/api/v1/nothing", {}),
        ("DELETE", "/api/v1/keys/does-not-exist", None),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("output", type=Path)
    ap.add_argument("--sessions", type=int, default=20_000)
    args = ap.parse_args()
    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {
            **os.environ,
            "METRICS_DATA_DIR": str(Path(tmp) / "data"),
            "LOG_LEVEL": "warning",
            "METRICS_PASSWORD": PASSWORD,
            "PORT": str(port),
            "HOST": "127.0.0.1",
        }
        env.pop("DATABASE_URL", None)
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
                "12",
                "--key",
                KEY,
                "--quiet",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, auth=("admin", PASSWORD), timeout=60) as client:
                for _ in range(300):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                with args.output.open("wb") as out:
                    for method, path, body in questions(end):
                        answer = client.request(method, path, json=body)
                        content = answer.content
                        for pattern, mask in MASKS:
                            content = pattern.sub(mask, content)
                        head = json.dumps([method, path, body], sort_keys=True)
                        out.write(
                            f"{head}\n{answer.status_code} "
                            f"{answer.headers.get('content-type')}\n".encode()
                        )
                        out.write(content + b"\n\n")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
