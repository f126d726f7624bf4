"""WSGI middleware: proxy trust, request ids and the access log."""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
import time
import uuid

from greenlet import getcurrent
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import ClosingIterator

from . import logformat
from .config import Settings
from .logformat import REQUEST_ID_KEY

TRUSTED_KEY = "service.from_trusted_proxy"
# What we accept from a proxy as a request id: short, no spaces or quotes, so
# it cannot break a log line.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("service.access")


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
        self.fixed = ProxyFix(app, x_for=self.hops, x_proto=self.hops, x_host=0, x_port=0)

    def is_trusted(self, environ) -> bool:
        if self.hops == 0:
            return False
        peer = environ.get("REMOTE_ADDR") or ""
        if self.any_peer or not peer or peer.startswith("unix:"):
            return True
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


class RequestLog:
    """Give each request an id and log one line when its response is done.

    While it runs, the request is registered under its greenlet
    (logformat.running): log lines carry its id. ``metrics`` (optional)
    is told when each request starts and ends (service/metrics.py).
    """

    def __init__(self, app, metrics=None):
        self.app = app
        self.metrics = metrics

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID", "")
        if environ.get(TRUSTED_KEY) and REQUEST_ID_PATTERN.fullmatch(given):
            request_id = given
        else:
            request_id = uuid.uuid4().hex
        environ[REQUEST_ID_KEY] = request_id
        greenlet = getcurrent()
        logformat.running[greenlet] = environ
        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        status_holder = []

        def logging_start_response(status, headers, exc_info=None):
            status_holder[:] = [status]
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        def log():
            duration_ms = (time.perf_counter() - started) * 1000
            method = environ.get("REQUEST_METHOD", "-")
            path = environ.get("PATH_INFO", "") or "/"
            status = status_holder[0].split(" ", 1)[0] if status_holder else "-"
            remote_addr = environ.get("REMOTE_ADDR") or None
            if metrics is not None:
                metrics.finished(environ, status, duration_ms / 1000)
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
            logformat.running.pop(greenlet, None)

        try:
            body = self.app(environ, logging_start_response)
        except BaseException:
            log()
            raise
        # The line is written when the server closes the body: after the last byte.
        return ClosingIterator(body, log)


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
    return TrustedProxy(RequestLog(wsgi_app, metrics), settings)
