"""Two costs of gunicorn's response writing, removed in each worker.

* gunicorn sends a response's headers in one ``sendall`` and its body in
  another: two system calls, and on loopback or a unix socket two wake-ups
  of the reader (nginx), both counted as the worker's CPU. Here the headers
  wait for the first body bytes and go out with them in one call. Nothing
  else changes: a response without body bytes (HEAD, 204, an empty body),
  a chunked one or a file sent with sendfile sends its headers as before.
* ``Date`` is formatted again for every response (email.utils.formatdate);
  here once per second.

``install()`` runs in each worker (gunicorn.conf.py, post_worker_init).
"""

from __future__ import annotations

import time

from gunicorn import util
from gunicorn.http import wsgi

_format_date = util.http_date
_date_cache: list = [None, ""]


def http_date(timestamp=None):
    if timestamp is not None:
        return _format_date(timestamp)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, _format_date(now)]
    return _date_cache[1]


class _HeldBytes:
    """Stands in for the socket while gunicorn writes the headers."""

    def __init__(self):
        self.data = b""

    def sendall(self, data):
        self.data += data


class Response(wsgi.Response):
    _holding = False
    _held = b""

    def send_headers(self):
        if not self._holding or self.headers_sent:
            return super().send_headers()
        sock, self.sock = self.sock, _HeldBytes()
        try:
            super().send_headers()
            self._held = self.sock.data
        finally:
            self.sock = sock

    def write(self, arg):
        if self.headers_sent or self.chunked:
            return super().write(arg)
        self._holding = True
        try:
            super().write(arg)
        finally:
            self._holding = False
            held, self._held = self._held, b""
            if held:  # no body bytes went out (HEAD, a full length): headers alone
                util.write(self.sock, held)

    def _emit_body(self, data):
        if self._held:
            data, self._held = self._held + data, b""
        super()._emit_body(data)


def install() -> None:
    util.http_date = http_date
    wsgi.Response = Response
