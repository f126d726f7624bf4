"""Command line: ``python -m service check``.

Prints the effective settings with secrets redacted and exits non-zero when
they are not ready for production. Works even when the app would refuse to
start, which is when it is needed most.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import Settings, load_dotenv_file


def check(env_file: str | None, quiet: bool = False) -> int:
    load_dotenv_file(env_file)
    # The same checks as gunicorn.conf.py and create_app, gunicorn's settings included.
    settings = Settings.from_env()
    if not quiet:
        print(json.dumps(settings.redacted(), indent=2))
    if settings.redis_url and not settings.problems and not quiet:
        # Asks Redis itself; not at every service start (--quiet).
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
    check_parser.add_argument("--quiet", action="store_true",
                              help="print only the verdict, not the settings")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.env_file, args.quiet)
    return 2


if __name__ == "__main__":
    sys.exit(main())
