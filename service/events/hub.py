"""This worker's live-event sockets and the one Redis subscription that feeds them.

Every worker process subscribes once (one greenlet, one Redis connection) to
the account-events channel and hands each message to the sockets it holds
here; a socket never touches Redis pub/sub itself. The hub only queues on the
sockets (WebSocket.send_frame/close), so one slow socket cannot hold up the
others. After every (re)subscription each socket re-checks its session: an
event published while the subscription was down is not lost.

Connection limits are counted here, so they hold per worker process; nginx's
per-address limits hold them across workers and hosts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections import Counter, defaultdict

import gevent

from .. import shutdown
from . import CHANNEL
from .socket import GOING_AWAY, SESSION_ENDED, WebSocket, text_frame

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, client_factory, *, max_connections: int, max_per_address: int,
                 max_per_session: int):
        self.client_factory = client_factory
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.max_per_session = max_per_session
        self.by_session: dict[tuple[str, str], set[WebSocket]] = defaultdict(set)
        self.by_user: dict[str, set[WebSocket]] = defaultdict(set)
        self.per_address: Counter[str] = Counter()
        self.total = 0
        self.listener: gevent.Greenlet | None = None
        self.going = False

    # -- the sockets of this worker -----------------------------------------
    def refusal(self, uid: str, handle: str, address: str) -> tuple[int, str] | None:
        """(status, message) if one more socket is over a limit, else None."""
        if self.going:
            return 503, "This worker is shutting down; reconnect."
        if self.total >= self.max_connections:
            return 503, "Too many live connections on this worker."
        if self.per_address[address] >= self.max_per_address:
            return 429, "Too many live connections from your address."
        if len(self.by_session[(uid, handle)]) >= self.max_per_session:
            return 429, "Too many live connections for this session."
        return None

    def add(self, ws: WebSocket, uid: str, handle: str, address: str) -> None:
        ws.uid, ws.handle, ws.address = uid, handle, address
        self.by_session[(uid, handle)].add(ws)
        self.by_user[uid].add(ws)
        self.per_address[address] += 1
        self.total += 1
        if self.listener is None:
            shutdown.on_shutdown(self.going_away)
            self.listener = gevent.spawn(self._listen)

    def remove(self, ws: WebSocket) -> None:
        for index, key in ((self.by_session, (ws.uid, ws.handle)), (self.by_user, ws.uid)):
            index[key].discard(ws)
            if not index[key]:
                del index[key]
        self.per_address[ws.address] -= 1
        if not self.per_address[ws.address]:
            del self.per_address[ws.address]
        self.total -= 1

    def sockets(self) -> list[WebSocket]:
        return [ws for group in self.by_user.values() for ws in group]

    def going_away(self) -> None:
        """Shutdown or reload: every socket closes with 1001 now, so the
        worker need not wait out graceful_timeout on idle sockets."""
        self.going = True
        for ws in self.sockets():
            ws.close(GOING_AWAY, "going away")

    # -- events --------------------------------------------------------------
    def dispatch(self, event: dict) -> None:
        uid = event.get("uid")
        if event.get("type") == "session_ended":
            handles = event.get("handles")
            if handles is None:
                targets = list(self.by_user.get(uid, ()))
            else:
                targets = [ws for h in handles for ws in self.by_session.get((uid, h), ())]
            frame = text_frame({"type": "session_ended",
                                "reason": str(event.get("reason") or "ended")})
            for ws in targets:
                ws.send_frame(frame)
                ws.close(SESSION_ENDED, "session ended")
        elif event.get("type") == "sessions_changed":
            frame = text_frame({"type": "sessions_changed"})
            for ws in list(self.by_user.get(uid, ())):
                ws.send_frame(frame)

    def _listen(self) -> None:
        client = self.client_factory()
        delay = 0.1
        while True:
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        delay = 0.1
                        for ws in self.sockets():  # anything missed meanwhile
                            ws.check()
                    elif message["type"] == "message":
                        try:
                            event = json.loads(message["data"])
                        except ValueError:
                            continue
                        if isinstance(event, dict):
                            self.dispatch(event)
            except Exception as exc:  # noqa: BLE001 - Redis lost: subscribe again
                log.warning("live events: subscription lost (%s); retrying", exc)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
            gevent.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
