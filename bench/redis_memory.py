"""What one account and one logged-in session cost in Redis, for sizing
maxmemory (deploy/README.md, "2. Redis").

    .venv/bin/python bench/redis_memory.py            # 200 accounts: ~30 s
    .venv/bin/python bench/redis_memory.py --count 500

A fresh private redis-server (deploy/redis/service.conf) and one gunicorn
gevent worker of tests.support.testapp:app on free loopback ports; registers
--count accounts, then logs each in once, and prints the growth of Redis'
used_memory and key count per account and per session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.api import PASSWORD, ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env


def footprint(redis_server) -> tuple[int, int]:
    with redis_server.client() as db:
        return db.info("memory")["used_memory"], db.dbsize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        server = Gunicorn(Path(tmp) / "gunicorn", base_env(
            redis_server.url, AUTH_RATE_LIMIT="100000 per minute",
            LOGIN_FAILURE_LIMIT="100000 per minute", LOG_FORMAT="text"))
        try:
            server.start()
            client = ApiClient(server.url)
            client.fetch_csrf()  # the pool's connections are open before measuring
            names = [f"bench-{n:06d}" for n in range(args.count)]
            start = footprint(redis_server)
            for name in names:
                assert client.register(name, PASSWORD).status_code == 201
            registered = footprint(redis_server)
            for name in names:
                user = ApiClient(server.url)
                assert user.login(name, PASSWORD).status_code == 200
                user.close()
            logged_in = footprint(redis_server)
            client.close()
        finally:
            server.stop()
            redis_server.stop()
    for what, (before, after) in (("account", (start, registered)),
                                  ("logged-in session", (registered, logged_in))):
        print(f"per {what}: {(after[0] - before[0]) / args.count:,.0f} bytes of used_memory, "
              f"{(after[1] - before[1]) / args.count:.2f} keys")


if __name__ == "__main__":
    main()
