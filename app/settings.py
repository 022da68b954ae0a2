"""Reads the environment once into a frozen Settings; everything else receives it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path


class SettingsError(ValueError):
    """A configuration value is unusable; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".vidmetrics")
    host: str = "0.0.0.0"
    port: int = 3000
    auth_enabled: bool = True
    user: str = "admin"
    password: str | None = None
    password_hash: str | None = None
    max_body_bytes: int = 1024 * 1024
    # ingest limits
    max_frame_bytes: int = 64 * 1024
    max_metadata_bytes: int = 4096
    max_metadata_depth: int = 4
    max_events_per_second: float = 50.0
    max_sockets: int = 10_000
    max_channels_per_socket: int = 16
    max_session_state_bytes: int = 128 * 1024 * 1024
    socket_idle_seconds: float = 120.0
    # websocket protocol pings (0: none; the idle timeout and the clients' heartbeats
    # already find dead peers, and pings to every socket at once cost latency)
    ws_ping_seconds: float = 0.0
    # HTTP connections (not websockets) and how long a request may take to arrive
    max_http_connections: int = 1000
    request_timeout_seconds: float = 15.0
    max_buckets: int = 10_000
    max_password_checks: int = 2
    # writer (group commit)
    flush_interval_ms: float = 5.0
    flush_max_rows: int = 2000
    # retention (days; 0 = keep forever)
    retention_days: int = 0
    raw_events_retention_days: int = 30
    compress_after_days: int = 7
    # presence
    watching_ttl_seconds: float = 30.0
    key_refresh_seconds: float = 0.5
    log_level: str = "info"
    log_format: str = "text"
    # export webhook: ended sessions are posted here in batches (unset: no webhook)
    export_webhook: str | None = None
    export_webhook_batch: int = 100
    db_pool_size: int = 10
    # the query API's own connections (the writer's pool is never used by questions), how
    # long one statement of a question may run, and how long a question waits for one of
    # them before it is answered 503
    query_pool_size: int = dataclasses.field(default_factory=lambda: max(2, os.cpu_count() or 1))
    query_timeout_seconds: float = 10.0
    query_queue_seconds: float = 2.0
    workers: int = 1  # server processes on one port (METRICS_WORKERS; "auto": one per CPU)

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float = 0.0, zero: bool = False
) -> float:
    """A number greater than `minimum` (or exactly 0, when `zero` allows it: "off")."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not (value > minimum or (zero and value == 0)):
        raise SettingsError(
            f"{name} must be greater than {minimum}{' (or 0: off)' if zero else ''}, got {raw}"
        )
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw.lower() not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.lower()


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must be an http:// or https:// URL")
    return raw


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise SettingsError naming a bad variable."""
    env = os.environ if env is None else env
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
        raise SettingsError("DATABASE_URL must start with postgresql://")
    password_hash = env.get("METRICS_PASSWORD_HASH") or None
    if password_hash is not None and not password_hash.startswith("$argon2id$"):
        raise SettingsError("METRICS_PASSWORD_HASH must be an argon2id hash ($argon2id$...)")
    port = _int(env, "PORT", 3000, minimum=0)
    if port > 65535:
        raise SettingsError(f"PORT must be at most 65535, got {port}")
    return Settings(
        database_url=database_url,
        data_dir=Path(env.get("METRICS_DATA_DIR") or ".vidmetrics"),
        host=env.get("HOST") or "0.0.0.0",
        port=port,
        auth_enabled=_bool(env, "METRICS_AUTH_ENABLED", True),
        user=env.get("METRICS_USER") or "admin",
        password=env.get("METRICS_PASSWORD") or None,
        password_hash=password_hash,
        max_body_bytes=_int(env, "METRICS_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
        max_frame_bytes=_int(env, "METRICS_MAX_FRAME_BYTES", 64 * 1024, minimum=256),
        max_metadata_bytes=_int(env, "METRICS_MAX_METADATA_BYTES", 4096, minimum=16),
        max_metadata_depth=_int(env, "METRICS_MAX_METADATA_DEPTH", 4, minimum=1),
        max_events_per_second=_float(env, "METRICS_MAX_EVENTS_PER_SECOND", 50.0),
        max_sockets=_int(env, "METRICS_MAX_SOCKETS", 10_000, minimum=1),
        max_channels_per_socket=_int(env, "METRICS_MAX_CHANNELS_PER_SOCKET", 16, minimum=1),
        max_session_state_bytes=_int(env, "METRICS_MAX_SESSION_STATE_MB", 128, minimum=1)
        * 1024
        * 1024,
        socket_idle_seconds=_float(env, "METRICS_SOCKET_IDLE_SECONDS", 120.0),
        ws_ping_seconds=_float(env, "METRICS_WS_PING_SECONDS", 0.0, zero=True),
        max_http_connections=_int(env, "METRICS_MAX_HTTP_CONNECTIONS", 1000, minimum=1),
        request_timeout_seconds=_float(env, "METRICS_REQUEST_TIMEOUT_SECONDS", 15.0),
        max_buckets=_int(env, "METRICS_MAX_BUCKETS", 10_000, minimum=1),
        max_password_checks=_int(env, "METRICS_MAX_PASSWORD_CHECKS", 2, minimum=1),
        flush_interval_ms=_float(env, "METRICS_FLUSH_INTERVAL_MS", 5.0),
        flush_max_rows=_int(env, "METRICS_FLUSH_MAX_ROWS", 2000, minimum=1),
        retention_days=_int(env, "METRICS_RETENTION_DAYS", 0),
        raw_events_retention_days=_int(env, "METRICS_RAW_EVENTS_RETENTION_DAYS", 30),
        compress_after_days=_int(env, "METRICS_COMPRESS_AFTER_DAYS", 7, minimum=1),
        watching_ttl_seconds=_float(env, "METRICS_WATCHING_TTL_SECONDS", 30.0),
        key_refresh_seconds=_float(env, "METRICS_KEY_REFRESH_SECONDS", 0.5),
        log_level=_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=_choice(
            env,
            "METRICS_LOG_FORMAT" if env.get("METRICS_LOG_FORMAT") else "LOG_FORMAT",
            "text",
            ("text", "json"),
        ),
        export_webhook=_url(env, "METRICS_EXPORT_WEBHOOK"),
        export_webhook_batch=_int(env, "METRICS_EXPORT_WEBHOOK_BATCH", 100, minimum=1),
        db_pool_size=_int(env, "METRICS_DB_POOL_SIZE", 10, minimum=2),
        query_pool_size=_int(
            env, "METRICS_QUERY_POOL_SIZE", max(2, os.cpu_count() or 1), minimum=1
        ),
        query_timeout_seconds=_float(env, "METRICS_QUERY_TIMEOUT_SECONDS", 10.0),
        query_queue_seconds=_float(env, "METRICS_QUERY_QUEUE_SECONDS", 2.0),
        workers=(os.cpu_count() or 1)
        if (env.get("METRICS_WORKERS") or "").lower() == "auto"
        else _int(env, "METRICS_WORKERS", 1, minimum=1),
    )
