"""The embedded PostgreSQL: init, start, stop, restart keeping data, one owner at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.storage.embedded import DataDirBusy, EmbeddedPostgres
from tests.conftest import ROOT, query, start_server


def test_restart_keeps_data_and_lock_is_exclusive(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "d")
    pg.acquire()
    url = pg.start()
    assert "host=" in url and "@/" in url  # a unix socket, no TCP listener
    query(url, "CREATE TABLE kept AS SELECT 42 AS v")
    other = EmbeddedPostgres(tmp_path / "d")
    with pytest.raises(DataDirBusy, match="in use by another vidmetrics process"):
        other.acquire()
    assert query(url, "SHOW listen_addresses")[0][0] == ""
    pg.stop()
    assert not (tmp_path / "d" / "pgdata" / "postmaster.pid").exists()
    pg.release()
    again = EmbeddedPostgres(tmp_path / "d")
    again.acquire()
    url = again.start()
    assert query(url, "SELECT v FROM kept")[0][0] == 42
    again.stop()
    again.release()


def test_serve_twice_on_one_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    first = start_server(tmp_path, {})
    try:
        env = {**os.environ, "METRICS_DATA_DIR": str(tmp_path / "data"), "PORT": "0"}
        env.pop("DATABASE_URL", None)
        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "is in use by another vidmetrics process" in second.stderr
        # the first one is unharmed
        assert httpx.get(f"{first.http}/healthz").status_code == 200
        out = first.output()
        assert "admin login admin /" not in out  # a password was given
        assert "example ingest key" in out
    finally:
        assert first.stop(signal.SIGINT) == 0
    # stopped cleanly: PostgreSQL is down too, and a restart finds its data
    assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()
    key = (tmp_path / "data" / "example-key").read_text()
    restarted = start_server(tmp_path, {})
    try:
        keys = httpx.get(f"{restarted.http}/api/v1/keys", auth=("admin", "test-secret")).json()
        assert key in [k["key"] for k in keys["keys"]]
    finally:
        restarted.stop()


def test_first_start_generates_admin_credentials(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"METRICS_PASSWORD": ""})
    try:
        password = (tmp_path / "data" / "admin-password").read_text().strip()
        assert f"admin login admin / {password}" in srv.output()
        assert oct((tmp_path / "data" / "admin-password").stat().st_mode & 0o777) == "0o600"
        assert httpx.get(f"{srv.http}/api/v1/keys", auth=("admin", password)).status_code == 200
        page = httpx.get(srv.http + "/")
        assert page.status_code == 200 and "@maveio/metrics" in page.text
        key = (tmp_path / "data" / "example-key").read_text().strip()
        assert key in page.text
        video = httpx.get(srv.http + "/static/sample.webm", headers={"Range": "bytes=0-99"})
        assert video.status_code == 206 and len(video.content) == 100
    finally:
        srv.stop()
    deadline = time.monotonic() + 5
    while (tmp_path / "data" / "pgdata" / "postmaster.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
