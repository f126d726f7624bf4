"""Reload on save, for development: ``python -m service.devreload PID [ROOT]``.

scripts/run starts this next to gunicorn when APP_ENV=development. It polls
the Python files of the checkout and sends the gunicorn master (PID) a HUP
when one is added, changed or removed: the graceful reload of a production
deploy, so new gevent workers import the code on disk (service/__init__.py
included) while the old ones finish their requests, and nothing is ever
refused in between. A file that does not compile is reported and no HUP is
sent, so the last good code keeps serving until the next save. Templates
need no reload (TEMPLATES_AUTO_RELOAD in development); static files are
read on every request.

Polling, not inotify: a few hundred stat calls every quarter second cost
nothing and work on every file system, bind mounts and editors that replace
files included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

INTERVAL = 0.25
# Editors write a file in several steps (or several files at once): wait for
# the writes to settle before reloading once.
SETTLE = 0.1
SKIP_DIRS = {"tests", "node_modules", "__pycache__"}


def python_files(root: Path) -> dict[str, int]:
    """path -> mtime (ns) of the .py files under root, outside hidden
    directories (.venv, .state, .git) and tests."""
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                try:
                    found[path] = os.stat(path).st_mtime_ns
                except OSError:
                    continue  # removed meanwhile: the next scan sees it
    return found


def syntax_errors(paths) -> list[str]:
    problems = []
    for path in paths:
        try:
            source = Path(path).read_bytes()
            compile(source, path, "exec", dont_inherit=True)
        except OSError:
            continue
        except (SyntaxError, ValueError) as exc:
            where = f"{exc.filename}:{exc.lineno}" if isinstance(exc, SyntaxError) else path
            problems.append(f"{where}: {exc.msg if isinstance(exc, SyntaxError) else exc}")
    return problems


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def watch(pid: int, root: Path) -> int:
    seen = python_files(root)
    broken: set[str] = set()  # files that did not compile when last saved
    while True:
        time.sleep(INTERVAL)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0  # gunicorn is gone; scripts/run stops the rest
        current = python_files(root)
        if current == seen:
            continue
        time.sleep(SETTLE)
        current = python_files(root)
        changed = sorted(p for p, mtime in current.items() if seen.get(p) != mtime)
        removed = sorted(set(seen) - set(current))
        seen = current
        problems = syntax_errors(sorted(set(changed) | (broken & set(current))))
        broken = {p for p in current if any(line.startswith(f"{p}:") for line in problems)}
        if problems:
            say("not reloading, fix and save again:\n    " + "\n    ".join(problems))
            continue
        names = [os.path.relpath(p, root) for p in changed + removed]
        say(f"reloading the workers: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
        os.kill(pid, signal.SIGHUP)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.devreload",
                                     description="HUP a gunicorn master when a .py file changes.")
    parser.add_argument("pid", type=int, help="the gunicorn master's process id")
    parser.add_argument("root", nargs="?", default=".", help="the checkout to watch (default: .)")
    args = parser.parse_args(argv)
    try:
        return watch(args.pid, Path(args.root).resolve())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
