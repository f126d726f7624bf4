"""Server-side sessions in Redis, on Flask-Session's interface.

Flask-Session 0.8 stores the whole session as one blob, falls back to
``pickle.loads`` when decoding, rewrites the blob on every request and sends a
deletion cookie without ``Secure``. This store keeps Flask-Session's interface
and config names but changes what goes to Redis:

* ``session:<id>`` is a hash: one field per session key (``d:<key>``, msgpack)
  plus metadata (``m:created``). A save writes only the keys the request
  changed, so concurrent requests of one session keep each other's writes to
  different keys; the last write to the *same* key wins.
* A session loaded from Redis is saved only while its key still exists (one Lua
  script), so a request still in flight during logout cannot bring it back.
* Loading is lazy: a request that never touches ``session`` costs no Redis
  round trip, sets no cookie and creates no key.
* Anything that is not our own format is treated as no session. Nothing is
  ever unpickled.
* Idle timeout: the key's TTL, renewed on every request that reads the session.
  Absolute timeout: counted from ``m:created``; the TTL never outlives it.
* The cookie carries only the id and has no expiry; the server decides when the
  session ends.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from flask import Flask, Request, Response
from flask.sessions import SessionMixin
from flask_session.redis import RedisSessionInterface
from redis.exceptions import ResponseError

from .config import Settings

DATA = "d:"
CREATED = "m:created"
SEEN = "m:seen"
SID_BYTES = 32
# secrets.token_urlsafe(32) gives 43 characters of the URL-safe alphabet.
SID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# KEYS[1]: session key. ARGV: must_exist ('1'/'0'), ttl_ms, n_set, then n_set
# field/value pairs, then the fields to delete. Returns 0 when the key had to
# exist but is gone (logged out, revoked or expired meanwhile).
SAVE_SCRIPT = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n))
end
if #ARGV > 3 + 2 * n then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n, #ARGV))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# A request that only read the session: note when it was last seen and renew
# the idle timeout, but never recreate a session that is gone.
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
class StoredSession:
    created_ms: int
    seen_ms: int
    data: dict[str, Any]


class RedisSession(SessionMixin):
    """A session whose data is fetched from Redis on first use."""

    def __init__(self, store: RedisSessionStore, sid: str, stored: bool):
        self.store = store
        self.sid = sid
        # True while the session is believed to exist in Redis under sid.
        self.stored = stored
        self.created_ms: int | None = None
        self._data: dict[str, Any] | None = None if stored else {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._rewrite_all = False
        self.accessed = False

    def _items(self) -> dict[str, Any]:
        self.accessed = True
        if self._data is None:
            found = self.store.peek(self.sid)
            if found is None:
                # Unknown, expired or foreign: start afresh under a new id so
                # that nobody can choose the id of a future session.
                self.sid = self.store.generate_sid()
                self.stored = False
                self._data = {}
            else:
                self.created_ms, self._data = found.created_ms, found.data
        return self._data

    # -- MutableMapping ----------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError("session keys must be strings")
        self._items()[key] = value
        self._dirty.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        del self._items()[key]
        self._dirty.discard(key)
        self._deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items()))

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"<RedisSession {'loaded' if self._data is not None else 'not loaded'}>"

    # -- SessionMixin ------------------------------------------------------
    @property
    def modified(self) -> bool:
        return bool(self._dirty or self._deleted or self._rewrite_all)

    @modified.setter
    def modified(self, value: bool) -> None:
        # Setting modified by hand (after mutating a nested value) rewrites
        # every key of the session, since we cannot know which one changed.
        self._rewrite_all = bool(value)

    @property
    def new(self) -> bool:
        return not self.stored

    @property
    def permanent(self) -> bool:
        # The cookie never has an expiry: the server's idle and absolute
        # timeouts decide how long a session lives.
        return False

    @permanent.setter
    def permanent(self, value: bool) -> None:
        pass

    # -- what save_session needs --------------------------------------------
    def changes(self) -> tuple[dict[str, Any], set[str]]:
        data = self._data or {}
        keys = set(data) if (self._rewrite_all or not self.stored) else self._dirty
        return {k: data[k] for k in keys if k in data}, set(self._deleted)

    def mark_rotated(self, new_sid: str, restart_clock: bool) -> None:
        self.sid = new_sid
        self.stored = False
        if restart_clock:
            self.created_ms = None
        self._deleted.clear()


class RedisSessionStore(RedisSessionInterface):
    """Flask session interface; see the module docstring for the guarantees."""

    session_class = RedisSession

    def __init__(self, app: Flask, client, settings: Settings, key_prefix: str = "session:"):
        super().__init__(app, client=client, key_prefix=key_prefix, sid_length=SID_BYTES)
        # Flask-Session's serializer falls back to pickle: make sure no code
        # path can reach it.
        self.serializer = None
        self.settings = settings
        self.idle_ms = settings.session_idle_timeout * 1000
        self.absolute_ms = settings.session_absolute_timeout * 1000
        # Called with the session once it is stored under a new id (created
        # or rotated); the accounts index sessions here, so that an index
        # entry never points at a key that does not exist yet.
        self.on_new_id: list = []
        self._save = client.register_script(SAVE_SCRIPT)
        self._touch = client.register_script(TOUCH_SCRIPT)

    # -- ids and keys ------------------------------------------------------
    def generate_sid(self) -> str:
        return secrets.token_urlsafe(SID_BYTES)

    def key(self, sid: str) -> str:
        return self.key_prefix + sid

    # -- storage ---------------------------------------------------------
    def peek(self, sid: str) -> StoredSession | None:
        """A live session as stored, without renewing its idle timeout."""
        try:
            raw = self.client.hgetall(self.key(sid))
        except ResponseError:
            # WRONGTYPE: something else wrote a plain string (a pickle, say)
            # under a session key. Never decode it.
            self.app.logger.warning("session key of foreign type ignored")
            return None
        if not raw:
            return None
        try:
            found = self._decode(raw)
        except UnknownFormat as exc:
            self.app.logger.warning("session data in an unknown format ignored: %s", exc)
            return None
        if _now_ms() - found.created_ms >= self.absolute_ms:
            self.client.delete(self.key(sid))
            return None
        return found

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> StoredSession:
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
        return StoredSession(created, meta.get(SEEN, created), data)

    def ttl_ms(self, session: RedisSession) -> int:
        created = session.created_ms or _now_ms()
        remaining = created + self.absolute_ms - _now_ms()
        return max(1, min(self.idle_ms, remaining))

    def write(self, session: RedisSession) -> bool:
        """Write what the request changed; False if the session is gone."""
        to_set, to_delete = session.changes()
        now = _now_ms()
        pairs: list[Any] = [SEEN, now]
        if not session.stored:
            session.created_ms = session.created_ms or now
            pairs += [CREATED, session.created_ms]
        for k, v in to_set.items():
            pairs += [DATA + k, _encode(v)]
        args = ["1" if session.stored else "0", self.ttl_ms(session), len(pairs) // 2]
        args += pairs + [DATA + k for k in to_delete]
        return bool(self._save(keys=[self.key(session.sid)], args=args))

    def delete(self, sid: str) -> None:
        self.client.delete(self.key(sid))

    # -- Flask-Session's security API ------------------------------------------
    def regenerate(self, session: RedisSession, restart_clock: bool = True) -> None:
        """Move the session to a new id; the old id stops working at once.

        restart_clock=False keeps the absolute timeout counting from the
        session's original creation (a password change must not extend it)."""
        dict(session)  # load the data before the old key goes
        old_sid, was_stored = session.sid, session.stored
        session.mark_rotated(self.generate_sid(), restart_clock)
        session.modified = True
        if was_stored:
            self.delete(old_sid)

    # -- Flask's SessionInterface ----------------------------------------------
    def open_session(self, app: Flask, request: Request) -> RedisSession:
        sid = request.cookies.get(self.get_cookie_name(app), "")
        if SID_PATTERN.fullmatch(sid):
            return self.session_class(self, sid, stored=True)
        return self.session_class(self, self.generate_sid(), stored=False)

    def save_session(self, app: Flask, session: RedisSession, response: Response) -> None:
        if not session.accessed:
            return  # never touched: no Redis I/O, no cookie
        response.vary.add("Cookie")
        if session.stored or session:
            # Personal data may be in this response: no cache may keep it.
            response.headers["Cache-Control"] = "no-store"
        if getattr(session, "save_failed", False):
            return  # a second pass while the error page is rendered
        try:
            self._save_session(app, session, response)
        except Exception:
            session.save_failed = True
            raise

    def _save_session(self, app: Flask, session: RedisSession, response: Response) -> None:
        if not session:
            if session.stored:
                self.delete(session.sid)
                self.delete_cookie(app, response)
            return
        if not session.modified:
            if session.stored:
                self._touch(keys=[self.key(session.sid)], args=[_now_ms(), self.ttl_ms(session)])
            return
        was_new = not session.stored
        if not self.write(session):
            # Logged out, revoked or expired while this request ran: write
            # nothing, not even a deletion cookie, which could land after a
            # newer login's cookie and delete that one.
            return
        session.stored = True
        if was_new:
            self.set_cookie(app, response, session.sid)
            for callback in self.on_new_id:
                callback(session)

    # -- cookies -----------------------------------------------------------
    def _cookie_args(self, app: Flask) -> dict[str, Any]:
        return {
            "key": self.get_cookie_name(app),
            "path": "/",
            "domain": None,
            "secure": self.get_cookie_secure(app),
            "httponly": True,
            "samesite": self.get_cookie_samesite(app),
        }

    def set_cookie(self, app: Flask, response: Response, sid: str) -> None:
        response.set_cookie(value=sid, **self._cookie_args(app))

    def delete_cookie(self, app: Flask, response: Response) -> None:
        # Same attributes as when it was set: browsers ignore a deletion of a
        # __Host- cookie that lacks Secure (Flask-Session's own bug).
        response.set_cookie(value="", expires=0, max_age=0, **self._cookie_args(app))


def _now_ms() -> int:
    return int(time.time() * 1000)


def init_app(app: Flask, client, settings: Settings) -> None:
    app.config.update(
        SESSION_COOKIE_NAME=settings.session_cookie_name,
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE=settings.session_cookie_samesite,
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        PERMANENT_SESSION_LIFETIME=settings.session_idle_timeout,
        SESSION_PERMANENT=False,
        SESSION_REDIS=client,
    )
    app.session_interface = RedisSessionStore(app, client, settings)
