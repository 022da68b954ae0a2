"""Impressions, play rate and completion over a hand-computed scenario played through real
sockets: loads without a play, partial views, finishes, a seek past 75 %."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import AUTH, Server
from tests.phx import IPHONE_UA, Phx, join_payload
from tests.test_ingest_socket import new_key, topic

DURATION = 100


async def _viewer(
    server: Server, key: str, pushes: list[dict[str, object]], user_agent: str | None = None
) -> None:
    phx = await (Phx.open(server.ws(), user_agent) if user_agent else Phx.open(server.ws()))
    t = topic()
    assert (await phx.join(t, join_payload(key, video_id="kpi")))["status"] == "ok"
    for push in pushes:
        if "sleep" in push:
            await asyncio.sleep(float(push["sleep"]))  # type: ignore[arg-type]
            continue
        assert (await phx.event(t, duration=DURATION, **push))["status"] == "ok"
    await phx.close()


async def test_impressions_play_rate_and_completion(server: Server) -> None:
    key = new_key(server)
    play, pause = "play", "pause"
    # 1-2: loads that never play (impressions only)
    await _viewer(server, key, [])
    await _viewer(server, key, [{"name": "volumechange"}])
    # 3: watches 0-30 s (furthest 30 %), desktop
    await _viewer(
        server, key, [{"name": play, "from": 0}, {"sleep": 1.6}, {"name": pause, "to": 30}]
    )
    # 4: 0-10, then seeks to 80 and watches 80-85 (furthest 85 %: seeking ahead counts)
    await _viewer(
        server,
        key,
        [
            {"name": play, "from": 0},
            {"sleep": 0.4},
            {"name": pause, "to": 10},
            {"name": play, "from": 80},
            {"name": pause, "to": 85},
        ],
    )
    # 5: plays to the end and the player says `ended` (mobile)
    await _viewer(
        server,
        key,
        [{"name": play, "from": 90}, {"sleep": 0.3}, {"name": "ended", "to": 100}],
        IPHONE_UA,
    )
    # 6: 0.5 s only: below the default 1-second threshold, so not a view
    await _viewer(server, key, [{"name": play, "from": 0}, {"name": pause, "to": 0.5}])

    body = {"query": {"key": key}, "interval": "1 year", "timeframe": "1 day"}
    plays = httpx.post(f"{server.http}/api/v1/plays", auth=AUTH, json=body).json()["views"]
    assert len(plays) == 1
    assert plays[0]["impressions"] == 6
    assert plays[0]["views"] == 3
    assert plays[0]["play_rate"] == 0.5
    every = httpx.post(
        f"{server.http}/api/v1/plays", auth=AUTH, json={**body, "minimum_watch_seconds": 0}
    ).json()["views"][0]
    assert every["views"] == 4 and every["play_rate"] == round(4 / 6, 4)

    answer = httpx.post(f"{server.http}/api/v1/completion", auth=AUTH, json=body).json()
    (bucket,) = answer["completion"]
    assert bucket["views"] == 3 and bucket["views_with_duration"] == 3
    assert bucket["reached"] == {"25": 3, "50": 2, "75": 2, "95": 1, "100": 1}
    assert bucket["finishes"] == 1
    assert bucket["finish_rate"] == round(1 / 3, 4)
    # distinct seconds watched / duration: 30 %, 15 %, 10 % -> 18.33 %
    assert bucket["average_percent_watched"] == pytest.approx(
        100 * (0.30 + 0.15 + 0.10) / 3, abs=0.01
    )
    assert bucket["device_type"]["mobile"]["finishes"] == 1
    assert bucket["device_type"]["mobile"]["views"] == 1
    assert bucket["device_type"]["desktop"]["views"] == 2
    assert bucket["device_type"]["desktop"]["reached"]["75"] == 1
    assert bucket["device_type"]["tablet"] == {
        "views": 0,
        "views_with_duration": 0,
        "reached": {"25": 0, "50": 0, "75": 0, "95": 0, "100": 0},
        "finishes": 0,
        "finish_rate": None,
        "average_percent_watched": None,
    }


async def test_sessions_without_duration_are_left_out_of_percentages(server: Server) -> None:
    key = new_key(server)
    phx = await Phx.open(server.ws())
    t = topic()
    await phx.join(t, join_payload(key, video_id="live"))
    assert (await phx.event(t, name="play", duration="Infinity", **{"from": 0}))["status"] == "ok"
    await asyncio.sleep(1.2)
    assert (await phx.event(t, name="pause", to=1.2))["status"] == "ok"
    await phx.close()
    answer = httpx.post(
        f"{server.http}/api/v1/completion",
        auth=AUTH,
        json={"query": {"key": key}, "timeframe": "1 day"},
    ).json()
    (bucket,) = answer["completion"]
    assert bucket["views"] == 1 and bucket["views_with_duration"] == 0
    assert bucket["average_percent_watched"] is None and bucket["finish_rate"] is None
