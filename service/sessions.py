"""Flask's session interface over the Redis records of ``session_store``.

* Loading is lazy: a request that never touches ``session`` costs no Redis
  round trip, sets no cookie and creates no key.
* A save writes only the keys the request changed, so concurrent requests of
  one session keep each other's writes to different keys; the last write to
  the *same* key wins.
* A session loaded from Redis is saved only while its record still exists, so
  a request still in flight during logout cannot bring it back. The same holds
  for rotation: the record moves to the new id at the save, only if it still
  exists, and a logout holding the old id ends the new one too.
* The cookie carries only the id and has no expiry; the server decides when
  the session ends (the store's idle and absolute timeouts).
* A visitor who is not logged in and has nothing to store but Flask-WTF's
  CSRF secret gets no record: the secret is derived from a signed value in
  the cookie (``presessions``). A record is made once the session holds more
  (its CSRF secret moves into it, so tokens handed out keep working); for a
  visitor who is not logged in, that first goes through the
  ``before_anonymous_record`` hooks (the per-address limit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from redis.exceptions import OutOfMemoryError

from .config import Settings
from .presessions import PreSession, PreSessions
from .session_store import SessionStore, now_ms


class RedisSession(SessionMixin):
    """A session whose data is fetched from the interface's store on first use."""

    def __init__(self, sid: str, stored: bool, owner: RedisSessionInterface, csrf_key: str):
        self._owner = owner
        self._csrf_key = csrf_key
        self.sid = sid
        # The id the request's cookie named, if it had the right shape.
        self.cookie_sid = sid if stored else None
        # True while the session is believed to exist in Redis under sid.
        self.stored = stored
        # Rotated: the record under this id moves to sid at the save.
        self.moved_from: str | None = None
        # Ids ended by this request (logout): deleted at the save.
        self.ended_ids: set[str] = set()
        # When the stored session was created (the absolute timeout counts from it).
        self.created_ms: int | None = None
        self.accessed = False
        # Set once a save raised: the error page's own pass does not try again.
        self.save_failed = False
        # Why loading failed (Redis unreachable): raised again on every later
        # use, and the save does nothing, so a request waits for Redis once.
        self.load_error: Exception | None = None
        self._data: dict[str, Any] | None = None if stored else {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._rewrite_all = False
        # Not logged in by this request (login: restart()); a new record for
        # such a session goes through the before_anonymous_record hooks once.
        self.anonymous = True
        self._admitted = False
        # While the session holds nothing but the CSRF secret of a
        # pre-session: that pre-session, and whether the request's cookie
        # already carries it.
        self.pre_session: PreSession | None = None
        self.pre_session_in_cookie = False

    def _items(self) -> dict[str, Any]:
        self.accessed = True
        if self._data is None:
            if self.load_error is not None:
                raise self.load_error
            try:
                found = self._owner.store.peek(self.sid)
            except Exception as exc:
                self.load_error = exc
                raise
            if found is None:
                # Unknown, expired or foreign: start afresh under a new id so
                # that nobody can choose the id of a future session.
                self.sid = self._owner.store.new_id()
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
        data = self._items()
        new_record = not self.stored and self.moved_from is None
        if key == self._csrf_key and new_record and self.anonymous and set(data) <= {key}:
            # Only a CSRF secret (Flask-WTF's random one): a pre-session's
            # instead, kept in the cookie rather than in Redis.
            self.resume(self._owner.pre_sessions.issue(), in_cookie=False)
            return
        if new_record and self.anonymous and not self._admitted:
            for hook in self._owner.before_anonymous_record:
                hook()
            self._admitted = True
        # More than a CSRF secret: a record, which keeps the pre-session's
        # secret (changes() writes every key of a new record).
        self.pre_session = None
        data[key] = value
        self._dirty.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        self.pre_session = None
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
        return bool(self._dirty or self._deleted or self._rewrite_all or self.moved_from)

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

    # -- what the interface needs ------------------------------------------
    def resume(self, pre: PreSession, in_cookie: bool) -> None:
        """Hold nothing but the CSRF secret of this pre-session."""
        self.pre_session, self.pre_session_in_cookie = pre, in_cookie
        self._data = {self._csrf_key: self._owner.pre_sessions.csrf_secret(pre)}

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """(values to write, keys to remove) for the next save."""
        data = self._data or {}
        everything = self._rewrite_all or (not self.stored and self.moved_from is None)
        keys = set(data) if everything else self._dirty
        return {k: data[k] for k in keys if k in data}, set(self._deleted)

    def restart(self, new_sid: str) -> str | None:
        """Become a new session under new_sid (its clock starts at the save),
        keeping the data. Returns the id the session was stored under, if any."""
        self._items()  # the data must be loaded before the old record goes
        previous = self.sid if self.stored else None
        self.sid = new_sid
        self.stored = False
        self.moved_from = None
        self.anonymous = False
        self.pre_session = None
        self.created_ms = None
        self._deleted.clear()
        self._rewrite_all = True
        return previous

    def move_to(self, new_sid: str) -> None:
        """Continue under new_sid: the record moves there at the save."""
        self._items()
        if self.stored:
            self.moved_from, self.stored = self.sid, False
        self.sid = new_sid

    def end(self, new_sid: str) -> None:
        """End every id this session is known by (at the save); what is
        written afterwards starts a new session under new_sid."""
        self.accessed = True
        self.ended_ids.update(
            i for i in (self.cookie_sid, self.moved_from, self.sid if self.stored else None) if i
        )
        self.sid, self.cookie_sid, self.stored, self.moved_from = new_sid, None, False, None
        self.anonymous, self._admitted, self.pre_session = True, False, None
        self.created_ms = None
        self._data = {}
        self._dirty.clear()
        self._deleted.clear()
        self._rewrite_all = False

    def mark_stored(self, created_ms: int) -> None:
        self.stored = True
        self.moved_from = None
        self.created_ms = created_ms


class RedisSessionInterface(SessionInterface):
    """Flask's session interface; see the module docstring for the guarantees."""

    def __init__(self, store: SessionStore, pre_sessions: PreSessions):
        self.store = store
        self.pre_sessions = pre_sessions
        # Called (no arguments) before a session that is not logged in gets
        # its first record; a hook may raise an HTTPException (429) instead.
        self.before_anonymous_record: list[Callable[[], None]] = []
        # Called with the session once it is stored under a new id (created
        # or rotated); the accounts index sessions here, so that an index
        # entry never points at a key that does not exist yet.
        self.on_new_id: list[Callable[[RedisSession], None]] = []

    def open_session(self, app: Flask, request: Request) -> RedisSession:
        value = request.cookies.get(self.get_cookie_name(app), "")
        csrf_key = app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        if self.store.is_id(value):
            return RedisSession(value, True, self, csrf_key)
        session = RedisSession(self.store.new_id(), False, self, csrf_key)
        pre = self.pre_sessions.open(value) if value else None
        if pre is not None:  # no Redis round trip at all
            session.resume(pre, in_cookie=True)
        return session

    def regenerate(self, session: RedisSession) -> None:
        """Login: the session starts anew under a new id (its absolute
        timeout too); the old id stops working at once."""
        previous = session.restart(self.store.new_id())
        if previous:
            self.store.delete(previous)

    def rotate(self, session: RedisSession) -> None:
        """A new id for the same session (password change). Its record moves
        at the save, only if it still exists (a logout meanwhile wins); the
        absolute timeout keeps counting from the session's creation."""
        session.move_to(self.store.new_id())

    def end(self, session: RedisSession) -> None:
        """Logout: the session's record is deleted at the save, with any
        record a rotation in flight moved it to."""
        session.end(self.store.new_id())

    def save_session(self, app: Flask, session: RedisSession, response: Response) -> None:
        if not session.accessed:
            return  # never touched: no Redis I/O, no cookie
        response.vary.add("Cookie")
        if session.load_error is not None:
            return  # nothing was loaded, so nothing can have changed
        if session.stored or session.ended_ids or session:
            # Personal data may be in this response: no cache may keep it.
            response.headers["Cache-Control"] = "no-store"
        if session.save_failed:
            return  # a second pass while the error page is rendered
        try:
            self._save(app, session, response)
        except Exception:
            session.save_failed = True
            raise

    def _save(self, app: Flask, session: RedisSession, response: Response) -> None:
        for sid in session.ended_ids:
            self.store.delete(sid)
        if session.pre_session is not None:
            self._send_pre_session(app, session.pre_session, session.pre_session_in_cookie,
                                   response)
            return
        if not session:
            if session.stored or session.moved_from:
                self.store.delete(session.moved_from or session.sid)
            if session.stored or session.moved_from or session.ended_ids:
                self.delete_cookie(app, response)
            return
        if not session.modified:
            if session.stored:
                self._touch(app, session)
            return
        created = session.created_ms or now_ms()
        values, removed = session.changes()
        if not self.store.write(session.sid, created, values, removed,
                                must_exist=session.stored, moved_from=session.moved_from):
            # Logged out, revoked or expired while this request ran: write
            # nothing, not even a deletion cookie, which could land after a
            # newer login's cookie and delete that one.
            return
        was_new = not session.stored
        session.mark_stored(created)
        if was_new:  # a new record (created, or moved by a rotation)
            self.set_cookie(app, response, session.sid)
            for callback in self.on_new_id:
                callback(session)

    def _send_pre_session(self, app: Flask, pre: PreSession, in_cookie: bool,
                          response: Response) -> None:
        """Set the pre-session's cookie if the client lacks it, or sign it
        anew when used after half its idle timeout."""
        if in_cookie:
            pre = self.pre_sessions.renewed(pre)
        if pre is not None:
            self.set_cookie(app, response, pre.cookie)

    def _touch(self, app: Flask, session: RedisSession) -> None:
        try:
            self.store.touch(session.sid, session.created_ms)
        except OutOfMemoryError as exc:
            # Redis is full (maxmemory, noeviction): the request only read the
            # session, so it still gets its answer; the idle timeout is not
            # renewed this time.
            app.logger.warning("Redis is full, session not touched: %s", exc)

    # -- cookies: Path=/, no Domain, HttpOnly always (what a __Host- name needs)
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
        # __Host- cookie that lacks Secure (Flask-Session 0.8's own bug).
        response.set_cookie(value="", expires=0, max_age=0, **self._cookie_args(app))


def init_app(app: Flask, client, settings: Settings) -> None:
    # The three cookie settings the interface reads (get_cookie_name,
    # get_cookie_secure, get_cookie_samesite); the rest is fixed above.
    app.config.update(
        SESSION_COOKIE_NAME=settings.session_cookie_name,
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_SAMESITE=settings.session_cookie_samesite,
    )
    store = SessionStore(client, settings.session_idle_timeout, settings.session_absolute_timeout)
    app.extensions["session_store"] = store
    pre_sessions = PreSessions(settings.secret_key, settings.session_idle_timeout,
                               settings.session_absolute_timeout)
    app.session_interface = RedisSessionInterface(store, pre_sessions)
