"""Connection hygiene for uvicorn: reap slow or silent HTTP connections, cap how many are
open, and keep every cap below the process's file-descriptor limit; and garbage
collection tuned for a process holding thousands of sockets.

uvicorn closes idle keep-alive connections, but not one that never sends a complete
request: a silent TCP connection, half a header block, or a body that stops arriving
would otherwise hold a file descriptor for ever, and a thousand of them make the server
unreachable. Each connection gets one deadline for the whole request to arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

log = logging.getLogger("vidmetrics")
RESERVED_FDS = 64  # database pool, embedded PostgreSQL pipes, logs, listening socket


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools protocol with a request deadline and a connection cap."""

    request_timeout = 15.0
    max_connections = 11_000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) >= self.max_connections:
            transport.abort()  # over the cap: free the descriptor at once
            return
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._disarm()  # a websocket: its own protocol takes over

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if hasattr(self, "transport"):
            super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn should use, set to this server's limits. (A module-level
    class, so a worker process started by `serve --workers N` can be handed it; each worker
    calls this too, with the settings it reads from the environment.)"""
    GuardedHttpProtocol.request_timeout = settings.request_timeout_seconds
    GuardedHttpProtocol.max_connections = settings.max_sockets + settings.max_http_connections
    return GuardedHttpProtocol


def fit_to_fd_limit(settings: Settings) -> Settings:
    """Raise the soft RLIMIT_NOFILE as far as allowed; if the connection caps still do not
    fit, lower max_sockets (and say so) so the server never runs out of descriptors."""
    needed = settings.max_sockets + settings.max_http_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return settings
    sockets = soft - settings.max_http_connections - RESERVED_FDS
    if sockets < 1:
        http = max(1, soft // 2 - RESERVED_FDS)
        sockets = max(1, soft - http - RESERVED_FDS)
        settings = dataclasses.replace(settings, max_http_connections=http)
    log.warning(
        "file descriptor limit is %d: serving at most %d websockets and %d HTTP "
        "connections (raise `ulimit -n` for more)",
        soft,
        sockets,
        settings.max_http_connections,
    )
    return dataclasses.replace(settings, max_sockets=sockets)


# Collections: the youngest generation every 50,000 allocations (not 700), the middle one
# every 50 of those, the oldest every 100 of those. With 10,000 open sockets a full
# collection walks millions of objects and stops every socket for hundreds of
# milliseconds; at the default thresholds that happened every few seconds (ack p99 of
# 0.5-1 s at 2,000 events/s), now it is rare. Cycles are still collected.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Once the server has started: collect, freeze what exists (modules, settings, the
    pool: never garbage, so never walked again) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
