"""The export webhook (METRICS_EXPORT_WEBHOOK): ended sessions are posted in batches, at
least once, from a durable outbox.

The writer puts a session into `export_outbox` in the same transaction as its final rows,
so nothing acknowledged is lost for the webhook, whatever happens to the process. Each
process runs one Sender: it claims due entries (`FOR UPDATE SKIP LOCKED`, so several
processes never post the same entry at once), posts them as

    POST <url>   Content-Type: application/json   Idempotency-Key: <batch key>
    {"sessions": [{"idempotency_key": "session-<id>-<start µs>", ...summary...}, ...]}

and deletes them on any 2xx. Anything else (an error status, a timeout, a refused
connection) leaves them for a retry with exponential back-off per entry (1 s, 2 s, 4 s ...
at most 10 min). A receiver de-duplicates on each session's `idempotency_key`. Ingest never
waits for the webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx
import orjson
from prometheus_client import Counter, Gauge

from app.storage import db, failures, summaries

log = logging.getLogger("vidmetrics.webhook")

DELIVERED = Counter("vidmetrics_webhook_sessions_total", "Ended sessions posted to the webhook")
FAILED = Counter("vidmetrics_webhook_failures_total", "Webhook posts that failed (retried)")
PENDING = Gauge("vidmetrics_webhook_pending", "Ended sessions waiting for the webhook")


class Sender:
    def __init__(
        self,
        pool: db.Pool,
        url: str,
        *,
        batch: int = 100,
        idle_seconds: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._pool = pool
        self._url = url
        self._batch = batch
        self._idle = idle_seconds
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": "vidmetrics-webhook"}
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        rounds = 0
        while True:
            try:
                with failures.translated():
                    sent = await self.send_once()
                    rounds += 1
                    if rounds % 60 == 1:
                        async with self._pool.acquire() as conn:
                            await summaries.drop_orphans(conn)
                            PENDING.set(await summaries.pending(conn))
            except failures.StorageError as exc:
                log.warning("webhook round failed: %s", failures.cause_name(exc))
                sent = 0
            if sent < self._batch:
                await asyncio.sleep(self._idle)

    async def send_once(self) -> int:
        """Claim one batch of due sessions and post it; the number posted successfully."""
        async with self._pool.acquire() as conn, conn.transaction():
            due = await summaries.due_summaries(conn, self._batch)
            if not due:
                return 0
            ids = [s.session for s in due]
            body = orjson.dumps(
                {"sessions": [{"idempotency_key": s.idempotency_key, **s.to_dict()} for s in due]}
            )
            key = hashlib.sha256(",".join(s.idempotency_key for s in due).encode()).hexdigest()
            error = None
            try:
                response = await self._client.post(
                    self._url,
                    content=body,
                    headers={"Content-Type": "application/json", "Idempotency-Key": key},
                )
                if not 200 <= response.status_code < 300:
                    error = f"receiver answered {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}"
            if error is None:
                await summaries.delivered(conn, ids)
                DELIVERED.inc(len(ids))
                return len(ids)
            FAILED.inc()
            log.warning("webhook post of %d sessions failed (%s); will retry", len(ids), error)
            await summaries.retry_later(conn, ids, error)
            return 0
