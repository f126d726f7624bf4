"""Capacity numbers for docs/scaling.md: the Redis connections one worker
holds under load (memory per account and session: bench/redis_memory.py).

    .venv/bin/python bench/redis_connections.py                  # 10, 50, 200 clients
    .venv/bin/python bench/redis_connections.py --clients 10 100 --seconds 5

A private redis-server (deploy/redis/service.conf) on a free loopback port and
one gunicorn worker (gevent, the project's gunicorn.conf.py) serving GET
/api/me to N concurrent logged-in clients; then CLIENT LIST counts the
connections its pools hold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.api import ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env

PASSWORD = "correct horse battery"


def hammer(clients: list[ApiClient], seconds: float) -> int:
    """GET /api/me from every client at once for `seconds`; the requests made."""
    done = [0] * len(clients)
    deadline = time.monotonic() + seconds

    def run(i):
        while time.monotonic() < deadline:
            clients[i].get("/api/me")
            done[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def connections_under_load(server: RedisServer, directory: Path, clients: list[int],
                           seconds: float) -> list[tuple[int, int, int]]:
    env = base_env(server.url, WEB_CONCURRENCY=1, AUTH_RATE_LIMIT="1000000 per minute",
                   LOGIN_FAILURE_LIMIT="1000000 per minute")
    gunicorn = Gunicorn(directory, env).start()
    rows = []
    try:
        for concurrency in clients:
            api = [ApiClient(gunicorn.url) for _ in range(concurrency)]
            for n, client in enumerate(api):
                name = f"load-{concurrency}-{n}"
                assert client.register(name, PASSWORD).status_code == 201
                assert client.login(name, PASSWORD).status_code == 200
            requests = hammer(api, seconds)
            with server.client() as db:
                held = sum(1 for c in db.client_list() if c["name"].startswith("service-"))
            rows.append((concurrency, requests, held))
            for client in api:
                client.close()
    finally:
        gunicorn.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            print("concurrent clients | requests | Redis connections held by the worker "
                  "(REDIS_MAX_CONNECTIONS=50 + 2 for /readyz)")
            for concurrency, requests, held in connections_under_load(
                    server, Path(tmp) / "gunicorn", args.clients, args.seconds):
                print(f"{concurrency:>18} | {requests:>8} | {held}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
