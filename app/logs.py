"""Logging: one line per record on stderr, as text or JSON; uvicorn's per-connection lines
(which carry client addresses) never written."""

from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson

from app.settings import Settings


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class _PrivacyFilter(logging.Filter):
    """Drop uvicorn's per-connection lines: they carry the client address and the full
    socket URL (whose query string holds the page URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return '"WebSocket %s"' not in msg and msg not in ("connection open", "connection closed")


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    handler.addFilter(_PrivacyFilter())
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    if settings.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
