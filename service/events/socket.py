"""One WebSocket on a gevent worker: one greenlet writes, another only reads.

Everything to be sent (events, pongs, pings, the close frame) goes through a
bounded queue that the request's own greenlet drains; it is the only one that
ever writes to the socket. gevent refuses two greenlets waiting on one socket
(ConcurrentObjectUseError, flask-sock #57), and two writers could interleave
the bytes of two frames; with a single writer neither can happen. The reader
greenlet parses what the peer sends and queues what needs an answer.

Limits: a peer that does not read is dropped once SEND_QUEUE frames wait for
it or one write blocks SEND_TIMEOUT seconds, so memory per socket stays
bounded; a message larger than MAX_MESSAGE closes the socket (1009); a peer
that has not answered the last ping when the next one is due is dropped.
No permessage-deflate: idle sockets hold no zlib state (about 256 KiB each
for a compressor at the defaults).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import time
from collections.abc import Callable

import gevent
from gevent.queue import Empty, Full, Queue
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

SEND_QUEUE = 32
SEND_TIMEOUT = 10.0
CLOSE_WAIT = 1.0
MAX_MESSAGE = 4096
RECEIVE_BYTES = 4096

GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
# Application range (RFC 6455, 7.4.2): the session is over, do not reconnect.
SESSION_ENDED = 4001


def text_frame(payload: dict) -> bytes:
    """payload as one complete JSON text frame. A server's frames are not
    masked, so one event's frame is the same bytes for every socket: a
    broadcast encodes it once (a complete message leaves no state behind in
    any socket's protocol object)."""
    text = json.dumps(payload, separators=(",", ":"))
    return Connection(ConnectionType.SERVER).send(TextMessage(data=text))


log = logging.getLogger(__name__)


class SlowReader(Exception):
    """The peer does not read what is sent to it."""


def valid_key(key: str) -> bool:
    """Sec-WebSocket-Key: base64 of 16 bytes (RFC 6455, 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def handshake_response(key: str) -> bytes:
    accept = generate_accept_token(key.encode()).decode()
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode()


class WebSocket:
    """A server-side WebSocket that only talks: client messages are read
    (to answer pings and closes, and to enforce the size limit) and dropped."""

    def __init__(self, sock: socket.socket, ping_interval: float):
        self.sock = sock
        self.ping_interval = ping_interval
        self.proto = Connection(ConnectionType.SERVER)
        self.outbox: Queue = Queue(SEND_QUEUE)
        self.writer: gevent.Greenlet | None = None
        self.reader: gevent.Greenlet | None = None
        self.pong_due = False
        self.peer_close: CloseConnection | None = None
        # Monotonic time at which on_deadline() is called (None: never).
        self.deadline: float | None = None
        self.on_deadline: Callable[[], None] = lambda: None
        self.closed = False
        # Whose socket this is (set by the hub).
        self.uid = self.handle = self.address = None

    # -- from any greenlet: queue only, never write, never block -------------
    def send_json(self, payload: dict) -> None:
        self.send_frame(text_frame(payload))

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete frame from text_frame()."""
        self._put(("frame", frame))

    def close(self, code: int, reason: str = "") -> None:
        self._put(("close", code, reason))

    def check(self) -> None:
        """Run on_deadline() in the writer soon."""
        self._put(("check",))

    def _put(self, item: tuple) -> None:
        try:
            self.outbox.put_nowait(item)
        except Full:
            # The peer does not read: drop it rather than buffer without bound.
            if self.writer is not None and not self.closed:
                self.writer.kill(SlowReader, block=False)

    # -- the writer: the request's own greenlet ------------------------------
    def serve(self, key: str) -> None:
        """Answer the handshake, then run until the socket is closed."""
        self.writer = gevent.getcurrent()
        try:
            self._write(handshake_response(key))
            self.reader = gevent.spawn(self._read)
            self._loop()
        except (SlowReader, OSError, LocalProtocolError):
            pass
        except Exception:
            # Never let it reach Flask: an error page written after the 101
            # would be garbage on this connection.
            log.exception("live-event socket failed")
        finally:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self.reader is not None:
                self.reader.kill(block=False)

    def _loop(self) -> None:
        next_ping = time.monotonic() + self.ping_interval
        while True:
            wake = next_ping if self.deadline is None else min(next_ping, self.deadline)
            try:
                item = self.outbox.get(timeout=max(0.0, wake - time.monotonic()))
            except Empty:
                item = ("timer",)
            kind = item[0]
            if kind == "frame":
                if self.proto.state is ConnectionState.OPEN:
                    self._write(item[1])
            elif kind == "pong":
                self._write(self.proto.send(Pong(payload=item[1])))
            elif kind in ("timer", "check"):
                now = time.monotonic()
                if kind == "check" or (self.deadline is not None and now >= self.deadline):
                    self.deadline = None
                    self.on_deadline()  # may queue a close
                if now >= next_ping:
                    if self.pong_due:
                        return  # no pong since the last ping: a dead peer
                    self.pong_due = True
                    self._write(self.proto.send(Ping()))
                    next_ping = now + self.ping_interval
            elif kind == "close":
                if self.proto.state is ConnectionState.OPEN:
                    self._write(self.proto.send(CloseConnection(code=item[1], reason=item[2])))
                    self.reader.join(CLOSE_WAIT)  # the peer's close frame, briefly
                return
            elif kind == "peer_closed":
                if self.proto.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self.proto.send(self.peer_close.response()))
                return
            else:  # "gone"
                return

    def _write(self, data: bytes) -> None:
        with gevent.Timeout(SEND_TIMEOUT, SlowReader):
            self.sock.sendall(data)

    # -- the reader -----------------------------------------------------------
    def _read(self) -> None:
        size = 0
        try:
            while True:
                data = self.sock.recv(RECEIVE_BYTES)
                if not data:
                    break
                self.proto.receive_data(data)
                for event in self.proto.events():
                    if isinstance(event, Ping):
                        self._put(("pong", event.payload))
                    elif isinstance(event, Pong):
                        self.pong_due = False
                    elif isinstance(event, CloseConnection):
                        self.peer_close = event
                        self._put(("peer_closed",))
                        return
                    elif isinstance(event, Message):
                        size += len(event.data)
                        if size > MAX_MESSAGE:
                            self._put(("close", MESSAGE_TOO_BIG, "message too big"))
                            return
                        if event.message_finished:
                            size = 0
        except (OSError, LocalProtocolError):
            pass
        self._put(("gone",))
