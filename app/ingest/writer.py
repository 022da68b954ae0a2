"""Group commit: batches writes from every connection into one transaction per flush.

A channel submits the rows an event produced with a callback; the writer calls it once
the transaction holding those rows has committed (with None), or has failed (with a reason
a client may read). Throughput comes from batching: one commit acknowledges every event
in the batch, and no future, task or loop turn is spent per event.

The writer remembers what it committed of each live session (`session_store.Written`), so
a batch is written without reading its sessions back; after any failure the sessions of
that batch are read from the database again.

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
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from app.model.rows import Op, Outcome, StaleState, VideoIds, Written
from app.storage import db, failures, rollups, session_store

log = logging.getLogger("vidmetrics.writer")

FLUSHES = Counter("vidmetrics_writer_flushes_total", "Transactions committed by the writer")
FLUSH_FAILURES = Counter("vidmetrics_writer_failures_total", "Writer transactions that failed")
ROWS = Counter("vidmetrics_writer_ops_total", "Rows written by the writer")
FLUSH_SECONDS = Histogram("vidmetrics_writer_flush_seconds", "Time to write and commit a batch")
BATCH_ROWS = Histogram(
    "vidmetrics_writer_batch_rows",
    "Rows per committed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
)
QUEUE_ROWS = Gauge("vidmetrics_writer_queue_rows", "Rows waiting for the writer")
REFUSED_MEMBERS = Counter(
    "vidmetrics_writer_refused_total",
    "Events the database refused for their data (isolated from the batch)",
)

TRANSACTION_TIMEOUT = 10.0
FAILING_SECONDS = 10.0
# Refusals caused by what was written, not by the database being unreachable: the batch
# is retried member by member. Every database call below runs in
# failures.translated(encoding=True), so these are storage's errors (a TimeoutError is
# also asyncio.wait_for's deadline for a transaction).
DATA_ERRORS = (failures.ValueRefused,)
UNAVAILABLE_ERRORS = (failures.Unavailable, TimeoutError)
# called once per submission: None when committed, else a reason a client may read
Done = Callable[[str | None], None]
Batch = list[tuple[list[Op], Done]]


class _Flight:
    """One batch in the writer's pipeline, as the batches around it see it."""

    __slots__ = ("may_follow", "executed", "first", "released", "done", "next", "committing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.may_follow: asyncio.Future[None] = loop.create_future()  # next may start
        # its statement is done (or will not be sent): the next may use the database
        self.executed: asyncio.Future[None] = loop.create_future()
        self.first: asyncio.Future[bool] = loop.create_future()  # committed on first try
        self.released: asyncio.Future[None] = loop.create_future()  # first try over
        self.done: asyncio.Future[None] = loop.create_future()  # finished, however
        self.next: _Flight | None = None
        self.committing = False


class WriteFailed(Exception):
    """The batch holding a write did not commit; the reason is safe to show a client."""


class Writer:
    def __init__(
        self,
        pool: db.Pool,
        *,
        flush_interval: float,
        max_rows: int,
        outbox: bool = False,
        shards: tuple[int, int] | None = None,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._flush_interval = flush_interval
        self._max_rows = max_rows
        self._pending: deque[tuple[list[Op], Done]] = deque()
        self._pending_rows = 0
        self._first_at = 0.0  # when the oldest pending submission came
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flights: set[asyncio.Task[None]] = set()  # batches being written (held)
        self._closing = False
        self._videos = VideoIds()
        self._written = Written()
        # this process's two rollup shards (see _speculate, rollups.shard_pair)
        self._shards = shards or rollups.shard_pair()
        self._turn = 0
        self._ids: range = range(0)
        self._id_pos = 0
        self._next_ids: range | None = None  # fetched ahead
        self._id_task: asyncio.Task[None] | None = None
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
    def submit(self, ops: list[Op], done: Done) -> None:
        """Queue rows; `done` is called once they are committed (None) or have failed (the
        reason). It runs in the writer's task: it must not block nor raise."""
        if self._closing and self._task is None:
            done("server is shutting down")
            return
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append((ops, done))
        self._pending_rows += len(ops)
        self._wakeup.set()

    def write(self, ops: list[Op]) -> asyncio.Future[None]:
        """submit() as a future: resolves once committed, or fails with WriteFailed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(reason: str | None) -> None:
            if future.done():
                return
            if reason is None:
                future.set_result(None)
            else:
                future.set_exception(WriteFailed(reason))

        self.submit(ops, done)
        return future

    def take_session_id(self) -> int | None:
        """A fresh session id, or None when this process has none at hand (then await
        new_session_id). Ids come in blocks; the next block is fetched in the background
        when a quarter of the current one is left, so a socket seldom waits."""
        if self._id_pos >= len(self._ids):
            self._refill()
            return None
        value = self._ids[self._id_pos]
        self._id_pos += 1
        if len(self._ids) - self._id_pos < len(self._ids) // 4:
            self._refill()
        return value

    async def new_session_id(self) -> int:
        while True:
            await self.new_session_id_ready()
            value = self.take_session_id()
            if value is not None:
                return value

    async def new_session_id_ready(self) -> None:
        """Return once take_session_id has an id to give; WriteFailed if the database
        cannot give a block."""
        while self._id_pos >= len(self._ids):
            self._refill()
            if self._id_pos < len(self._ids):
                return
            assert self._id_task is not None
            await asyncio.shield(self._id_task)

    def _refill(self) -> None:
        if self._next_ids is not None:
            if self._id_pos >= len(self._ids):
                self._ids, self._id_pos, self._next_ids = self._next_ids, 0, None
            return
        if self._id_task is None or self._id_task.done():
            self._id_task = asyncio.get_running_loop().create_task(self._fetch_ids())
            # a failure reaches whoever awaits it; nobody need be
            self._id_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _fetch_ids(self) -> None:
        try:
            with failures.translated():
                block = await session_store.reserve_session_ids(self._pool)
        except failures.StorageError as exc:
            raise WriteFailed("database unavailable") from exc
        if self._id_pos >= len(self._ids):
            self._ids, self._id_pos = block, 0
        else:
            self._next_ids = block

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
        last: _Flight | None = None  # the batch written most recently (see _pipelined)
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    if last is not None:
                        await last.done
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # let a batch gather for the flush interval since its first submission (rows
            # that waited while the last batch was written go at once), unless it is
            # already big or we are draining
            wait = self._first_at + self._flush_interval - time.monotonic()
            if wait > 0 and self._pending_rows < self._max_rows and not self._closing:
                await asyncio.sleep(wait)
            flight = _Flight(loop)
            if last is not None:
                last.next = flight
            task = loop.create_task(self._pipelined(self._take(), last, flight))
            self._flights.add(task)
            task.add_done_callback(self._flights.discard)
            await flight.may_follow
            if last is not None:  # a batch computing, one sending, no more (connections)
                await last.executed
            last = flight

    def _take(self) -> Batch:
        batch: Batch = []
        rows = 0
        while self._pending and rows < self._max_rows:
            ops, done = self._pending.popleft()
            batch.append((ops, done))
            rows += len(ops)
        self._pending_rows -= rows
        self._first_at = time.monotonic()  # what is left waited long enough already
        return batch

    async def _pipelined(self, batch: Batch, before: _Flight | None, flight: _Flight) -> None:
        """Write a batch on the states the batch before it has computed, while that one
        executes and commits; commit once that one has committed. The next batch may start
        as soon as this one's writes are computed (`may_follow`), before they are sent.

        Batches take locks one at a time, in order: a batch reads and sends its writes
        only once the statement of the one before is done (`executed`), so a lock it waits
        for is held by an earlier batch, which never waits for it. A batch commits only if
        the one before committed on its first try: then every state it built on is
        stored. Any failure instead ends the first try of this batch and of those after
        it (each rolls back on seeing `first` False, and says so in `released`), and the
        batch is written again alone, from the stored rows, once the one before has
        finished — unless the failure was the commit itself, whose outcome is then
        unknown: it is reported failed, never written twice. Acknowledgements keep
        commit order."""
        ops = [op for ops, _ in batch for op in ops]
        if before is not None and before.done.done():
            before = None  # over (however): its states are the stored ones, its locks gone
        try:
            if before is not None and before.first.done() and not before.first.result():
                # the batch before has failed already: nothing to build on, no first try
                flight.first.set_result(False)
                flight.executed.set_result(None)
                flight.released.set_result(None)
                await before.done
                self._written.forget(session_store.session_ids(ops))
                return await self._flush(batch, ops)
            started = time.perf_counter()
            error: Exception | None = None
            try:
                committed = await asyncio.wait_for(
                    self._speculate(ops, before, flight), TRANSACTION_TIMEOUT
                )
            except Exception as exc:  # noqa: BLE001 - every failure goes the careful way
                committed, error = False, exc
            if committed:
                self._failed_at = None
                FLUSHES.inc()
                ROWS.inc(len(ops))
                FLUSH_SECONDS.observe(time.perf_counter() - started)
                BATCH_ROWS.observe(len(ops))
                self._resolve(batch, {})
                flight.first.set_result(True)  # after the replies: the next one's follow
                return
            await self._after_first_try(batch, ops, before, flight, error)
        finally:
            if not flight.first.done():
                flight.first.set_result(False)
            for future in (flight.may_follow, flight.executed, flight.released):
                if not future.done():
                    future.set_result(None)
            flight.done.set_result(None)

    async def _after_first_try(
        self,
        batch: Batch,
        ops: list[Op],
        before: _Flight | None,
        flight: _Flight,
        error: Exception | None,
    ) -> None:
        """A first try that did not commit: end the first tries after it, then write the
        batch again alone — unless COMMIT itself failed (it may have happened)."""
        self._written.forget(session_store.session_ids(ops))
        for future in (flight.executed, flight.released):
            if not future.done():
                future.set_result(None)
        flight.first.set_result(False)
        if flight.committing:
            FLUSH_FAILURES.inc()
            self._failed_at = time.monotonic()
            reason = failures.cause_name(error) if error else "?"
            log.warning("commit of %d rows failed: %s", len(ops), reason)
            self._resolve(batch, {i: "database unavailable" for i in range(len(batch))})
            return
        if error is not None:
            log.debug("pipelined write failed (%r); writing again alone", error)
        later = flight.next  # batches after this one end their first tries
        while later is not None:
            await later.released
            later = later.next
        if before is not None:
            await before.done
        await self._flush(batch, ops)

    async def _speculate(self, ops: list[Op], before: _Flight | None, flight: _Flight) -> bool:
        """The first try of _pipelined: True when committed, False when the batch before
        failed (rolled back here, nothing else done); raises on any failure of its own."""
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                # consecutive batches add to rollup rows of two shards in turn, so this
                # one does not wait for the rows the batch before holds until its commit
                self._turn ^= 1
                # computed beside the statement of the batch before; but what this one
                # reads and writes waits until that statement is done (one batch at a
                # time takes locks, in batch order)
                ready = before.executed if before is not None else None
                prepared = await session_store.prepare_batch(
                    conn,
                    ops,
                    self._videos,
                    self._outbox,
                    self._written,
                    shard=self._shards[self._turn],
                    ready=ready,
                )
                # the next batch builds on these states while this one is sent
                self._written.apply(prepared.outcome.sessions)
                flight.may_follow.set_result(None)
                if ready is not None:
                    await ready
                try:
                    await session_store.execute_batch(conn, prepared)
                finally:
                    flight.executed.set_result(None)
                if before is not None and not await before.first:
                    await transaction.rollback()
                    return False
            except BaseException:
                await transaction.rollback()
                raise
            flight.committing = True
            await transaction.commit()
        self._videos.update(prepared.outcome.videos)
        flight.released.set_result(None)
        return True

    async def _flush(self, batch: Batch, all_ops: list[Op]) -> None:
        """Write a batch on its own: a refused batch member by member, any failure
        reported to its members."""
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(self._write(all_ops), TRANSACTION_TIMEOUT)
            failed: dict[int, str] = {}
        except DATA_ERRORS as exc:
            log.warning(
                "batch of %d rows refused (%s); writing its %d members one by one",
                len(all_ops),
                failures.cause_name(exc),
                len(batch),
            )
            self._written.forget(session_store.session_ids(all_ops))
            try:
                outcome, failed = await asyncio.wait_for(
                    self._write_each(batch), TRANSACTION_TIMEOUT
                )
            except UNAVAILABLE_ERRORS as exc2:
                return await self._unavailable(batch, all_ops, exc2)
        except UNAVAILABLE_ERRORS as exc:
            return await self._unavailable(batch, all_ops, exc)
        except Exception:  # a bug: fail the batch loudly, keep the writer alive
            FLUSH_FAILURES.inc()
            log.exception("unexpected error writing a batch")
            self._written.forget(session_store.session_ids(all_ops))
            self._resolve(batch, {i: "internal error" for i in range(len(batch))})
            return
        self._failed_at = None
        self._videos.update(outcome.videos)
        self._written.apply(outcome.sessions)
        FLUSHES.inc()
        ROWS.inc(len(all_ops))
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        BATCH_ROWS.observe(len(all_ops))
        self._resolve(batch, failed)

    @staticmethod
    def _resolve(batch: Batch, failed: dict[int, str]) -> None:
        for index, (_, done) in enumerate(batch):
            try:
                done(failed.get(index))
            except Exception:  # one caller's bug must not cost the others their replies
                log.exception("a write's completion callback failed")

    async def _unavailable(self, batch: Batch, ops: list[Op], exc: BaseException) -> None:
        FLUSH_FAILURES.inc()
        self._failed_at = time.monotonic()
        # the commit's fate may be unknown (a timeout, a lost connection): read these
        # sessions back before writing them again
        self._written.forget(session_store.session_ids(ops))
        log.warning("write of %d rows failed: %s", len(ops), failures.cause_name(exc))
        self._resolve(batch, {i: "database unavailable" for i in range(len(batch))})
        # back off a little so a dead database is not hammered
        await asyncio.sleep(min(0.5, self._flush_interval * 20))

    async def _write(self, ops: list[Op]) -> Outcome:
        try:
            with failures.translated(encoding=True):
                async with self._pool.acquire() as conn, conn.transaction():
                    return await session_store.write_batch(
                        conn, ops, self._videos, self._outbox, self._written
                    )
        except StaleState as exc:  # rolled back; write it again from what is stored
            log.warning("%s; writing the batch again from the stored rows", exc)
            self._written.forget(session_store.session_ids(ops))
            with failures.translated(encoding=True):
                async with self._pool.acquire() as conn, conn.transaction():
                    return await session_store.write_batch(conn, ops, self._videos, self._outbox)

    async def _write_each(self, batch: Batch) -> tuple[Outcome, dict[int, str]]:
        """One transaction, one savepoint per member: commit the members the database
        accepts; return what they wrote and {member index: reason} for the others. (Each
        member reads its sessions back: an earlier member may have written them.)"""
        outcome = Outcome({}, {})
        failed: dict[int, str] = {}
        with failures.translated(encoding=True):
            async with self._pool.acquire() as conn, conn.transaction():
                for index, (ops, _) in enumerate(batch):
                    try:
                        with failures.translated(encoding=True):
                            async with conn.transaction():
                                got = await session_store.write_batch(
                                    conn, ops, self._videos, self._outbox
                                )
                    except DATA_ERRORS as exc:
                        REFUSED_MEMBERS.inc()
                        log.info("event refused by the database: %s", failures.cause_name(exc))
                        failed[index] = "refused by the database: a value cannot be stored"
                        continue
                    outcome.videos.update(got.videos)
                    outcome.sessions.update(got.sessions)
        return outcome, failed
