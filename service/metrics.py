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

import bisect
import os
import queue
import threading
import time
import weakref

# prometheus_client goes multiprocess when the variable merely exists, and
# an empty one (a .env line left blank) would put its files in the working
# directory: empty means unset.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR", None) == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

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
    "service_http_requests_in_flight",
    "Most requests served at once in the last second, per worker process.",
    multiprocess_mode="liveall")

worker_starts = Counter("service_worker_starts", "Worker processes that booted.")
worker_exits = Counter(
    "service_worker_exits",
    "Worker processes that exited cleanly: recycled (max_requests) or shut down.", ["reason"])

redis_pool_in_use = Gauge(
    "service_redis_pool_connections_in_use",
    "Most connections taken from the pool at once in the last second, per worker.",
    ["pool"], multiprocess_mode="liveall")
redis_pool_max = Gauge(
    "service_redis_pool_max_connections", "Size of the pool, per worker.",
    ["pool"], multiprocess_mode="liveall")
redis_pool_wait = Histogram(
    "service_redis_pool_wait_seconds",
    "Waits for a free pool connection (commands that found the pool exhausted).",
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

    A request only adds to plain dicts and ints; publish() moves the sums
    into the metric files once a second (the publisher below) and when the
    worker exits (gunicorn.conf.py). Writing the files on every request
    cost about 5 % of a small request's CPU (bench/metrics.py): each write
    checks the pid, takes a lock and packs two doubles, and a histogram
    writes twice. So a scrape sees a request up to PUBLISH_SECONDS late,
    and a worker killed with SIGKILL loses at most that last second.
    Greenlets of one worker never interleave inside these few statements;
    under real threads (not how gunicorn runs it) a count could be lost.
    """

    def __init__(self):
        self.in_flight = 0
        self._peak = Peak(http_in_flight, lambda: self.in_flight)
        self._bounds = http_duration._upper_bounds  # the buckets' "le", +Inf last
        self._counts: dict = {}  # (route, method, status) -> requests since published
        self._timings: dict = {}  # route -> [requests per bucket..., seconds in all]
        _request_metrics.add(self)

    def started(self) -> None:
        self.in_flight += 1
        self._peak.see(self.in_flight)

    def finished(self, environ, status: str, seconds: float) -> None:
        self.in_flight -= 1
        route = environ.get(ROUTE_KEY) or UNMATCHED
        method = environ.get("REQUEST_METHOD", "")
        key = (route, method if method in METHODS else "other", status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        timing = self._timings.get(route)
        if timing is None:
            timing = self._timings[route] = [0] * len(self._bounds) + [0.0]
        timing[bisect.bisect_left(self._bounds, seconds)] += 1  # first bucket with le >= seconds
        timing[-1] += seconds

    def publish(self) -> None:
        counts, self._counts = self._counts, {}
        timings, self._timings = self._timings, {}
        for labels, count in counts.items():
            http_requests.labels(*labels).inc(count)
        for route, timing in timings.items():
            # What Histogram.observe does, for many observations at once and
            # in its order (the sum, then the buckets, which hold the count per
            # bucket, cumulated when collected).
            child = http_duration.labels(route)
            child._sum.inc(timing[-1])
            for bucket, count in zip(child._buckets, timing):
                if count:
                    bucket.inc(count)


class Peak:
    """The most of something at once, kept in an int and published to a gauge
    once a second (PUBLISH_SECONDS): a gauge written on every change would
    cost a file write each time. ``now`` gives the current value, where the
    next second's peak starts from."""

    def __init__(self, gauge, now):
        self.gauge = gauge
        self.now = now
        self.value = 0
        _peaks.add(self)
        if not _publisher:
            _publisher.append(threading.Thread(
                target=_publish_every_second, name="metrics-publisher", daemon=True))
            _publisher[0].start()

    def see(self, value: int) -> None:
        if value > self.value:  # noqa: PLR1730 (max() is a call: twice the cost)
            self.value = value


PUBLISH_SECONDS = 1.0
_peaks: weakref.WeakSet = weakref.WeakSet()  # every Peak (a reset pool's goes with it)
_publisher: list = []  # the publishing thread (a greenlet under gevent), once started
_request_metrics: weakref.WeakSet = weakref.WeakSet()  # every RequestMetrics


def publish() -> None:
    """Write what RequestMetrics counted since the last time to the metric
    files (once a second, and from the worker_exit hook)."""
    for request_metrics in list(_request_metrics):
        request_metrics.publish()


def _publish_every_second() -> None:
    while True:
        time.sleep(PUBLISH_SECONDS)
        publish()
        live = list(_peaks)
        # A pool reset leaves its old queue (and Peak) until the garbage
        # collector takes it: of several Peaks of one gauge, the largest wins.
        largest: dict = {}
        for peak in live:
            largest[peak.gauge] = max(largest.get(peak.gauge, 0), peak.value)
        for gauge, value in largest.items():
            gauge.set(value)
        for peak in live:
            peak.value = peak.now()


def timed_queue_class(pool_name: str, max_connections: int):
    """A queue class for redis-py's BlockingConnectionPool (``queue_class``)
    that reports connections in use and waits for a free one.

    The pool keeps one slot per connection in this queue (None: not yet
    made), so in use = size - queued. Kept cheap, since it runs for every
    Redis command: only a get that finds the queue empty is timed, and the
    most connections in use at once is a Peak, published once a second."""
    wait = redis_pool_wait.labels(pool_name)
    timeouts = redis_pool_timeouts.labels(pool_name)
    in_use = redis_pool_in_use.labels(pool_name)
    redis_pool_max.labels(pool_name).set(max_connections)

    class TimedLifoQueue(queue.LifoQueue):
        def __init__(self, maxsize=0):
            super().__init__(maxsize)
            self.peak = Peak(in_use, lambda: self.maxsize - len(self.queue))

        def get(self, block=True, timeout=None):
            if self.queue:  # a connection (or a slot for one) is free
                item = super().get(block, timeout)
            else:
                started = time.perf_counter()
                try:
                    item = super().get(block, timeout)
                except queue.Empty:
                    timeouts.inc()
                    raise
                finally:
                    wait.observe(time.perf_counter() - started)
            self.peak.see(self.maxsize - len(self.queue))
            return item

    return TimedLifoQueue


def init_app(app, settings) -> RequestMetrics | None:
    """Per-request metrics when METRICS_BIND is set; the event counters
    (sessions, logins, ...) always count (a few µs, in memory when unserved).
    The route label comes from the request class (errors.JSONRequest)."""
    return RequestMetrics() if settings.metrics_bind else None
