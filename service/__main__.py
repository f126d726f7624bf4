"""Command line: ``python -m service check``.

Prints the effective settings with secrets redacted and exits non-zero when
they are not ready for production. Works even when the app would refuse to
start, which is when it is needed most.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import REDIS_SCHEMES, ConfigError, Settings, load_dotenv_file


def check(env_file: str | None) -> int:
    load_dotenv_file(env_file)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.redacted(), indent=2))
    problems = list(settings.problems) + redis_memory_problems(settings)
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


# What Redis does when it reaches maxmemory (deploy/README.md, "2. Redis").
# Under noeviction writes fail (the app answers 503 store_full) and reads go
# on. Every other policy deletes data: allkeys-* any key, accounts included
# (they have no TTL); volatile-* the keys with a TTL, so every session and
# rate-limit counter at once (everyone logged out, the login limits reset).
SAFE_EVICTION_POLICY = "noeviction"


def redis_memory_problems(settings: Settings) -> list[str]:
    """Ask the Redis at REDIS_URL (1 s timeouts) what it does when full: the
    problems found; what could not be checked is printed as a note."""
    if not (settings.redis_url or "").startswith(REDIS_SCHEMES):
        return []  # a problem of its own already
    import redis

    try:
        with redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1,
                                  socket_timeout=1, decode_responses=True) as client:
            config = client.config_get("maxmemory*")
    except redis.RedisError as exc:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    check_parser = sub.add_parser("check", help="print the effective settings and check them")
    check_parser.add_argument("--env-file", help="dotenv file to load (default: ./.env)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.env_file)
    return 2


if __name__ == "__main__":
    sys.exit(main())
