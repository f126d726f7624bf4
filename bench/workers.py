"""Benchmark the gunicorn worker setups the project chose between, in one run.

Run with the project's venv (not part of the pytest suite, no timing assertions):

    .venv/bin/python bench/workers.py            # ~4.5 min: 2 rounds, 8 s per cell
    .venv/bin/python bench/workers.py --quick    # ~1 min: 1 round, 3 s per cell

Each setup gets a fresh private redis-server and gunicorn (2 workers, the
project's gunicorn.conf.py) on free loopback ports; wrk loads three endpoints
of tests.support.testapp:app. Prints a table of absolute figures and the
ratios of every setup against the baseline measured in the same run.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import Gunicorn, RedisServer, base_env

# Each worker may hold up to every /test/wait connection at once (accept is
# not evenly shared), and each of those holds a Redis connection for its BLPOP:
# size the pool so it never queues, and the figures measure the worker class.
REDIS_MAX_CONNECTIONS = 500


@dataclass(frozen=True)
class Setup:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    name: str
    path: str
    connections: int


SETUPS = (
    # Baseline: stock gunicorn gevent behaviour (project config, yield hook a no-op).
    Setup("gevent (no yield) BASE",
          ("--config", str(BENCH / "noyield.conf.py"), "--worker-class", "gevent")),
    Setup("gevent + yield", ("--worker-class", "gevent")),
    Setup("project GeventWorker", ("--worker-class", "service.worker.GeventWorker")),
    Setup("gevent_pywsgi", ("--worker-class", "gevent_pywsgi")),
)

CELLS = (
    Cell("healthz", "/healthz", 100),                    # cheap: keep-alive fairness
    Cell("cpu", "/test/cpu", 10),                        # ~2 ms of Python: CPU fairness
    Cell("wait", "/test/wait?seconds=0.05", 500),        # 50 ms BLPOP: blocking I/O
)

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(output: str) -> dict:
    def number(pattern, default=None):
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            if default is None:
                raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
            return default
        return match.group(1)

    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE)
    if latency is None:
        raise ValueError(f"wrk output lacks the latency line:\n{output}")
    percentiles = {int(p): to_ms(v) for p, v in
                   re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.MULTILINE)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    connect, read, write, timeouts = (int(g) for g in errors.groups()) if errors else (0,) * 4
    return {
        "rps": float(number(r"^Requests/sec:\s+([\d.]+)")),
        "requests": int(number(r"^\s+(\d+) requests in")),
        "p50": percentiles[50],
        "p99": percentiles[99],
        "max": to_ms(latency.group(3)),
        "non2xx": int(number(r"Non-2xx or 3xx responses: (\d+)", "0")),
        "sockerr": connect + read + write,
        "timeouts": timeouts,
    }


def wrk(binary: str, url: str, connections: int, seconds: float, threads: int,
        timeout: float, extra: list[str] = ()) -> str:
    cmd = [binary, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s",
           f"--timeout={timeout:g}s", "--latency", *extra, url]
    # Bounded twice: wrk's own duration, and a hard limit here.
    done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                          timeout=seconds + timeout + 30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def check_tools() -> str:
    binary = shutil.which("wrk")
    if not binary:
        sys.exit(f"{sys.argv[0]} needs wrk: install it with `apt-get install -y wrk` "
                 "(Debian package wrk).")
    if not shutil.which("redis-server"):
        sys.exit(f"{sys.argv[0]} needs redis-server: `apt-get install -y redis-server`.")
    if not (Path(sys.executable).parent / "gunicorn").exists():
        sys.exit(f"no gunicorn beside {sys.executable}: run with the project venv, "
                 f"{ROOT / '.venv/bin/python'} {sys.argv[0]}")
    return binary


def start(setup: Setup, directory: Path, args, **env_overrides) -> tuple[RedisServer, Gunicorn]:
    redis = RedisServer(directory / "redis")
    try:
        redis.start()
    except BaseException:
        with shielded():
            redis.stop()
        raise
    env = base_env(
        redis.url,
        WEB_CONCURRENCY=2,
        LOG_LEVEL="WARNING",
        LOG_FORMAT="text",
        AUTH_RATE_LIMIT="1000000 per minute",
        REDIS_MAX_CONNECTIONS=REDIS_MAX_CONNECTIONS,
        MAX_REQUESTS=args.max_requests,
    )
    env.update({k: str(v) for k, v in env_overrides.items()})
    gunicorn = Gunicorn(directory / "gunicorn", env, extra_args=setup.args)
    try:
        gunicorn.start()
    except BaseException:  # also Ctrl-C while it boots: it runs in its own session
        with shielded():
            gunicorn.stop()
            redis.stop()
        raise
    return redis, gunicorn


@contextlib.contextmanager
def shielded():
    """Let a cleanup finish even if Ctrl-C is pressed again."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def sanity_check(gunicorn: Gunicorn) -> str:
    """Every endpoint answers 200 before it is loaded; returns the Server header."""
    import requests

    server = ""
    for cell in CELLS:
        response = requests.get(gunicorn.url + cell.path, timeout=5)
        if response.status_code != 200:
            raise RuntimeError(f"{cell.path} answered {response.status_code}: "
                               f"{response.text[:300]}")
        server = response.headers.get("Server", "")
    return server


def fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def print_table(results: list[dict]) -> None:
    header = (f"{'setup':<24} {'endpoint':<8} {'conns':>5} {'rnd':>3} {'req/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non2xx':>7} {'sockerr':>7} "
              f"{'timeout':>7}")
    print(header)
    print("-" * len(header))
    for cell in CELLS:
        for setup in SETUPS:
            for r in results:
                if r["setup"] is setup and r["cell"] is cell:
                    print(f"{setup.name:<24} {cell.name:<8} {cell.connections:>5} "
                          f"{r['round']:>3} {r['rps']:>9.0f} {fmt_ms(r['p50']):>8} "
                          f"{fmt_ms(r['p99']):>8} {fmt_ms(r['max']):>8} {r['non2xx']:>7} "
                          f"{r['sockerr']:>7} {r['timeouts']:>7}")
        print()


def print_ratios(results: list[dict], rounds: int) -> None:
    base = SETUPS[0]

    def pick(setup, cell, rnd):
        return next(r for r in results
                    if r["setup"] is setup and r["cell"] is cell and r["round"] == rnd)

    print(f"Ratios vs baseline ({base.name}), same run: req/s x (higher is better), "
          "p99 x (lower is better).")
    print("Mean of the rounds; per-round ratios (each against that round's baseline) "
          "in brackets.")
    for cell in CELLS:
        print(f"  {cell.name} ({cell.path}, {cell.connections} connections)")
        for setup in SETUPS[1:]:
            parts = []
            for key in ("rps", "p99"):
                per_round = [pick(setup, cell, n)[key] / pick(base, cell, n)[key]
                             if pick(base, cell, n)[key] else float("nan")
                             for n in range(1, rounds + 1)]
                mean_base = statistics.mean(pick(base, cell, n)[key]
                                            for n in range(1, rounds + 1))
                mean_setup = statistics.mean(pick(setup, cell, n)[key]
                                             for n in range(1, rounds + 1))
                ratio = mean_setup / mean_base if mean_base else float("nan")
                label = "req/s" if key == "rps" else "p99"
                text = f"{label} x{ratio:.2f}"
                if rounds > 1:
                    text += " [" + ", ".join(f"{x:.2f}" for x in per_round) + "]"
                parts.append(text)
            print(f"    {setup.name:<24} {parts[0]:<26} {parts[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds per cell (8)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per cell (2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over all setups; order reversed every other round (2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 3 s per cell, 1 s warm-up")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--timeout", type=float, default=5, help="wrk per-request timeout (5 s)")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="gunicorn MAX_REQUESTS (0: no worker recycling during a cell)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    if not (1 <= args.rounds <= 5 and 1 <= args.duration <= 30 and 0 <= args.warmup <= 10):
        parser.error("bounded runs only: --rounds 1-5, --duration 1-30, --warmup 0-10")
    wrk_binary = check_tools()

    cells = args.rounds * len(SETUPS) * len(CELLS)
    print(versions())
    print(f"{args.rounds} round(s) x {len(SETUPS)} setups x {len(CELLS)} endpoints; "
          f"wrk -t{args.threads} --timeout {args.timeout:g}s, {args.warmup:g} s warm-up + "
          f"{args.duration:g} s per cell (~{cells * (args.warmup + args.duration + 0.5) / 60:.1f}"
          " min of load)")
    print(f"gunicorn: 2 workers, gunicorn.conf.py, MAX_REQUESTS={args.max_requests}, "
          f"REDIS_MAX_CONNECTIONS={REDIS_MAX_CONNECTIONS} per worker, LOG_LEVEL=WARNING")
    print()

    results: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for rnd in range(1, args.rounds + 1):
            order = SETUPS if rnd % 2 else tuple(reversed(SETUPS))
            for setup in order:
                directory = Path(tmp) / f"r{rnd}-{SETUPS.index(setup)}"
                redis, server = start(setup, directory, args)
                try:
                    header = sanity_check(server)
                    print(f"round {rnd}: {setup.name} ({' '.join(setup.args)}; "
                          f"Server header: {header!r})", flush=True)
                    for cell in CELLS:
                        url = server.url + cell.path
                        if args.warmup:
                            wrk(wrk_binary, url, cell.connections, args.warmup, args.threads,
                                args.timeout)
                        figures = parse_wrk(wrk(wrk_binary, url, cell.connections,
                                                args.duration, args.threads, args.timeout))
                        results.append(dict(figures, setup=setup, cell=cell, round=rnd))
                        print(f"    {cell.name:<8} {figures['rps']:>8.0f} req/s  "
                              f"p99 {fmt_ms(figures['p99'])} ms", flush=True)
                        time.sleep(0.5)
                except Exception:
                    print(f"--- gunicorn stderr ({setup.name}) ---\n{server.stderr()[-3000:]}",
                          file=sys.stderr)
                    raise
                finally:
                    with shielded():
                        server.stop()
                        redis.stop()

    print()
    print_table(results)
    print_ratios(results, args.rounds)
    print()
    print(elapsed(started))
    return 0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> str:
    import gevent
    import gunicorn

    return (f"python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
            f"gevent {gevent.__version__}, {os.cpu_count()} cores, "
            f"load average {load_average()}")


def elapsed(started: float) -> str:
    return f"elapsed {time.monotonic() - started:.0f} s, load average at the end {load_average()}"


def run(main) -> None:
    """Run main(); SIGTERM and Ctrl-C stop it after every started process is stopped."""

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: every process this run started was stopped")


if __name__ == "__main__":
    run(main)
