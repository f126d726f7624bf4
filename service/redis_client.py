"""Redis clients: built per worker process, shared by sessions and views."""

from __future__ import annotations

import os

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from .config import Settings

PROBE_TIMEOUT = 0.5


def make_client(
    settings: Settings,
    *,
    max_connections: int,
    pool_timeout: float,
    connect_timeout: float,
    socket_timeout: float,
    retries: int,
    name: str,
) -> redis.Redis:
    """A client on a bounded pool that waits instead of failing.

    redis-py's default pool raises as soon as it is exhausted; under hundreds
    of greenlets that means a burst of 500s. A BlockingConnectionPool makes a
    greenlet wait up to ``pool_timeout`` for a free connection instead.
    Retries are few and short and only for connection errors, so a stopped
    Redis becomes a 503 within a second and a hung one after
    ``socket_timeout``, and a connection broken by a Redis restart is replaced
    transparently. (Long blocking commands, BLPOP with a timeout above
    ``socket_timeout``, need a client of their own.) With metrics on, the
    pool reports connections in use and waits, labelled ``name``.
    """
    extra = {}
    if settings.metrics_bind:
        from .metrics import timed_queue_class

        extra["queue_class"] = timed_queue_class(name, max_connections)
    retry = Retry(
        ExponentialWithJitterBackoff(cap=0.2, base=0.02),
        retries,
        supported_errors=(ConnectionError,),
    )
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=retry,
        client_name=f"service-{os.getpid()}",
        **extra,
    )
    return redis.Redis(connection_pool=pool, retry=retry)


def init_app(app, settings: Settings) -> None:
    # create_app runs inside each worker after fork (preload_app is off), so
    # every worker owns its pools.
    app.extensions["redis"] = make_client(
        settings,
        max_connections=settings.redis_max_connections,
        pool_timeout=settings.redis_pool_timeout,
        connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retries=settings.redis_retries,
        name="main",
    )
    # /readyz must answer fast even when the main pool is busy or Redis hangs.
    app.extensions["redis_probe"] = make_client(
        settings,
        max_connections=2,
        pool_timeout=PROBE_TIMEOUT,
        connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retries=0,
        name="probe",
    )


def get_redis(app=None) -> redis.Redis:
    from flask import current_app

    return (app or current_app).extensions["redis"]
