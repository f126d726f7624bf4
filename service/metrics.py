"""Prometheus metrics (prometheus_client), shared by all gunicorn workers.

Under gunicorn with METRICS_BIND set, gunicorn.conf.py points
PROMETHEUS_MULTIPROC_DIR at a directory of this run before any worker
imports this module: every worker then writes its values to its own
memory-mapped files there, and a small exporter process
(service/metrics_exporter.py) adds them up when Prometheus scrapes
METRICS_BIND. Without it (tests in process, ``flask run``) the values stay in
this process's default registry.

Labels stay bounded: the route is Flask's URL rule (``/api/sessions/<handle>``),
never the raw path; unmatched paths share one label value.
"""

from __future__ import annotations

import queue
import time

from flask import request
from prometheus_client import Counter, Gauge, Histogram

from .logformat import ROUTE_KEY

UNMATCHED = "[unmatched]"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

http_requests = Counter(
    "service_http_requests", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"])
http_duration = Histogram(
    "service_http_request_duration_seconds",
    "Time from the request reaching the app to its response closed, by route template.",
    ["route"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
http_in_flight = Gauge(
    "service_http_requests_in_flight", "Requests being served, per worker process.",
    multiprocess_mode="liveall")

worker_starts = Counter("service_worker_starts", "Worker processes that booted.")
worker_exits = Counter(
    "service_worker_exits",
    "Worker processes that exited cleanly: recycled (max_requests) or shut down.", ["reason"])

redis_pool_in_use = Gauge(
    "service_redis_pool_connections_in_use", "Connections taken from the pool, per worker.",
    ["pool"], multiprocess_mode="liveall")
redis_pool_max = Gauge(
    "service_redis_pool_max_connections", "Size of the pool, per worker.",
    ["pool"], multiprocess_mode="liveall")
redis_pool_wait = Histogram(
    "service_redis_pool_wait_seconds", "Time spent waiting for a free pool connection.",
    ["pool"], buckets=(.0001, .001, .01, .05, .1, .5, 1, 2.5, 5))
redis_pool_timeouts = Counter(
    "service_redis_pool_timeouts", "Waits for a free pool connection that timed out.", ["pool"])
redis_errors = Counter(
    "service_redis_errors", "Redis errors that became a 503 answer, by exception.", ["error"])

session_events = Counter(
    "service_session_events",
    "Session lifecycle: created, rotated, expired (found so when read), revoked, logged_out.",
    ["event"])
csrf_failures = Counter("service_csrf_failures", "Requests refused for a missing or bad CSRF token.")
login_failures = Counter("service_login_failures", "Logins refused for wrong credentials.")
rate_limited = Counter("service_rate_limited", "Requests refused by a rate limit (429).")
hub_blocked = Counter(
    "service_hub_blocked", "Times a greenlet held the gevent hub longer than BLOCKED_HUB_THRESHOLD.")

SESSION_EVENTS = ("created", "rotated", "expired", "revoked", "logged_out")
for _event in SESSION_EVENTS:
    session_events.labels(_event)  # every series exists from the start, at 0


def session_event(event: str, count: int = 1) -> None:
    if count:
        session_events.labels(event).inc(count)


class RequestMetrics:
    """Per-request counters and timings, told by middleware.RequestLog.

    Labelled children are cached: a request costs a dict lookup and four
    increments (measured in bench/metrics.py).
    """

    def __init__(self):
        self._counters: dict = {}
        self._histograms: dict = {}
        self._in_flight = http_in_flight

    def started(self) -> None:
        self._in_flight.inc()

    def finished(self, environ, status: str, seconds: float) -> None:
        self._in_flight.dec()
        route = environ.get(ROUTE_KEY) or UNMATCHED
        method = environ.get("REQUEST_METHOD", "")
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = http_requests.labels(
                route, method if method in METHODS else "other", status)
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = http_duration.labels(route)
        histogram.observe(seconds)


def record_route() -> None:
    """before_request: note the URL rule for the request metrics."""
    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def timed_queue_class(pool_name: str, max_connections: int):
    """A queue class for redis-py's BlockingConnectionPool (``queue_class``)
    that reports connections in use and the wait for a free one.

    The pool keeps one slot per connection in this queue (None: not yet
    made), so in use = size - queued."""
    in_use = redis_pool_in_use.labels(pool_name)
    wait = redis_pool_wait.labels(pool_name)
    timeouts = redis_pool_timeouts.labels(pool_name)
    redis_pool_max.labels(pool_name).set(max_connections)

    class TimedLifoQueue(queue.LifoQueue):
        def get(self, block=True, timeout=None):
            started = time.perf_counter()
            try:
                item = super().get(block, timeout)
            except queue.Empty:
                timeouts.inc()
                raise
            finally:
                wait.observe(time.perf_counter() - started)
            in_use.set(self.maxsize - self.qsize())
            return item

        def put(self, item, block=True, timeout=None):
            super().put(item, block, timeout)
            in_use.set(self.maxsize - self.qsize())

    return TimedLifoQueue


def init_app(app, settings) -> RequestMetrics | None:
    """Per-request metrics when METRICS_BIND is set; the event counters
    (sessions, logins, ...) always count (a few µs, in memory when unserved)."""
    if not settings.metrics_bind:
        return None
    # Registered before the other extensions' hooks, which may answer first.
    app.before_request(record_route)
    return RequestMetrics()
