"""HTTP basic auth for the query API: plain password (constant-time) or argon2id hash.

argon2 verification is deliberately slow, so it runs in a thread and a successful
(user, password) pair is remembered by its SHA-256 for a while: repeated requests with
the same credentials cost one hash, not one argon2 run.

Guessing is bounded: at most `max_checks` argon2 runs at once (each takes 64 MiB and
most of a core), a few more may wait, anything beyond gets 429; every wrong password is
answered after a delay that grows with recent failures (up to 2 s), which costs the
server nothing but slows a guesser down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.errors import TooManyRequests, Unauthorized

_hasher = PasswordHasher()
CACHE_SECONDS = 300.0
WAITING_PER_CHECK = 4  # verifications that may queue behind each running one
FAILURE_WINDOW_SECONDS = 60.0
MAX_FAILURE_DELAY = 2.0


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def parse_header(value: str | None) -> tuple[str, str]:
    if not value or not value.lower().startswith("basic "):
        raise Unauthorized("authentication required")
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # incl. non-ASCII text and bad UTF-8
        raise Unauthorized("malformed basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed basic credentials")
    return user, password


class BasicAuth:
    def __init__(
        self, user: str, password: str | None, password_hash: str | None, max_checks: int = 2
    ) -> None:
        if password is None and password_hash is None:
            raise ValueError("either a password or a password hash is required")
        self._user = user.encode()
        self._password = password.encode() if password is not None else None
        self._hash = password_hash
        self._verified: dict[bytes, float] = {}
        self._checks = asyncio.Semaphore(max_checks)
        self._max_waiting = max_checks * WAITING_PER_CHECK
        self._waiting = 0
        self._failures: list[float] = []

    async def check(self, header: str | None) -> None:
        user, password = parse_header(header)
        user_ok = hmac.compare_digest(user.encode(), self._user)
        if self._password is not None:
            ok = hmac.compare_digest(password.encode(), self._password)
        else:
            ok = await self._verify_hash(password)
        if not (user_ok and ok):
            await asyncio.sleep(self._failure_delay())
            raise Unauthorized("wrong user or password")

    def _failure_delay(self) -> float:
        """Record a failure; the delay is 0.1 s per failure in the last minute, up to 2 s."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if t > now - FAILURE_WINDOW_SECONDS]
        self._failures = self._failures[-100:] + [now]
        return min(MAX_FAILURE_DELAY, 0.1 * len(self._failures))

    async def _verify_hash(self, password: str) -> bool:
        assert self._hash is not None
        digest = hashlib.sha256(password.encode()).digest()
        now = time.monotonic()
        expiry = self._verified.get(digest)
        if expiry is not None and expiry > now:
            return True
        if self._waiting >= self._max_waiting:
            raise TooManyRequests("too many authentication attempts at once")
        self._waiting += 1
        try:
            async with self._checks:
                ok = await asyncio.to_thread(self._argon2, password)
        finally:
            self._waiting -= 1
        if ok:
            if len(self._verified) > 64:
                self._verified.clear()
            self._verified[digest] = now + CACHE_SECONDS
        return ok

    def _argon2(self, password: str) -> bool:
        assert self._hash is not None
        try:
            return _hasher.verify(self._hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
