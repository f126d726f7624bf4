"""Acknowledged means replicated: session writes that matter wait for replicas.

Redis replicates asynchronously: a write the primary acknowledged can be lost
when the primary dies before a replica received it, and Sentinel then
promotes that replica. With REDIS_WAIT_REPLICAS=N (N > 0), a request that
logs in, logs out, revokes sessions or changes a password sends its response
only after N replicas confirmed every write made so far (Redis ``WAIT``,
at most REDIS_WAIT_TIMEOUT seconds); when fewer confirm in time, the client
gets a 503 instead of a success. WAIT is not a transaction: a write that timed
out may still be replicated later, or be lost in a failover, and the client
was not told it succeeded either way.

``WAIT`` counts the writes of the connection it is sent on, and a request's
writes go through several pooled connections. So the request ends with one
more write (a barrier key) and ``WAIT`` on the same connection: replication
is ordered, so replicas that have the barrier have everything written before
it. The wait runs on Flask's ``request_finished`` signal, after the session
was saved and before the response leaves the worker.
"""

from __future__ import annotations

from flask import Flask, g, request_finished, session
from redis.exceptions import RedisError

BARRIER_KEY = "replication:barrier"


class NotReplicated(RedisError):
    """Fewer replicas than REDIS_WAIT_REPLICAS confirmed a write in time (503)."""


def require_replicated() -> None:
    """Mark this request's writes as ones the client must not see acknowledged
    unless they reached REDIS_WAIT_REPLICAS replicas."""
    g.wait_for_replicas = True


def wait_for_replicas(client, replicas: int, timeout: float) -> int:
    """Write the barrier and WAIT on one connection; the replicas that confirmed."""
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(BARRIER_KEY)
        pipe.wait(replicas, int(timeout * 1000))
        return pipe.execute()[1]


def _after_request_saved(app: Flask, response, **_extra) -> None:
    if not g.pop("wait_for_replicas", False) or response.status_code >= 400:
        return
    settings = app.extensions["settings"]
    wanted = settings.redis_wait_replicas
    try:
        confirmed = wait_for_replicas(app.extensions["redis"], wanted, settings.redis_wait_timeout)
        if confirmed < wanted:
            raise NotReplicated(f"{confirmed} of {wanted} replicas confirmed the write")
    except RedisError as exc:
        _turn_into_unavailable(response, exc)


def _turn_into_unavailable(response, exc: RedisError) -> None:
    """Make the finished response the store's 503, in place: raising here
    would save the session a second time on Flask's error path. The session
    cookie goes, so the client keeps what it had and can retry; unless the
    session moved to a new id whose old one is already gone on the primary (a
    password change, a login from a stored session): without the new one the
    client would be logged out by a change that, most likely, stands."""
    from .errors import handle_redis_error

    unavailable = handle_redis_error(exc)
    response.status_code = unavailable.status_code
    response.set_data(unavailable.get_data())
    dropped = ["Clear-Site-Data", "Location"]  # Location: a form's redirect
    if not getattr(session, "rotated", False):
        dropped.append("Set-Cookie")
    for name in dropped:
        response.headers.remove(name)
    for name in ("Content-Type", "Retry-After"):
        response.headers[name] = unavailable.headers[name]


def init_app(app: Flask, settings) -> None:
    if settings.redis_wait_replicas > 0:
        request_finished.connect(_after_request_saved, app, weak=False)
