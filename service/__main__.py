"""Command line: ``python -m service check``.

Prints the effective settings with secrets redacted and exits non-zero when
they are not ready for production. Works even when the app would refuse to
start, which is when it is needed most.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, Settings, load_dotenv_file


def check(env_file: str | None) -> int:
    load_dotenv_file(env_file)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.redacted(), indent=2))
    if settings.redis_url and not settings.problems:
        from .redis_client import eviction_warnings

        for warning in eviction_warnings(settings):
            print(f"Warning: {warning}", file=sys.stderr)
    problems = list(settings.problems)
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
