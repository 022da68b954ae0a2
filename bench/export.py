"""Export memory: seeds N sessions into a fresh embedded PostgreSQL, then runs
`vidmetrics export` in every format over all of them and over a tenth of them, and reports
each process' peak RSS side by side. Constant memory means the two peaks are about equal;
the bench fails if a full export's peak exceeds --max-rss-mib or 1.25 x the small one's.

    .venv/bin/python bench/export.py --sessions 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--max-rss-mib", type=float, default=250.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "METRICS_DATA_DIR": str(tmp / "data"), "LOG_LEVEL": "warning"}
        env.pop("DATABASE_URL", None)
        print(f"seeding {args.sessions:,} sessions over 30 days ...", flush=True)
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
        # the small export: the newest ~tenth (3 of 30 days)
        rows, failed = [], False
        for fmt in ("ndjson", "csv", "parquet"):
            peaks = {}
            for label, span in (("all", "31 days"), ("tenth", "3 days")):
                out = tmp / f"export.{fmt}"
                rss, took = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "app.cli",
                        "export",
                        "--format",
                        fmt,
                        "--key",
                        "bench",
                        "--timeframe",
                        span,
                        "-o",
                        str(out),
                        "--quiet",
                    ],
                    env,
                )
                peaks[label] = (rss, took, out.stat().st_size)
                out.unlink()
            (big, big_s, big_b), (small, _, small_b) = peaks["all"], peaks["tenth"]
            ratio = big / small
            ok = big <= args.max_rss_mib and ratio <= 1.25
            failed |= not ok
            rows.append((fmt, big, small, ratio, big_s, args.sessions / big_s, big_b, ok))
            print(
                f"{fmt:8} peak RSS all {big:6.1f} MiB vs tenth {small:6.1f} MiB "
                f"(ratio {ratio:.2f}); {big_s:5.1f}s = {args.sessions / big_s:,.0f} sessions/s; "
                f"{big_b / 1e6:,.0f} MB vs {small_b / 1e6:,.0f} MB  {'ok' if ok else 'OVER'}",
                flush=True,
            )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with open(ROOT / "bench" / "RESULTS.md", "a") as results:
        results.write(
            f"\n### export, {dt.date.today()}, commit {commit}, {os.cpu_count()} cores, "
            f"{args.sessions:,} sessions\n\n| format | peak RSS all | peak RSS tenth "
            "| ratio | seconds | sessions/s | bytes |\n|---|---|---|---|---|---|---|\n"
        )
        for fmt, big, small, ratio, secs, rate, size, _ in rows:
            results.write(
                f"| {fmt} | {big:.1f} MiB | {small:.1f} MiB | {ratio:.2f} | {secs:.1f} "
                f"| {rate:,.0f} | {size / 1e6:,.0f} MB |\n"
            )
    if failed:
        raise SystemExit("export memory was not constant")


if __name__ == "__main__":
    main()
