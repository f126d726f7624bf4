"""Session records in Redis: keys, Lua scripts and codec. Nothing of Flask.

``session:<id>`` is a hash: one field per session key (``d:<key>``, msgpack)
plus metadata (``m:created``, ``m:seen``, times in ms). Writes go through Lua
scripts, so "only while the record still exists" is one atomic step; the
record's TTL is the idle timeout, never beyond the absolute timeout counted
from ``m:created``. Anything that is not this format reads as no record;
nothing is ever unpickled.

A record can move to a new id (rotation, one script: only while it exists).
The old id then names its successor for a while (``session:<old>:next``), so
deleting the old id, as a logout that still holds it does, deletes the
successor too: a rotation in flight cannot outlive a logout.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis import Redis
from redis.exceptions import ResponseError

DATA = "d:"
CREATED = "m:created"
SEEN = "m:seen"
ID_BYTES = 32
# secrets.token_urlsafe(32) gives 43 characters of the URL-safe alphabet.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")

# How long an old id names the id its record moved to: longer than any
# request sent with the old id can take to reach its save (nginx gives up on
# a response after 60 s, deploy/nginx/snippets/proxy.conf.j2).
SUCCESSOR_TTL_MS = 120_000

log = logging.getLogger(__name__)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# KEYS[1]: record key; for a move also KEYS[2], the new record key, and
# KEYS[3], the old id's successor pointer. ARGV: must_exist ('1'/'0'), ttl_ms,
# the new id and the pointer's TTL (a move), n_set, then n_set field/value
# pairs, then the fields to delete. Returns 0 when the record had to exist but
# is gone (logged out, revoked or expired meanwhile). HSET comes first: under
# maxmemory Redis refuses a script's first growing write, and then nothing of
# it has happened.
WRITE_SCRIPT = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local n = tonumber(ARGV[5])
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n))
end
if #ARGV > 5 + 2 * n then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + 2 * n, #ARGV))
end
local record = KEYS[1]
if #KEYS == 3 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  record = KEYS[2]
end
redis.call('PEXPIRE', record, ARGV[2])
return 1
"""

# Note when the record was last seen and renew its idle timeout, but never
# recreate a record that is gone.
TOUCH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'm:seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class UnknownFormat(ValueError):
    """The stored value was not written by this store."""


@dataclass(frozen=True)
class Record:
    created_ms: int
    seen_ms: int
    data: dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


class SessionStore:
    """Session records under ``key_prefix + id`` with idle and absolute timeouts."""

    def __init__(self, client: Redis, idle_timeout: int, absolute_timeout: int,
                 key_prefix: str = "session:"):
        self.client = client
        self.idle_ms = idle_timeout * 1000
        self.absolute_ms = absolute_timeout * 1000
        self.key_prefix = key_prefix
        self._write = client.register_script(WRITE_SCRIPT)
        self._touch = client.register_script(TOUCH_SCRIPT)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(ID_BYTES)

    @staticmethod
    def is_id(value: str) -> bool:
        """Whether value has the shape of an id this store hands out."""
        return bool(ID_PATTERN.fullmatch(value))

    def key(self, sid: str) -> str:
        return self.key_prefix + sid

    def ttl_ms(self, created_ms: int | None) -> int:
        """The idle timeout, capped by what is left of the absolute timeout."""
        now = now_ms()
        remaining = (created_ms or now) + self.absolute_ms - now
        return max(1, min(self.idle_ms, remaining))

    def peek(self, sid: str) -> Record | None:
        """A live record, without renewing its idle timeout."""
        try:
            raw = self.client.hgetall(self.key(sid))
        except ResponseError:
            # WRONGTYPE: something else wrote a plain string (a pickle, say)
            # under a session key. Never decode it.
            log.warning("session key of foreign type ignored")
            return None
        if not raw:
            return None
        try:
            found = decode(raw)
        except UnknownFormat as exc:
            log.warning("session data in an unknown format ignored: %s", exc)
            return None
        if now_ms() - found.created_ms >= self.absolute_ms:
            self.delete(sid)
            return None
        return found

    def successor_key(self, sid: str) -> str:
        return self.key(sid) + ":next"

    def write(self, sid: str, created_ms: int, values: dict[str, Any],
              removed: Iterable[str] = (), *, must_exist: bool,
              moved_from: str | None = None) -> bool:
        """Set values and remove keys; False if the record had to exist and is gone.

        A new record (must_exist=False) gets ``created_ms`` as its creation
        time. With ``moved_from`` the record under that id moves to ``sid``
        (keeping its creation time), but only if it still exists."""
        keys = [self.key(sid)]
        if moved_from is not None:
            keys = [self.key(moved_from), self.key(sid), self.successor_key(moved_from)]
            must_exist = True
        pairs: list[Any] = [SEEN, now_ms()]
        if not must_exist:
            pairs += [CREATED, created_ms]
        for name, value in values.items():
            pairs += [DATA + name, _encode(value)]
        ttl = self.ttl_ms(created_ms)
        args = ["1" if must_exist else "0", ttl, sid, min(ttl, SUCCESSOR_TTL_MS), len(pairs) // 2]
        args += pairs + [DATA + name for name in removed]
        return bool(self._write(keys=keys, args=args))

    def touch(self, sid: str, created_ms: int) -> bool:
        """Note the record as seen now and renew its idle timeout; False if gone."""
        return bool(self._touch(keys=[self.key(sid)], args=[now_ms(), self.ttl_ms(created_ms)]))

    def delete(self, sid: str) -> None:
        """Delete the record, and whatever record it moved to meanwhile."""
        while sid:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(self.key(sid))
                pipe.getdel(self.successor_key(sid))
                _, successor = pipe.execute()
            sid = successor.decode() if successor else None


def decode(raw: dict[bytes, bytes]) -> Record:
    """A record from the hash's fields; UnknownFormat for anything else."""
    data = {}
    meta = {}
    try:
        for field, value in raw.items():
            name = field.decode()
            if name in (CREATED, SEEN):
                meta[name] = int(value)
            elif name.startswith(DATA):
                data[name[len(DATA):]] = _decode(value)
            else:
                raise UnknownFormat(f"unexpected field {name[:40]!r}")
    except (UnicodeDecodeError, ValueError, msgspec.DecodeError) as exc:
        raise UnknownFormat(str(exc)) from None
    if CREATED not in meta:
        raise UnknownFormat("no creation time")
    created = meta[CREATED]
    return Record(created, meta.get(SEEN, created), data)
