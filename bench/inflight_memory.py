"""Memory a worker holds per request in flight, and where it comes from.

    .venv/bin/python bench/inflight_memory.py            # ~1.5 min
    .venv/bin/python bench/inflight_memory.py --no-server

In process (gevent patched, no server): --requests greenlets call an app's
WSGI callable on /io (a 50 ms sleep) at once; the process's RSS while they
all wait, minus the RSS before, per request (median of --rounds processes per
app, in alternating order). Three apps:
  bare      bench/peer_flask.py (bare Flask, the twins' routes)
  kit       bench/kit_app.py, production settings
  objects   the kit with its middleware layers called as objects (the
            behaviour before service.inline.direct): each such call
            starts a C-level interpreter frame that a waiting greenlet keeps

With a server (unless --no-server): the project's gunicorn.conf.py and
worker, 2 workers, wrk -c1000 for 6 s, the largest worker RSS, for the kit
app and for a WSGI callable that only sleeps 50 ms (bench/sleep_app.py): the
share of gunicorn and gevent alone (parser, socket, greenlet, environ) per
connection in flight. See bench/README.md.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APPS = ("bare", "kit", "objects")


def in_process(kind: str, requests: int, redis_url: str) -> float:
    """KiB per request in flight; runs in a child process of its own."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    os.environ.update({"REDIS_URL": redis_url, "SECRET_KEY": secrets.token_urlsafe(48),
                       "DOTENV_PATH": os.devnull, "APP_ENV": "production",
                       "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING"})
    if kind == "bare":
        from bench.peer_flask import app
    else:
        if kind == "objects":
            import service.middleware

            service.middleware.direct = lambda app: app
        from bench.kit_app import app
    from peers import rss_mib
    from request_cost import environ_for

    environ = environ_for("/io", None)

    def one():
        env = dict(environ, **{"wsgi.input": io.BytesIO(b"")})
        body = app(env, lambda status, headers, exc_info=None: None)
        for _chunk in body:
            pass
        getattr(body, "close", lambda: None)()

    for _ in range(3):  # warm up: first-request work, pools (a tenth of the load)
        gevent.joinall([gevent.spawn(one) for _ in range(requests // 10)])
    # Once per process: memory freed after a round stays with the process
    # (pymalloc arenas, the C heap), so a second round would mostly reuse it.
    before = rss_mib(os.getpid())
    greenlets = [gevent.spawn(one) for _ in range(requests)]
    gevent.sleep(0.03)  # all of them are in their 50 ms sleep now
    held = (rss_mib(os.getpid()) - before) * 1024 / requests
    gevent.joinall(greenlets)
    return held


def server_peak(app: str, redis_url: str, directory: Path, wrk_binary: str) -> tuple[float, float]:
    from peers import process_tree, rss_mib
    from workers import parse_wrk, wrk

    from tests.support.processes import Gunicorn, base_env

    env = base_env(redis_url, APP_ENV="production", SECRET_KEY=secrets.token_urlsafe(48),
                   ALLOWED_HOSTS="127.0.0.1,localhost", WEB_CONCURRENCY=2, MAX_REQUESTS=0,
                   LOG_FORMAT="text", LOG_LEVEL="INFO")
    server = Gunicorn(directory, env, app=app).start(timeout=30)
    try:
        workers = process_tree(server.process.pid)[1:]
        start = max(rss_mib(pid) for pid in workers)
        peak, done = [start], threading.Event()

        def sample():
            while not done.wait(0.5):
                peak.append(max(rss_mib(pid) for pid in workers))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            output = wrk(wrk_binary, server.url + "/io", 1000, 6, 2, 5, [])
        finally:
            done.set()
            sampler.join()
        figures = parse_wrk(output)
        if figures.get("timeouts") or figures.get("non_2xx"):
            print(f"  ({app}: {figures.get('timeouts')} timeouts, "
                  f"{figures.get('non_2xx')} non-2xx)")
        return start, max(peak)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="greenlets in flight (500)")
    parser.add_argument("--rounds", type=int, default=4, help="processes per app (4)")
    parser.add_argument("--no-server", action="store_true", help="only the in-process part")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if args.child:
        print(f"{in_process(args.child, args.requests, args.redis):.2f}")
        return 0

    from tests.support.processes import RedisServer

    with tempfile.TemporaryDirectory(prefix="inflight-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            results: dict[str, list[float]] = {kind: [] for kind in APPS}
            for rnd in range(args.rounds):
                for kind in APPS if rnd % 2 == 0 else APPS[::-1]:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", kind, "--redis", redis.url,
                         "--requests", str(args.requests)],
                        capture_output=True, text=True, check=True).stdout
                    results[kind].append(float(out.split()[-1]))
            print(f"in process, {args.requests} requests of /io in flight, KiB per request "
                  f"(rounds):")
            for kind in APPS:
                figures = ", ".join(f"{v:.1f}" for v in results[kind])
                print(f"  {kind:<8} {statistics.median(results[kind]):5.1f}  ({figures})")
            if args.no_server:
                return 0
            wrk_binary = shutil.which("wrk")
            if not wrk_binary:
                sys.exit("the server part needs wrk: apt-get install -y wrk (or --no-server)")
            print("gunicorn, 2 workers, wrk -c1000 /io for 6 s: worker RSS MiB at start -> peak")
            for app in ("bench.sleep_app:app", "bench.kit_app:app"):
                start, peak = server_peak(app, redis.url, Path(tmp) / app, wrk_binary)
                print(f"  {app:<22} {start:5.1f} -> {peak:5.1f}  "
                      f"(+{(peak - start) * 1024 / 500:.1f} KiB per connection in flight)")
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
