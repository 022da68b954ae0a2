"""Reads the environment once into a frozen Settings; everything else receives it.

One table: each field of Settings carries its default and, as metadata, the variable it is
read from and how its text is parsed and bounded (`_var`). `from_env` walks the fields;
an unset or empty variable leaves the default. Worker processes of `serve --workers N`
receive the parent's Settings whole (`to_json` / `from_json`), not the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson


class SettingsError(ValueError):
    """A configuration value is unusable; the message names the variable."""


Parse = Callable[[str, str], Any]  # (variable name, raw text) -> value, or SettingsError


def _integer(minimum: int = 0, maximum: int | None = None, scale: int = 1) -> Parse:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name} must be at most {maximum}, got {value}")
        return value * scale

    return parse


def _number(minimum: float = 0.0, zero: bool = False) -> Parse:
    """A number greater than `minimum` (or exactly 0, when `zero` allows it: "off")."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not (value > minimum or (zero and value == 0)):
            off = " (or 0: off)" if zero else ""
            raise SettingsError(f"{name} must be greater than {minimum}{off}, got {raw}")
        return value

    return parse


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(*choices: str) -> Parse:
    def parse(name: str, raw: str) -> str:
        if raw.lower() not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw.lower()

    return parse


def _prefixed(prefixes: tuple[str, ...], message: str) -> Parse:
    def parse(name: str, raw: str) -> str:
        if not raw.startswith(prefixes):
            raise SettingsError(f"{name} must {message}")
        return raw

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _workers(name: str, raw: str) -> int:
    if raw.lower() == "auto":
        return os.cpu_count() or 1
    return int(_integer(minimum=1)(name, raw))


