"""Liveness and readiness probes. Neither touches the session."""

from flask import Blueprint, current_app
from redis.exceptions import RedisError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up and answering; depends on nothing else."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready for traffic: Redis answers a PING within a short timeout."""
    probe = current_app.extensions["redis_probe"]
    try:
        probe.ping()
    except RedisError as exc:
        # The details (addresses, socket paths) go to the log, not to whoever
        # asked: /readyz is reachable through nginx.
        current_app.logger.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        body = {"status": "unavailable", "checks": {"redis": type(exc).__name__}}
        return body, 503, {"Retry-After": "5", "Cache-Control": "no-store"}
    return {"status": "ready", "checks": {"redis": "ok"}}, 200, {"Cache-Control": "no-store"}
