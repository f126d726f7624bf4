"""WSGI middleware: proxy trust, request ids and the access log."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
import time

from greenlet import getcurrent
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import ClosingIterator

from . import logformat
from .config import Settings
from .inline import direct
from .logformat import REQUEST_ID_KEY

TRUSTED_KEY = "service.from_trusted_proxy"
# What we accept from a proxy as a request id: short, no spaces or quotes, so
# it cannot break a log line.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("service.access")
MAX_REMEMBERED_PEERS = 4096


class TrustedProxy:
    """Believe X-Forwarded-* and X-Request-ID only from a trusted proxy.

    The same list as gunicorn's ``forwarded_allow_ips`` decides who is trusted,
    and ``PROXY_HOPS`` (1 behind one nginx) how many entries of
    X-Forwarded-For to walk back, so the app and gunicorn agree on the client's
    address and scheme. Peers on a unix socket (nginx in production) have no
    address and are trusted, as gunicorn trusts them. Forwarded headers from
    anyone else are removed before the app sees them.
    """

    def __init__(self, app, settings: Settings):
        self.app = app
        self.hops = settings.proxy_hops
        self.any_peer = "*" in settings.forwarded_allow_ips
        self.networks = [
            ipaddress.ip_network(item, strict=False)
            for item in settings.forwarded_allow_ips
            if item != "*"
        ]
        self.fixed = direct(ProxyFix(app, x_for=self.hops, x_proto=self.hops, x_host=0, x_port=0))
        # peer address -> verdict: parsing an address and matching it against
        # the networks costs more than the rest of this middleware together.
        self.verdicts: dict[str, bool] = {}

    def is_trusted(self, environ) -> bool:
        if self.hops == 0:
            return False
        peer = environ.get("REMOTE_ADDR") or ""
        if self.any_peer or not peer or peer.startswith("unix:"):
            return True
        verdict = self.verdicts.get(peer)
        if verdict is None:
            if len(self.verdicts) >= MAX_REMEMBERED_PEERS:
                self.verdicts.clear()  # exposed directly, clients are many: stay bounded
            verdict = self.verdicts[peer] = self._judge(peer)
        return verdict

    def _judge(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        if self.is_trusted(environ):
            environ[TRUSTED_KEY] = True
            return self.fixed(environ, start_response)
        environ[TRUSTED_KEY] = False
        for key in [k for k in environ if k.startswith("HTTP_X_FORWARDED_")]:
            del environ[key]
        environ.pop("HTTP_X_REQUEST_ID", None)
        return self.app(environ, start_response)


def _with_id(headers, request_id):
    """The response's headers with our X-Request-ID (never a second one)."""
    headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
    headers.append(("X-Request-ID", request_id))
    return headers


class RequestLog:
    """Give each request an id and, with ``log_requests``, log one line when
    its response is done (ACCESS_LOG; off by default in production, where
    nginx writes the same line with the same request id).

    While it runs, the request is registered under its greenlet
    (logformat.running): every log line carries its id. ``metrics``
    (optional) is told when each request starts and ends (service/metrics.py).
    """

    def __init__(self, app, log_requests: bool = True, metrics=None):
        self.app = app
        self.log_requests = log_requests
        self.metrics = metrics

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID", "")
        if environ.get(TRUSTED_KEY) and REQUEST_ID_PATTERN.fullmatch(given):
            request_id = given
        else:
            request_id = os.urandom(16).hex()  # uuid4().hex's length, a third of its cost
        environ[REQUEST_ID_KEY] = request_id
        greenlet = getcurrent()
        logformat.running[greenlet] = environ
        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        log_line = self.log_requests and access_log.isEnabledFor(logging.INFO)
        status_holder = []

        def id_start_response(status, headers, exc_info=None):
            status_holder[:] = [status]
            return start_response(status, _with_id(headers, request_id), exc_info)

        def finished():
            logformat.running.pop(greenlet, None)
            if metrics is None and not log_line:
                return
            duration_ms = (time.perf_counter() - started) * 1000
            status = status_holder[0].split(" ", 1)[0] if status_holder else "-"
            if metrics is not None:
                metrics.finished(environ, status, duration_ms / 1000)
            if not log_line:
                return
            method = environ.get("REQUEST_METHOD", "-")
            # PEP 3333: PATH_INFO holds the URL's bytes as latin-1; log the text.
            path = (environ.get("PATH_INFO", "") or "/").encode("latin-1").decode(
                "utf-8", "replace")
            remote_addr = environ.get("REMOTE_ADDR") or None
            access_log.info(
                "%s %s %s %s %.1fms", method, path, status, remote_addr or "-", duration_ms,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": path,
                    "status": int(status) if status.isdigit() else None,
                    "remote_addr": remote_addr,
                    "duration_ms": round(duration_ms, 2),
                },
            )

        try:
            body = self.app(environ, id_start_response)
        except BaseException:
            finished()
            raise
        # Called when the server closes the body: after the last byte.
        return ClosingIterator(body, finished)


HANDLER_NAME = "service-stdout"


def configure_logging(settings: Settings) -> None:
    """Log to stdout, text or JSON; safe to call once per app."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logformat.formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level)


def wrap(wsgi_app, settings: Settings, metrics=None):
    log = direct(RequestLog(wsgi_app, settings.access_log, metrics))
    return direct(TrustedProxy(log, settings))
