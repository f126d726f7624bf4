"""Live account events over a WebSocket: ``GET /api/events``.

The pages of a logged-in user open one socket (service/static/events.js).
What it hears, as JSON text messages:

    {"type": "session_ended", "reason": "logout|revoked|password|deleted|expired|ended"}
        then the socket closes with 4001: the tab shows the login page;
    {"type": "sessions_changed"}
        a login (or a new id) somewhere on the account: the sessions page refreshes.

The handshake is refused unless it comes from the service's own origin (403:
no cross-site WebSocket hijacking) with a live session (401), within the
connection limits (429, 503). The socket closes the moment its session ends:
by an event (logout, revocation, password change, account deletion), or by
its own timer at the session's idle or absolute expiry.

Events are published to Redis (publish below) by the code that ends or
creates sessions (service/accounts) and reach every worker and host through
one subscription per worker (hub.py).
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request, session
from redis.exceptions import RedisError
from werkzeug.sansio.utils import host_is_trusted

from ..config import Settings

CHANNEL = "events:accounts"
PATH = "/api/events"
# A timer fires this long after the session's recorded expiry, so Redis has
# surely expired the key by then.
EXPIRY_MARGIN = 0.05
# Seconds before a session check that found Redis away is tried again.
REDIS_RETRY = 5.0

bp = Blueprint("events", __name__)


def publish(type_: str, uid: str, *, handles: list[str] | None = None,
            reason: str | None = None) -> None:
    """Tell every worker's sockets of this account (all sessions, or handles)."""
    message = {"type": type_, "uid": uid}
    if type_ == "session_ended":
        message.update(handles=handles, reason=reason)
    current_app.extensions["redis"].publish(CHANNEL, json.dumps(message))


def same_origin(origin: str | None, settings: Settings) -> bool:
    """The handshake's Origin is one of this service's sites: the request's
    scheme (https in production) and a host name from ALLOWED_HOSTS. Ports
    are not compared: nginx passes Host without one ($host)."""
    if not origin:
        return False
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    # Werkzeug names the scheme of a WebSocket handshake ws or wss.
    scheme = {"ws": "http", "wss": "https"}.get(request.scheme, request.scheme)
    if (parts.scheme != scheme or not parts.hostname or parts.path or parts.query
            or parts.username is not None):
        return False
    allowed = list(settings.allowed_hosts) or [request.host.rsplit(":", 1)[0]]
    return host_is_trusted(parts.hostname, allowed)


class SwitchedProtocols(Response):
    """What the view returns once the socket has closed. The 101 was sent by
    the socket itself; StopIteration tells gunicorn's worker the connection
    is no longer HTTP: it closes it without writing a response (gunicorn's
    workers/base_async.py; flask-sock does the same)."""

    def __call__(self, environ, start_response):
        start_response("101 Switching Protocols", [])  # for the access log only
        raise StopIteration()


# websocket=True: Werkzeug matches an Upgrade: websocket request only to such
# rules (any other answers 400), and a plain GET here gets 400 too.
@bp.get(PATH, websocket=True)
def events():
    from .. import accounts
    from ..api.errors import api_error
    from .socket import WebSocket, valid_key

    settings = current_app.extensions["settings"]
    key = request.headers.get("Sec-WebSocket-Key", "")
    if request.headers.get("Sec-WebSocket-Version") != "13" or not valid_key(key):
        response = api_error(400, "bad_handshake", "Not a WebSocket version 13 handshake.")
        response.headers["Sec-WebSocket-Version"] = "13"
        return response
    if not same_origin(request.headers.get("Origin"), settings):
        return api_error(403, "forbidden_origin", "WebSockets only from this site's own pages.")
    user = accounts.current_user()
    if user is None:
        return api_error(401, "unauthorized", "Log in first.")
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return api_error(501, "not_implemented", "WebSockets need the gunicorn worker.")

    hub = _hub()
    handle, address = session["handle"], request.remote_addr or ""
    refused = hub.refusal(user.uid, handle, address)
    if refused:
        return api_error(refused[0], "too_many_connections", refused[1])
    ws = WebSocket(sock, settings.events_ping_interval)
    ws.on_deadline = _session_timer(ws, user.uid, handle)
    hub.add(ws, user.uid, handle, address)
    try:
        # The session may have ended between its check above and add():
        # check again, now that an event for it would reach this socket.
        ws.check()
        ws.serve(key)
    finally:
        hub.remove(ws)
    return SwitchedProtocols()


def _session_timer(ws, uid: str, handle: str):
    """on_deadline for a socket: end it if its session is gone, else wake
    again at the session's current expiry (idle timeout, capped by the
    absolute one: the record's TTL). Follows the session across id changes."""
    from .socket import SESSION_ENDED

    accounts = current_app.extensions["accounts"]
    store = current_app.extensions["session_store"]
    client = current_app.extensions["redis"]
    logger = current_app.logger

    def check() -> None:
        try:
            sid = client.hget(accounts.index_key(uid), handle)
            for _ in range(4):  # a rotation in flight: old id -> its successor
                if sid is None:
                    break
                ttl_ms = client.pttl(store.key(sid.decode()))
                if ttl_ms > 0:
                    ws.deadline = time.monotonic() + ttl_ms / 1000 + EXPIRY_MARGIN
                    return
                sid = client.get(store.successor_key(sid.decode()))
        except RedisError as exc:
            # Redis away: keep the socket (a revocation needs Redis too) and
            # look again shortly, rather than drop every socket at once.
            logger.warning("live events: session check failed: %s", exc)
            ws.deadline = time.monotonic() + REDIS_RETRY
            return
        ws.send_json({"type": "session_ended", "reason": "expired"})
        ws.close(SESSION_ENDED, "session ended")

    return check


def _hub():
    hub = current_app.extensions.get("events_hub")
    if hub is None:
        from ..redis_client import make_client
        from .hub import Hub

        settings = current_app.extensions["settings"]
        hub = Hub(
            # The subscription's own connection: never one of the request pool's.
            lambda: make_client(settings, max_connections=2, pool_timeout=1.0,
                                connect_timeout=settings.redis_connect_timeout,
                                socket_timeout=5.0, retries=0),
            max_connections=settings.events_max_connections,
            max_per_address=settings.events_max_per_address,
            max_per_session=settings.events_max_per_session,
        )
        current_app.extensions["events_hub"] = hub
    return hub
