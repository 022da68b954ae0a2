"""`serve --workers 2`: two processes on one port, each with its own writer; session ids,
watching-now and key revocation stay correct across them."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx

from tests.conftest import AUTH, start_server
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, sessions_for, topic


async def test_two_workers_share_ids_presence_and_revocation(
    tmp_path: Path, database_url: str, conn: asyncpg.Connection
) -> None:
    srv = start_server(tmp_path, {"DATABASE_URL": database_url, "METRICS_WORKERS": "2"})
    try:
        key = new_key(srv)
        await asyncio.sleep(0.5)  # every worker re-reads keys every 0.2 s here
        clients = []
        for n in range(12):
            phx = await Phx.open(srv.ws())
            t = topic()
            assert (await phx.join(t, join_payload(key, video_id=f"w{n % 3}")))["status"] == "ok"
            assert (await phx.event(t, name="play", duration=60, **{"from": 0}))["status"] == "ok"
            clients.append((phx, t))
        pids = set(re.findall(r"Started server process \[(\d+)\]", srv.output()))
        assert len(pids) == 2, srv.output()[-2000:]
        watching = httpx.post(
            f"{srv.http}/api/v1/watching", auth=AUTH, json={"query": {"key": key}}
        ).json()
        assert watching == {"watching": 12}
        rows = await sessions_for(conn, key)
        assert len({r["id"] for r in rows}) == 12

        revoked = httpx.delete(f"{srv.http}/api/v1/keys/{quote(key, safe='')}", auth=AUTH)
        assert revoked.status_code == 200
        started = time.monotonic()
        for phx, t in clients:  # every channel, on either process, is closed
            while True:
                frame = await phx.recv(timeout=3)
                if frame[3] == "phx_close" and frame[2] == t:
                    break
        assert time.monotonic() - started < 3
        for phx, _ in clients:
            await phx.close()
        await asyncio.sleep(0.3)
    finally:
        assert srv.stop() == 0
