"""Work to do the moment this worker process begins a graceful shutdown.

gunicorn has no hook for it (TERM, a HUP reload or max_requests recycling:
the worker stops accepting and waits up to graceful_timeout for its
connections); service/worker.py calls run() then. Standard library only: the
master imports this before it forks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

_callbacks: list[Callable[[], None]] = []

log = logging.getLogger(__name__)


def on_shutdown(callback: Callable[[], None]) -> None:
    _callbacks.append(callback)


def run() -> None:
    for callback in _callbacks:
        try:
            callback()
        except Exception:  # the others still run
            log.exception("shutdown callback %r failed", callback)
