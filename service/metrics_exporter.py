"""Serve the workers' metrics on METRICS_BIND (started by gunicorn.conf.py).

    python -m service.metrics_exporter HOST:PORT

A process of its own, so the gunicorn master stays single-threaded (it forks
workers) and a worker whose hub is blocked cannot hold up a scrape. It adds
up the files every worker writes into PROMETHEUS_MULTIPROC_DIR at each
scrape, and exits when its parent (the master) is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from . import logformat
from .config import parse_bind

log = logging.getLogger("service.metrics_exporter")


def main(argv: list[str]) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logformat.formatter((os.environ.get("LOG_FORMAT") or "").lower()))
    logging.basicConfig(handlers=[handler], level=logging.INFO)
    host, port = parse_bind(argv[0])
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", argv[0], exc)
        return 1
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the master stops us
    try:
        while os.getppid() == parent:
            time.sleep(1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
