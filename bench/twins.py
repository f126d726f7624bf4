"""The benchmark's five routes, written once for every Flask-based peer.

bench/kit_app.py mounts them on the full kit, bench/peer_flask.py on bare
Flask (stock cookie sessions, or Flask-Session's Redis interface) and
bench/peer_quart.py repeats them for Quart. Never imported by the service.
"""

from __future__ import annotations

import time

from flask import session

CPU_ROUNDS = 32_000  # ~2 ms of pure Python on this kind of machine
REDIS_KEY = "bench:counter"


def cpu_work(rounds: int = CPU_ROUNDS) -> int:
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def add_routes(app, get_redis) -> None:
    """/io, /hello, /cpu, /redis, /session on a Flask app or blueprint."""

    @app.get("/io")
    def io():
        time.sleep(0.05)  # blocking; cooperative once gevent patched time
        return {"slept": 0.05}

    @app.get("/hello")
    def hello():
        return {"hello": "world"}

    @app.get("/cpu")
    def cpu():
        return {"total": cpu_work()}

    @app.get("/redis")
    def redis_get_set():
        client = get_redis()
        value = int(client.get(REDIS_KEY) or 0)
        client.set(REDIS_KEY, value + 1)
        return {"value": value}

    @app.get("/session")
    def session_read_write():
        # One key read and written on an existing session (the client sends
        # its cookie); a GET, so the kit's CSRF check does not apply.
        count = session.get("count", 0) + 1
        session["count"] = count
        return {"count": count}
