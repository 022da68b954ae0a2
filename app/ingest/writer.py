"""Group commit: batches writes from every connection into one transaction per flush.

A channel submits the rows an event produced and awaits the returned future; it resolves
only after the transaction holding those rows has committed (or fails with WriteFailed).
Throughput comes from batching: one commit acknowledges every event in the batch.

A batch that the database refuses for its *data* (a value it cannot store, a broken
constraint) is written again with each member in its own savepoint: the good members
commit, only the bad one fails with its reason. So no client's input can ever turn into
an outage for the other clients whose events share its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from app.storage import session_store
from app.storage.session_store import Op, VideoIds

log = logging.getLogger("vidmetrics.writer")

FLUSHES = Counter("vidmetrics_writer_flushes_total", "Transactions committed by the writer")
FLUSH_FAILURES = Counter("vidmetrics_writer_failures_total", "Writer transactions that failed")
ROWS = Counter("vidmetrics_writer_ops_total", "Rows written by the writer")
FLUSH_SECONDS = Histogram("vidmetrics_writer_flush_seconds", "Time to write and commit a batch")
BATCH_ROWS = Histogram("vidmetrics_writer_batch_rows", "Rows per committed batch",
                       buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000))
QUEUE_ROWS = Gauge("vidmetrics_writer_queue_rows", "Rows waiting for the writer")
REFUSED_MEMBERS = Counter("vidmetrics_writer_refused_total",
                          "Events the database refused for their data (isolated from the batch)")

TRANSACTION_TIMEOUT = 10.0
FAILING_SECONDS = 10.0
# Refusals caused by what was written, not by the database being unreachable: the batch
# is retried member by member. (Encoding errors surface as TypeError/ValueError.)
DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, TypeError,
               ValueError, OverflowError)
UNAVAILABLE_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
Batch = list[tuple[list[Op], "asyncio.Future[None]"]]


class WriteFailed(Exception):
    """The batch holding a write did not commit; the reason is safe to show a client."""


class Writer:
    def __init__(self, pool: asyncpg.Pool, *, flush_interval: float, max_rows: int,
                 outbox: bool = False) -> None:
        self._pool = pool
        self._outbox = outbox
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
        QUEUE_ROWS.set_function(lambda: self._pending_rows)
        # when the last commit failed for want of a database (None: it succeeded)
        self._failed_at: float | None = None

    @property
    def healthy(self) -> bool:
        """False while commits fail (a failure in the last FAILING_SECONDS with no success
        since), or if the writer task has died. Without new writes a failure ages out, so a
        process taken out of a load balancer is tried again."""
        if self._task is not None and self._task.done():
            return False
        return self._failed_at is None or time.monotonic() - self._failed_at > FAILING_SECONDS

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
                    self._ids = await session_store.reserve_session_ids(self._pool)
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
        batch: Batch = []
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
            failed: dict[int, str] = {}
        except DATA_ERRORS as exc:
            log.warning("batch of %d rows refused (%s); writing its %d members one by one",
                        len(all_ops), type(exc).__name__, len(batch))
            try:
                found, failed = await asyncio.wait_for(self._write_each(batch),
                                                       TRANSACTION_TIMEOUT)
            except UNAVAILABLE_ERRORS as exc2:
                return await self._unavailable(batch, len(all_ops), exc2)
        except UNAVAILABLE_ERRORS as exc:
            return await self._unavailable(batch, len(all_ops), exc)
        except Exception:  # a bug: fail the batch loudly, keep the writer alive
            FLUSH_FAILURES.inc()
            log.exception("unexpected error writing a batch")
            self._resolve(batch, {i: "internal error" for i in range(len(batch))})
            return
        self._failed_at = None
        self._videos.update(found)
        FLUSHES.inc()
        ROWS.inc(len(all_ops))
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        BATCH_ROWS.observe(len(all_ops))
        self._resolve(batch, failed)

    @staticmethod
    def _resolve(batch: Batch, failed: dict[int, str]) -> None:
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if index in failed:
                future.set_exception(WriteFailed(failed[index]))
            else:
                future.set_result(None)

    async def _unavailable(self, batch: Batch, rows: int, exc: BaseException) -> None:
        FLUSH_FAILURES.inc()
        self._failed_at = time.monotonic()
        log.warning("write of %d rows failed: %s", rows, type(exc).__name__)
        self._resolve(batch, {i: "database unavailable" for i in range(len(batch))})
        # back off a little so a dead database is not hammered
        await asyncio.sleep(min(0.5, self._flush_interval * 20))

    async def _write(self, ops: list[Op]) -> dict[tuple[str, str], int]:
        async with self._pool.acquire() as conn, conn.transaction():
            return await session_store.write_batch(conn, ops, self._videos, self._outbox)

    async def _write_each(self, batch: Batch) -> tuple[dict[tuple[str, str], int], dict[int, str]]:
        """One transaction, one savepoint per member: commit the members the database
        accepts; return the video ids found and {member index: reason} for the others."""
        found: dict[tuple[str, str], int] = {}
        failed: dict[int, str] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            for index, (ops, _) in enumerate(batch):
                try:
                    async with conn.transaction():
                        found.update(await session_store.write_batch(conn, ops, self._videos,
                                                                      self._outbox))
                except DATA_ERRORS as exc:
                    REFUSED_MEMBERS.inc()
                    log.info("event refused by the database: %s", type(exc).__name__)
                    failed[index] = "refused by the database: a value cannot be stored"
        return found, failed
