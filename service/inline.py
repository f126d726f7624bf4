"""Calling WSGI layers inline. Standard library only: the master imports it
(service/worker.py) before gevent patches anything."""

from __future__ import annotations

from types import FunctionType, MethodType


def direct(app):
    """``app`` as a callable that CPython runs in the caller's interpreter loop.

    Calling an object whose class defines ``__call__`` in Python goes through
    C (``slot_tp_call``) and starts a new C-level interpreter frame; a request
    waiting in a greenlet keeps a copy of that C stack, about 0.9 KiB per such
    layer (bench/inflight_memory.py, bench/README.md). A bound method of
    a Python function is called inline (CPython 3.11+), so each layer of this
    stack is handed on as one. Anything else is returned as it is."""
    call = getattr(type(app), "__call__", None)  # noqa: B004 - the class's own, not callable()
    if isinstance(call, FunctionType):
        return MethodType(call, app)
    return app
