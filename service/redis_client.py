"""Redis clients: built per worker process, shared by sessions and views."""

from __future__ import annotations

import os
import time

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, ResponseError
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)

from .config import Settings
from .redis_url import SENTINEL_SCHEME, SentinelURL, parse_sentinel_url

PROBE_TIMEOUT = 0.5
# How often a worker asks the sentinels who the primary is, besides every
# new connection: bounds how long a kept connection can talk to a demoted one.
PRIMARY_RECHECK_SECONDS = 1.0


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that gives up on a server that is now a
    replica resyncing (MASTERDOWN, replica-serve-stale-data no in
    deploy/redis/replication.conf), as redis-py does for READONLY: closed, and
    a ConnectionError the client's Retry retries on a new connection."""

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("MASTERDOWN"):
                self.disconnect()
                raise ConnectionError("the primary this connection knew is a replica now") from exc
            raise


class SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool, bounded and blocking like the plain one, that
    notices a new primary on its own.

    redis-py asks the sentinels only when a connection is (re)made, so a kept
    connection to a demoted primary goes on serving stale reads, and writes
    fail with READONLY (redis-py #435). This pool also asks every
    PRIMARY_RECHECK_SECONDS: when the primary moved, or there is none, idle
    connections are closed and busy ones are dropped when released
    (``owns_connection`` compares their address with the primary's).
    A READONLY reply still closes its connection and becomes a ConnectionError
    (SentinelManagedConnection), which the client's Retry retries on a new
    connection; every new connection asks the sentinels first, so retries
    never dial the old address (redis-py #3874).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_check = 0.0

    def _recheck_primary(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + PRIMARY_RECHECK_SECONDS
        try:
            self.get_master_address()  # closes idle connections when it changed
        except MasterNotFoundError:
            # No primary the sentinels agree on: nobody may keep talking to
            # the old one. The next connect raises MasterNotFoundError (503).
            self.proxy.master_address = None
            self.disconnect(inuse_connections=False)

    def get_connection(self, *args, **kwargs):
        self._recheck_primary()
        return super().get_connection(*args, **kwargs)


def make_client(
    settings: Settings,
    *,
    max_connections: int,
    pool_timeout: float,
    connect_timeout: float,
    socket_timeout: float,
    retries: int,
) -> redis.Redis:
    """A client on a bounded pool that waits instead of failing.

    redis-py's default pool raises as soon as it is exhausted; under hundreds
    of greenlets that means a burst of 500s. A BlockingConnectionPool makes a
    greenlet wait up to ``pool_timeout`` for a free connection instead.
    Retries are few and short and only for connection errors, so a stopped
    Redis becomes a 503 within a second and a hung one after
    ``socket_timeout``, and a connection broken by a Redis restart is replaced
    transparently. (Long blocking commands, BLPOP with a timeout above
    ``socket_timeout``, need a client of their own.)
    """
    retry = Retry(
        ExponentialWithJitterBackoff(cap=0.2, base=0.02),
        retries,
        supported_errors=(ConnectionError,),
    )
    options = {
        "max_connections": max_connections,
        "timeout": pool_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "retry": retry,
        "client_name": f"service-{os.getpid()}",
    }
    if settings.redis_url.startswith(SENTINEL_SCHEME):
        pool = sentinel_pool(parse_sentinel_url(settings.redis_url), connect_timeout, **options)
    else:
        pool = redis.BlockingConnectionPool.from_url(settings.redis_url, **options)
    return redis.Redis(connection_pool=pool, retry=retry)


def sentinel_pool(url: SentinelURL, connect_timeout: float, **options) -> SentinelBlockingPool:
    """A pool on whichever server the sentinels name as the primary. The
    sentinels get the same credentials (as the ``limits`` library does) and
    short timeouts, so a dead sentinel costs one connect timeout at most."""
    auth = {"username": url.username, "password": url.password}
    timeout = min(connect_timeout, PROBE_TIMEOUT)
    sentinel = Sentinel(
        list(url.sentinels),
        sentinel_kwargs=dict(auth, socket_timeout=timeout, socket_connect_timeout=timeout),
    )
    return SentinelBlockingPool(url.service_name, sentinel, db=url.db,
                                connection_class=PrimaryConnection, **auth, **options)


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
    )
    # /readyz must answer fast even when the main pool is busy or Redis hangs.
    app.extensions["redis_probe"] = make_client(
        settings,
        max_connections=2,
        pool_timeout=PROBE_TIMEOUT,
        connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retries=0,
    )


def get_redis(app=None) -> redis.Redis:
    from flask import current_app

    return (app or current_app).extensions["redis"]
