"""HTTP basic auth for the query API: plain password (constant-time) or argon2id hash.

argon2 verification is deliberately slow, so it runs in a thread and a successful
(user, password) pair is remembered by its SHA-256 for a while: repeated requests with
the same credentials cost one hash, not one argon2 run.
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

from app.errors import Unauthorized

_hasher = PasswordHasher()
CACHE_SECONDS = 300.0


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def parse_header(value: str | None) -> tuple[str, str]:
    if not value or not value.lower().startswith("basic "):
        raise Unauthorized("authentication required")
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed basic credentials")
    return user, password


class BasicAuth:
    def __init__(self, user: str, password: str | None, password_hash: str | None) -> None:
        if password is None and password_hash is None:
            raise ValueError("either a password or a password hash is required")
        self._user = user.encode()
        self._password = password.encode() if password is not None else None
        self._hash = password_hash
        self._verified: dict[bytes, float] = {}

    async def check(self, header: str | None) -> None:
        user, password = parse_header(header)
        user_ok = hmac.compare_digest(user.encode(), self._user)
        if self._password is not None:
            ok = hmac.compare_digest(password.encode(), self._password)
        else:
            ok = await self._verify_hash(password)
        if not (user_ok and ok):
            raise Unauthorized("wrong user or password")

    async def _verify_hash(self, password: str) -> bool:
        assert self._hash is not None
        digest = hashlib.sha256(password.encode()).digest()
        now = time.monotonic()
        expiry = self._verified.get(digest)
        if expiry is not None and expiry > now:
            return True
        ok = await asyncio.to_thread(self._argon2, password)
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
