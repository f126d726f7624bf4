"""Command line: ``python -m service check`` and ``python -m service serve``.

``check`` prints the effective settings with secrets redacted and exits
non-zero when they are not ready for production. Works even when the app
would refuse to start, which is when it is needed most.

``serve`` checks the settings the same way, then becomes gunicorn with the
kit's gunicorn.conf.py (same process: systemd's main PID, signals and all).
Use it rather than the ``gunicorn`` command: gunicorn reads WEB_CONCURRENCY
itself when it is imported, before any config file, so a bad value there was
a traceback out of gunicorn's own module instead of one line naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import Settings, load_dotenv_file


def check(env_file: str | None, quiet: bool = False) -> int:
    load_dotenv_file(env_file)
    # The same checks as gunicorn.conf.py and create_app, gunicorn's settings included.
    settings = Settings.from_env()
    if not quiet:
        print(json.dumps(settings.redacted(), indent=2))
    problems = (list(settings.problems) + worker_class_problems(settings)
                + redis_memory_problems(settings))
    if not settings.production:
        problems.insert(
            0, f"APP_ENV={settings.env}: set APP_ENV=production for a production deployment."
        )
    if problems:
        print("\nNot production-ready:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("\nProduction-ready.", file=sys.stderr)
    return 0


def worker_class_problems(settings: Settings) -> list[str]:
    """WORKER_CLASS loaded as gunicorn will load it. Here, in a process of its
    own: the settings reader also runs in gunicorn's master, which must not
    import anything gevent has to patch first."""
    if settings.problems:
        return []
    from gunicorn.util import load_class

    try:
        load_class(settings.worker_class, default="gevent", section="gunicorn.workers")
    except Exception as exc:  # noqa: BLE001 - gunicorn raises RuntimeError with a traceback
        # gunicorn's message ends with the import's traceback in brackets:
        # its last line says what failed.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip(" []")]
        reason = lines[-1] if lines else type(exc).__name__
        return [(f"WORKER_CLASS={settings.worker_class!r} cannot be loaded ({reason}); "
                 "e.g. WORKER_CLASS=service.worker.GeventWorker.")]
    return []


# What Redis does when it reaches maxmemory (deploy/README.md, "2. Redis").
# Under noeviction writes fail (the app answers 503 store_full) and reads go
# on. Every other policy deletes data: allkeys-* any key, accounts included
# (they have no TTL); volatile-* the keys with a TTL, so every session and
# rate-limit counter at once (everyone logged out, the login limits reset).
SAFE_EVICTION_POLICY = "noeviction"


def _one_shot_client(settings: Settings):
    """A client with 1 s timeouts; through the sentinels to the primary for
    redis+sentinel:// (service/redis_client.py), which redis-py cannot open."""
    import redis

    from .redis_url import SENTINEL_SCHEME

    if settings.redis_url.startswith(SENTINEL_SCHEME):
        from .redis_client import make_client

        return make_client(settings, max_connections=1, pool_timeout=1, connect_timeout=1,
                           socket_timeout=1, retries=0)
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1,
                                decode_responses=True)


def redis_memory_problems(settings: Settings) -> list[str]:
    """Ask the Redis at REDIS_URL (1 s timeouts) what it does when full: the
    problems found; what could not be checked is printed as a note."""
    if settings.problems or not settings.redis_url:
        return []  # asked once the settings themselves are valid (REDIS_URL among them)
    import redis

    try:
        with _one_shot_client(settings) as client:
            config = client.config_get("maxmemory*")
    except (redis.RedisError, ValueError) as exc:  # ValueError: a URL redis-py cannot open
        print(f"note: could not check Redis' maxmemory-policy ({type(exc).__name__}: {exc}); "
              f"it must be {SAFE_EVICTION_POLICY} (deploy/README.md, 2. Redis).", file=sys.stderr)
        return []
    policy = config.get("maxmemory-policy", "")
    if policy != SAFE_EVICTION_POLICY:
        return [
            f"Redis has maxmemory-policy {policy}: when full it deletes "
            + ("any key, accounts included" if policy.startswith("allkeys")
               else "every key with a TTL: all sessions and rate-limit counters at once")
            + f". Set maxmemory-policy {SAFE_EVICTION_POLICY} (deploy/README.md, 2. Redis)."
        ]
    if config.get("maxmemory") == "0":
        print("note: Redis has no maxmemory: when the host runs out of memory the kernel "
              "kills Redis; set one with headroom (deploy/README.md, 2. Redis).", file=sys.stderr)
    return []


GUNICORN_CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


def serve(app: str) -> int:
    load_dotenv_file()
    settings = Settings.from_env()
    problems = list(settings.problems) + worker_class_problems(settings)
    if problems:
        print("Not starting:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF),
                              app])
    return 1  # not reached: execv replaces this process or raises


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    check_parser = sub.add_parser("check", help="print the effective settings and check them")
    check_parser.add_argument("--env-file", help="dotenv file to load (default: ./.env)")
    check_parser.add_argument("--quiet", action="store_true",
                              help="print only the verdict, not the settings")
    serve_parser = sub.add_parser(
        "serve", help="check the settings, then run gunicorn with gunicorn.conf.py")
    serve_parser.add_argument("app", nargs="?", default="wsgi:app",
                              help="the WSGI app, module:name (default: wsgi:app)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.env_file, args.quiet)
    if args.command == "serve":
        return serve(args.app)
    return 2


if __name__ == "__main__":
    sys.exit(main())
