"""Blocked-hub watchdog: report a greenlet that keeps the gevent hub too long.

A view that computes, or calls a library gevent cannot patch, stalls every
other request of its worker. gevent's monitor thread (``max_blocking_time``)
notices when no greenlet switch happened for BLOCKED_HUB_THRESHOLD seconds
(checked once per threshold, so a block is caught once it lasts between one
and two thresholds) and emits an EventLoopBlocked event with the stack.

The event arrives in the monitor thread while the hub is still blocked.
There it only takes what it needs (the stack, and the route and request id
of the blocking greenlet's request from logformat.running) and wakes the hub
through a thread-safe async watcher; the log line and the counter are written
in the worker's own thread once the hub runs again, so logging and metrics
locks (gevent locks after patching) are never touched from another thread.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque

from . import logformat, metrics

log = logging.getLogger("service.watchdog")


class Watchdog:
    def __init__(self, hub, threshold: float):
        self.threshold = threshold
        self.hub = hub
        self.reports: deque = deque(maxlen=100)
        # gevent reports again every threshold while a block lasts: one line
        # per blocked request (and per episode outside requests).
        self.blocking = None  # the greenlet of the episode being reported
        self.last_request_id = None
        self.wakeup = hub.loop.async_()
        self.wakeup.ref = False  # never what keeps a worker's loop running
        self.wakeup.start(self.flush)

    def on_event(self, event) -> None:
        """zope.event subscriber; runs in gevent's monitor thread."""
        from gevent.events import EventLoopBlocked

        if not isinstance(event, EventLoopBlocked):
            return
        if getattr(event, "hub", None) not in (None, self.hub):
            return  # a hub of another thread: not the one serving requests
        environ = logformat.current_environ(event.greenlet)
        if environ is None:
            route, request_id = None, None  # a greenlet outside any request
        else:
            route = environ.get(logformat.ROUTE_KEY) or metrics.UNMATCHED
            request_id = environ.get(logformat.REQUEST_ID_KEY)
        same = (request_id == self.last_request_id if request_id is not None
                else event.greenlet is self.blocking)
        if same:
            if self.reports:  # not logged yet: it blocked longer
                self.reports[-1][3] += 1
            return
        self.blocking, self.last_request_id = event.greenlet, request_id
        self.reports.append([route, request_id, _stack(event.info), 1])
        self.wakeup.send()

    def flush(self) -> None:
        self.blocking = None  # the hub runs again: that episode is over
        while self.reports:
            route, request_id, stack, periods = self.reports.popleft()
            metrics.hub_blocked.inc()
            where = f"route {route} (request {request_id})" if route else "no request"
            log.warning(
                "gevent hub blocked for more than %.1fs by %s; everything else on this "
                "worker waited", self.threshold * periods, where,
                extra={"request_id": request_id, "stack": stack},
            )


def _stack(info: list) -> str:
    """The 'Blocked Stack' part of gevent's report (gevent/_tracer.py)."""
    for index, line in enumerate(info):
        if str(line).startswith("Blocked Stack"):
            return str(info[index + 1]).rstrip("\n") if index + 1 < len(info) else ""
    return "\n".join(map(str, info))


def init_app(app, settings) -> None:
    """Start the watchdog in a patched gevent worker when a threshold is set."""
    if settings.blocked_hub_threshold <= 0 or "watchdog" in app.extensions:
        return
    try:
        from gevent import monkey
    except ImportError:
        return
    if not monkey.is_module_patched("threading"):
        return  # not in a gevent worker (tests in process, other worker classes)
    import gevent
    from zope.event import subscribers

    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = settings.blocked_hub_threshold
    gevent.config.print_blocking_reports = False
    hub = gevent.get_hub()
    watchdog = Watchdog(hub, settings.blocked_hub_threshold)
    subscribers.append(watchdog.on_event)
    app.extensions["watchdog"] = watchdog

    # The memory monitor (off: max_memory_usage) asks for psutil with a
    # MonitorWarning on stderr in every worker. gevent's hub starts the
    # monitor thread itself when it first runs (Hub.run), wherever that
    # happens, so the filter stays for the worker's life; it matches only
    # that message.
    warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
    # Once the worker's loop runs, unless the hub ran already (the thread is
    # started once).
    hub.loop.run_callback(hub.start_periodic_monitoring_thread)
