"""Capacity numbers for docs/scaling.md: Redis memory per account and per
logged-in session, and Redis connections one worker opens under load.

    .venv/bin/python bench/redis_capacity.py               # 300 accounts, ~1 min
    .venv/bin/python bench/redis_capacity.py --accounts 1000

A private redis-server (deploy/redis/service.conf) on a free loopback port;
accounts and sessions are made through the real app (in process, Flask's test
client: registration, login), so every key the app writes is counted:
``user:*``, the username index, the sessions index and ``session:*`` with the
CSRF secret and login metadata. Then one gunicorn worker (gevent, the
project's gunicorn.conf.py) serves GET /api/me to N concurrent logged-in
clients, and CLIENT LIST counts the connections its pools hold.
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

from service import Settings, create_app
from tests.support.api import ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env

PASSWORD = "correct horse battery"
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")


def used_memory(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.info("memory")["used_memory"])


def drop(server: RedisServer, *patterns: str) -> None:
    with server.client() as db:
        for pattern in patterns:
            if keys := db.keys(pattern):
                db.delete(*keys)


def key_memory(server: RedisServer, *patterns: str) -> int:
    """MEMORY USAGE summed over the keys matching patterns (key, value, overhead)."""
    with server.client() as db:
        return sum(db.memory_usage(key, samples=0) or 0
                   for pattern in patterns for key in db.scan_iter(pattern, count=1000))


def memory_per_item(server: RedisServer, count: int) -> tuple[float, float, float, float]:
    env = base_env(server.url, AUTH_RATE_LIMIT="1000000 per minute",
                   LOGIN_FAILURE_LIMIT="1000000 per minute")
    app = create_app(Settings.from_env(env))
    names = [f"capacity-user-{n:06d}" for n in range(count)]
    before = used_memory(server)
    for name in names:
        client = app.test_client()
        token = client.get("/api/csrf").json["csrf_token"]
        response = client.post("/api/auth/register", json={"username": name, "password": PASSWORD},
                               headers={"X-CSRF-Token": token})
        assert response.status_code == 201, response.json
    drop(server, "session:*", "*ratelimit*")  # the registrations' anonymous sessions
    accounts = used_memory(server)
    account_keys = key_memory(server, "user:*", "username:*")  # no session index yet
    for name in names:
        client = app.test_client()
        token = client.get("/api/csrf", headers={"User-Agent": USER_AGENT}).json["csrf_token"]
        response = client.post("/api/auth/login", json={"username": name, "password": PASSWORD},
                               headers={"X-CSRF-Token": token, "User-Agent": USER_AGENT})
        assert response.status_code == 200, response.json
    drop(server, "*ratelimit*")
    sessions = used_memory(server)
    return ((accounts - before) / count, account_keys / count, (sessions - accounts) / count,
            key_memory(server, "session:*", "user:*:sessions") / count)


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
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            account, account_keys, session, session_keys = memory_per_item(server, args.accounts)
            print(f"Redis memory per account: {account:,.0f} bytes of used_memory, "
                  f"{account_keys:,.0f} bytes of MEMORY USAGE (user:*, username:*), "
                  f"over {args.accounts} registrations")
            print(f"Redis memory per logged-in session: {session:,.0f} bytes of used_memory, "
                  f"{session_keys:,.0f} bytes of MEMORY USAGE (session:*, user:*:sessions), "
                  f"over {args.accounts} logins")
            print("\nconcurrent clients | requests | Redis connections held by the worker "
                  "(REDIS_MAX_CONNECTIONS=50 + 2 for /readyz)")
            for concurrency, requests, held in connections_under_load(
                    server, Path(tmp) / "gunicorn", args.clients, args.seconds):
                print(f"{concurrency:>18} | {requests:>8} | {held}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