def _var(default: Any, *names: str, parse: Parse = _text, factory: bool = False) -> Any:
    """A Settings field: its default (or default factory), the variables it is read from
    (the first that is set wins) and its parser."""
    meta = {"names": names, "parse": parse}
    if factory:
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str | None = _var(
        None,
        "DATABASE_URL",
        parse=_prefixed(("postgres://", "postgresql://"), "start with postgresql://"),
    )
    data_dir: Path = _var(Path(".vidmetrics"), "METRICS_DATA_DIR", parse=_path)
    host: str = _var("0.0.0.0", "HOST")
    port: int = _var(3000, "PORT", parse=_integer(0, 65535))
    auth_enabled: bool = _var(True, "METRICS_AUTH_ENABLED", parse=_boolean)
    user: str = _var("admin", "METRICS_USER")
    password: str | None = _var(None, "METRICS_PASSWORD")
    password_hash: str | None = _var(
        None,
        "METRICS_PASSWORD_HASH",
        parse=_prefixed(("$argon2id$",), "be an argon2id hash ($argon2id$...)"),
    )
    max_body_bytes: int = _var(1024 * 1024, "METRICS_MAX_BODY_BYTES", parse=_integer(1))
    # ingest limits
    max_frame_bytes: int = _var(64 * 1024, "METRICS_MAX_FRAME_BYTES", parse=_integer(256))
    max_metadata_bytes: int = _var(4096, "METRICS_MAX_METADATA_BYTES", parse=_integer(16))
    max_metadata_depth: int = _var(4, "METRICS_MAX_METADATA_DEPTH", parse=_integer(1))
    max_events_per_second: float = _var(50.0, "METRICS_MAX_EVENTS_PER_SECOND", parse=_number())
    max_sockets: int = _var(10_000, "METRICS_MAX_SOCKETS", parse=_integer(1))
    max_channels_per_socket: int = _var(16, "METRICS_MAX_CHANNELS_PER_SOCKET", parse=_integer(1))
    max_session_state_bytes: int = _var(
        128 * 1024 * 1024, "METRICS_MAX_SESSION_STATE_MB", parse=_integer(1, scale=1024 * 1024)
    )
    socket_idle_seconds: float = _var(120.0, "METRICS_SOCKET_IDLE_SECONDS", parse=_number())
    # websocket protocol pings (0: none; the idle timeout and the clients' heartbeats
    # already find dead peers, and pings to every socket at once cost latency)
    ws_ping_seconds: float = _var(0.0, "METRICS_WS_PING_SECONDS", parse=_number(zero=True))
    # HTTP connections (not websockets) and how long a request may take to arrive
    max_http_connections: int = _var(1000, "METRICS_MAX_HTTP_CONNECTIONS", parse=_integer(1))
    request_timeout_seconds: float = _var(15.0, "METRICS_REQUEST_TIMEOUT_SECONDS", parse=_number())
    max_buckets: int = _var(10_000, "METRICS_MAX_BUCKETS", parse=_integer(1))
    max_password_checks: int = _var(2, "METRICS_MAX_PASSWORD_CHECKS", parse=_integer(1))
    # writer (group commit)
    flush_interval_ms: float = _var(5.0, "METRICS_FLUSH_INTERVAL_MS", parse=_number())
    flush_max_rows: int = _var(2000, "METRICS_FLUSH_MAX_ROWS", parse=_integer(1))
    # retention (days; 0 = keep forever)
    retention_days: int = _var(0, "METRICS_RETENTION_DAYS", parse=_integer())
    raw_events_retention_days: int = _var(30, "METRICS_RAW_EVENTS_RETENTION_DAYS", parse=_integer())
    compress_after_days: int = _var(7, "METRICS_COMPRESS_AFTER_DAYS", parse=_integer(1))
    # presence
    watching_ttl_seconds: float = _var(30.0, "METRICS_WATCHING_TTL_SECONDS", parse=_number())
    key_refresh_seconds: float = _var(0.5, "METRICS_KEY_REFRESH_SECONDS", parse=_number())
    log_level: str = _var("info", "LOG_LEVEL", parse=_choice("debug", "info", "warning", "error"))
    log_format: str = _var(
        "text", "METRICS_LOG_FORMAT", "LOG_FORMAT", parse=_choice("text", "json")
    )
    # export webhook: ended sessions are posted here in batches (unset: no webhook)
    export_webhook: str | None = _var(
        None,
        "METRICS_EXPORT_WEBHOOK",
        parse=_prefixed(("http://", "https://"), "be an http:// or https:// URL"),
    )
    export_webhook_batch: int = _var(100, "METRICS_EXPORT_WEBHOOK_BATCH", parse=_integer(1))
    db_pool_size: int = _var(10, "METRICS_DB_POOL_SIZE", parse=_integer(2))
    # the query API's own connections (the writer's pool is never used by questions), how
    # long one statement of a question may run, and how long a question waits for one of
    # them before it is answered 503
    query_pool_size: int = _var(
        lambda: max(2, os.cpu_count() or 1),
        "METRICS_QUERY_POOL_SIZE",
        parse=_integer(1),
        factory=True,
    )
    query_timeout_seconds: float = _var(10.0, "METRICS_QUERY_TIMEOUT_SECONDS", parse=_number())
    query_queue_seconds: float = _var(2.0, "METRICS_QUERY_QUEUE_SECONDS", parse=_number())
    # server processes on one port ("auto": one per CPU)
    workers: int = _var(1, "METRICS_WORKERS", parse=_workers)

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    def to_json(self) -> str:
        """Everything, for a worker process (it holds the password: never log it)."""
        values = dataclasses.asdict(self)
        values["data_dir"] = str(self.data_dir)
        return orjson.dumps(values).decode()

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = orjson.loads(text)
        values["data_dir"] = Path(values["data_dir"])
        return cls(**values)


def variables() -> list[tuple[str, str, Any]]:
    """(variable, field, default) for every setting, in the table's order (for docs)."""
    out: list[tuple[str, str, Any]] = []
    for f in dataclasses.fields(Settings):
        factory = f.default_factory
        default = f.default if factory is dataclasses.MISSING else factory()
        out.extend((name, f.name, default) for name in f.metadata["names"])
    return out


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise SettingsError naming a bad variable."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        for name in f.metadata["names"]:
            raw = env.get(name)
            if raw:  # unset or empty: the default
                values[f.name] = f.metadata["parse"](name, raw)
                break
    return Settings(**values)
