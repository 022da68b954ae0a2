"""Group commit: batches writes from every connection into one transaction per flush.

A channel submits the rows an event produced and awaits the returned future; it resolves
only after the transaction holding those rows has committed (or fails with WriteFailed).
Throughput comes from batching: one commit acknowledges every event in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import asyncpg
from prometheus_client import Counter, Histogram

from app.storage import sessions as session_sql
from app.storage.sessions import Op, VideoIds

log = logging.getLogger("vidmetrics.writer")

FLUSHES = Counter("vidmetrics_writer_flushes_total", "Transactions committed by the writer")
FLUSH_FAILURES = Counter("vidmetrics_writer_failures_total", "Writer transactions that failed")
ROWS = Counter("vidmetrics_writer_ops_total", "Rows written by the writer")
FLUSH_SECONDS = Histogram("vidmetrics_writer_flush_seconds", "Time to write and commit a batch")

TRANSACTION_TIMEOUT = 10.0


class WriteFailed(Exception):
    """The batch holding a write did not commit; the reason is safe to show a client."""


class Writer:
    def __init__(self, pool: asyncpg.Pool, *, flush_interval: float, max_rows: int) -> None:
        self._pool = pool
        self._flush_interval = flush_interval
        self._max_rows = max_rows
        self._pending: deque[tuple[list[Op], asyncio.Future[None]]] = deque()
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._videos = VideoIds()
        self._ids: range = range(0)
        self._id_pos = 0
        self._id_lock = asyncio.Lock()

    # -- producers ---------------------------------------------------------------------
    def submit(self, ops: list[Op]) -> asyncio.Future[None]:
        """Queue rows; the future resolves once they are committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closing and self._task is None:
            future.set_exception(WriteFailed("server is shutting down"))
            return future
        self._pending.append((ops, future))
        self._pending_rows += len(ops)
        self._wakeup.set()
        return future

    async def new_session_id(self) -> int:
        async with self._id_lock:
            if self._id_pos >= len(self._ids):
                try:
                    self._ids = await session_sql.reserve_session_ids(self._pool)
                except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                    raise WriteFailed("database unavailable") from exc
                self._id_pos = 0
            value = self._ids[self._id_pos]
            self._id_pos += 1
            return value

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="writer")

    async def stop(self) -> None:
        """Flush everything queued so far, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # let a batch gather, unless it is already big or we are draining
            if self._pending_rows < self._max_rows and not self._closing:
                await asyncio.sleep(self._flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        batch: list[tuple[list[Op], asyncio.Future[None]]] = []
        rows = 0
        while self._pending and rows < self._max_rows:
            ops, future = self._pending.popleft()
            batch.append((ops, future))
            rows += len(ops)
        self._pending_rows -= rows
        all_ops = [op for ops, _ in batch for op in ops]
        started = time.perf_counter()
        try:
            found = await asyncio.wait_for(self._write(all_ops), TRANSACTION_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            FLUSH_FAILURES.inc()
            log.warning("write of %d rows failed: %s", len(all_ops), type(exc).__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(WriteFailed("database unavailable"))
            # back off a little so a dead database is not hammered
            await asyncio.sleep(min(0.5, self._flush_interval * 20))
            return
        except Exception:  # a bug: fail the batch loudly, keep the writer alive
            FLUSH_FAILURES.inc()
            log.exception("unexpected error writing a batch")
            for _, future in batch:
                if not future.done():
                    future.set_exception(WriteFailed("internal error"))
            return
        self._videos.update(found)
        FLUSHES.inc()
        ROWS.inc(len(all_ops))
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _write(self, ops: list[Op]) -> dict[tuple[str, str], int]:
        async with self._pool.acquire() as conn, conn.transaction():
            return await session_sql.write_batch(conn, ops, self._videos)
