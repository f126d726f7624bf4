"""CPU cost of one request through the app's WSGI stack, without a server.

    .venv/bin/python bench/request_cost.py                    # kit and bare Flask, /hello
    .venv/bin/python bench/request_cost.py --app kit --path /session --profile

Calls the WSGI callable in a loop with a gunicorn-like environ (no sockets,
no gunicorn): what the kit's own layers (middleware, hooks, sessions,
headers, logging) cost on top of Flask. Reports microseconds of process CPU
time per request, the best of --repeat runs (the least disturbed by other
load). For figures that do not move with the machine's load, run it under
callgrind twice with different --n and divide the difference of the
instruction counts (bench/README.md). --profile prints cProfile's top entries.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def environ_for(path: str, cookie: str | None) -> dict:
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    return environ


def load_app(kind: str, redis_url: str, log_path: Path):
    os.environ.update({
        "REDIS_URL": redis_url, "SECRET_KEY": secrets.token_urlsafe(48), "DOTENV_PATH": os.devnull,
    })
    if kind == "kit":
        # Production settings; anything set in the environment wins (LOG_LEVEL=WARNING ...).
        for key, value in {"APP_ENV": "production", "ALLOWED_HOSTS": "127.0.0.1,localhost",
                           "LOG_LEVEL": "INFO"}.items():
            os.environ.setdefault(key, value)
        # The access log goes to stdout, as in production (journald): a file here.
        sys.stdout = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives with the process
        from bench.kit_app import app
    else:
        from bench.peer_flask import app
    return app


def run(app, environ: dict, n: int) -> None:
    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"{status}: {headers}")
        return lambda data: None

    for _ in range(n):
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(b"")
        body = app(env, start_response)
        try:
            for _chunk in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close:
                close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", choices=("kit", "bare", "both"), default="both")
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--n", type=int, default=3000, help="requests per run (3000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts (5)")
    parser.add_argument("--profile", action="store_true", help="cProfile one run")
    args = parser.parse_args()
    if args.app == "both":
        for kind in ("bare", "kit"):
            argv = [sys.executable, __file__, "--app", kind, "--path", args.path,
                    "--n", str(args.n), "--repeat", str(args.repeat)]
            import subprocess

            subprocess.run(argv + (["--profile"] if args.profile else []), check=True)
        return 0

    from tests.support.processes import RedisServer

    with tempfile.TemporaryDirectory(prefix="request-cost-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            app = load_app(args.app, redis.url, Path(tmp) / "access.log")
            cookie = None
            if args.path == "/session":
                from werkzeug.test import Client

                response = Client(app).get("/session", headers={"Host": "127.0.0.1:8000"})
                cookie = "; ".join(c.split(";", 1)[0] for c in response.headers.getlist("Set-Cookie"))
            environ = environ_for(args.path, cookie)
            run(app, environ, 200)  # warm up: first-request work, caches
            if args.profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.runcall(run, app, environ, args.n)
                stats = pstats.Stats(profiler, stream=sys.__stderr__)
                stats.sort_stats("tottime").print_stats(25)
            best = float("inf")
            for _ in range(args.repeat):
                started = time.process_time()
                run(app, environ, args.n)
                best = min(best, time.process_time() - started)
            if os.environ.get("SHOW_LOG"):
                print(Path(tmp, "access.log").read_text()[-600:], file=sys.__stdout__)
            print(f"{args.app:<4} {args.path}: {best / args.n * 1e6:.1f} us per request "
                  f"(best of {args.repeat} x {args.n})", file=sys.__stdout__, flush=True)
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
