"""What an operator sees: the metrics named in docs/operations.md, structured logs, and
the first start's ready line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.conftest import AUTH, ROOT, Server, start_server
from tests.phx import Phx, join_payload
from tests.test_ingest_socket import new_key, topic


async def test_metrics_cover_what_the_docs_name(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key))
    await phx.event(t, name="play", **{"from": 0})
    await phx.event(t, name="pause", to=0.5)
    httpx.post(f"{server.http}/api/v1/plays", auth=AUTH, json={"query": {"key": key}})
    text = httpx.get(f"{server.http}/metrics", auth=AUTH).text
    await phx.close()
    documented = set(
        re.findall(r"`(vidmetrics_[a-z_]+)", (ROOT / "docs" / "operations.md").read_text())
    )
    assert len(documented) >= 15
    for name in documented:
        assert name in text, name
    assert 'vidmetrics_events_total{outcome="acked"}' in text
    assert 'vidmetrics_query_seconds_count{endpoint="plays"}' in text


def test_json_logs_and_the_ready_line(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"METRICS_LOG_FORMAT": "json", "METRICS_PASSWORD": ""})
    try:
        assert httpx.get(f"{srv.http}/healthz").status_code == 200
    finally:
        srv.stop()
    lines = [json.loads(line) for line in srv.output().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    ready = next(e["message"] for e in lines if "vidmetrics on http://" in e["message"])
    assert "admin-password" in ready and "admin login admin /" in ready
    assert (tmp_path / "data" / "admin-password").stat().st_mode & 0o077 == 0
