"""A minimal Phoenix Channels v2 test client over a real websocket."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class Phx:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.refs = itertools.count(1)
        self.join_refs: dict[str, str] = {}
        self.inbox: list[list[Any]] = []

    @classmethod
    async def open(cls, url: str, user_agent: str = CHROME_UA) -> Phx:
        ws = await connect(
            url, user_agent_header=user_agent, compression=None, open_timeout=10, max_size=2**20
        )
        return cls(ws)

    async def close(self) -> None:
        await self.ws.close()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 10) -> list[Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def wait_ref(self, ref: str | None, timeout: float = 10) -> list[Any]:
        """The next frame whose ref is `ref` (others are kept in the inbox)."""
        for i, frame in enumerate(self.inbox):
            if frame[1] == ref:
                return self.inbox.pop(i)
        while True:
            frame = await self.recv(timeout)
            if frame[1] == ref:
                return frame
            self.inbox.append(frame)

    async def push(
        self, topic: str, event: str, payload: dict[str, Any], join_ref: str | None = None
    ) -> list[Any]:
        ref = str(next(self.refs))
        jr = join_ref if join_ref is not None else self.join_refs.get(topic)
        await self.ws.send(json.dumps([jr, ref, topic, event, payload]))
        return await self.wait_ref(ref)

    async def join(self, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
        ref = str(next(self.refs))
        self.join_refs[topic] = ref
        await self.ws.send(json.dumps([ref, ref, topic, "phx_join", payload]))
        reply = await self.wait_ref(ref)
        return reply[4]

    async def event(self, topic: str, **payload: Any) -> dict[str, Any]:
        reply = await self.push(topic, "event", payload)
        return reply[4]


def join_payload(
    key: str, video_id: str = "abc", url: str = "http://example.com/watch?x=1", **extra: Any
) -> dict[str, Any]:
    meta = {"video_id": video_id}
    return {"identifier": meta, "metadata": meta, "source_url": url, "key": key, **extra}
