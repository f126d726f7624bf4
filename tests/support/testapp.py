"""The real app plus a blueprint of probes the tests need (never deployed).

Also an example of extending the service with a blueprint of your own.
"""

import time
import uuid

from flask import Blueprint, request, session

from service import create_app
from service.extensions import csrf
from service.redis_client import get_redis

bp = Blueprint("probes", __name__, url_prefix="/test")


@bp.get("/wait")
def wait():
    """Ordinary blocking code: BLPOP on a list nobody pushes to (0.5 s)."""
    # Below REDIS_SOCKET_TIMEOUT (2 s): longer blocking calls need a client of their own.
    seconds = min(float(request.args.get("seconds", 0.5)), 1.5)
    started = time.time()
    get_redis().blpop(f"test:wait:{uuid.uuid4().hex}", timeout=seconds)
    return {"started": started, "finished": time.time()}


@bp.get("/cpu")
def cpu():
    """About 2 ms of pure-Python work that never yields (bench/workers.py)."""
    rounds = min(int(request.args.get("rounds", 32_000)), 320_000)
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return {"rounds": rounds, "total": total}


@bp.get("/burn")
def burn():
    """Pure-Python work that holds the gevent hub (the watchdog's test)."""
    deadline = time.perf_counter() + min(float(request.args.get("seconds", 0.5)), 1.0)
    while time.perf_counter() < deadline:
        pass
    return {"burned": True}


@bp.get("/boom")
def boom():
    """An unhandled exception whose message tries to forge a log line."""
    raise RuntimeError("boom\n2026-01-01 00:00:00 INFO forged: line")


@bp.get("/session")
def read_session():
    return dict(session)


@bp.post("/session")
def write_session():
    session.update(request.get_json())
    return {"stored": sorted(session)}


@bp.post("/slow-write")
def slow_write():
    """Load the session, block for a while, then write one key of it."""
    body = request.get_json()
    before = dict(session)
    get_redis().blpop(f"test:wait:{uuid.uuid4().hex}", timeout=min(float(body["seconds"]), 1.5))
    session[body["key"]] = body["value"]
    return {"before": before}


@bp.get("/csp-violation")
def csp_violation():
    """A page the strict CSP must block: the browser test's positive control."""
    return "<!doctype html><title>x</title><style>body { color: red }</style><p>x</p>"


@bp.post("/echo")
def echo():
    return {"received": request.get_json()}


@bp.get("/client")
def client():
    return {"remote_addr": request.remote_addr, "scheme": request.scheme,
            "request_id": request.environ.get("service.request_id")}


app = create_app()
# The probes are not browser-facing; a webhook blueprint would be exempted the
# same way (and authenticate its callers by other means).
csrf.exempt(bp)
app.register_blueprint(bp)
