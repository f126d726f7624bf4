"""What metrics and the blocked-hub watchdog cost: server CPU per request.

    .venv/bin/python bench/metrics.py             # 3 rounds, 6 s per cell: ~3 min
    .venv/bin/python bench/metrics.py --quick     # 1 round, 3 s per cell

Three setups of one gevent worker (the project's gunicorn.conf.py, a private
redis-server), run in alternating order each round: metrics off, metrics on
(METRICS_BIND), metrics on plus the watchdog (BLOCKED_HUB_THRESHOLD=0.2).
wrk loads /healthz (no Redis: the per-request overhead at its largest
relative share) and /readyz (a Redis PING through an instrumented pool).
The figure is the worker's CPU time (utime + stime from /proc) divided by the
requests wrk completed, so a busy machine changes throughput but much less
the CPU each request costs. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from workers import check_tools, parse_wrk, shielded, wrk

from tests.support.processes import Gunicorn, RedisServer, base_env, free_port

SETUPS = {
    "metrics off": {},
    "metrics on": {"METRICS_BIND": "127.0.0.1:{port}"},
    "metrics + watchdog": {"METRICS_BIND": "127.0.0.1:{port}", "BLOCKED_HUB_THRESHOLD": "0.2"},
}
PATHS = ("/healthz", "/readyz")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    # The metrics exporter is a child too; only gunicorn workers serve requests.
    return [int(p) for p in children
            if b"metrics_exporter" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def measure(binary, redis, directory: Path, name: str, args) -> dict[str, float]:
    overrides = {k: v.format(port=free_port()) for k, v in SETUPS[name].items()}
    env = base_env(redis.url, WEB_CONCURRENCY=1, LOG_LEVEL="WARNING", LOG_FORMAT="text",
                   MAX_REQUESTS=0, **overrides)
    gunicorn = Gunicorn(directory, env).start()
    try:
        workers = worker_pids(gunicorn.process.pid)
        result = {}
        for path in PATHS:
            url = gunicorn.url + path
            wrk(binary, url, args.connections, args.warmup, 1, 5)
            before = sum(cpu_seconds(p) for p in workers)
            done = parse_wrk(wrk(binary, url, args.connections, args.duration, 1, 5))
            used = sum(cpu_seconds(p) for p in workers) - before
            if done["non2xx"] or done["sockerr"] or done["timeouts"]:
                raise RuntimeError(f"{name} {path}: failed requests {done}")
            result[path] = used / done["requests"] * 1e6  # µs per request
        return result
    finally:
        with shielded():
            gunicorn.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s per cell")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3
    binary = check_tools()
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            for rnd in range(args.rounds):
                names = list(SETUPS) if rnd % 2 == 0 else list(reversed(SETUPS))
                for name in names:
                    got = measure(binary, redis, Path(tmp) / f"{rnd}-{name}".replace(" ", "_"),
                                  name, args)
                    for path, value in got.items():
                        results.setdefault((name, path), []).append(value)
                    print(f"round {rnd + 1} {name}: "
                          + ", ".join(f"{p} {v:.0f} µs" for p, v in got.items()), flush=True)
        finally:
            with shielded():
                redis.stop()
    print("\nworker CPU per request, median of rounds (change against metrics off):")
    for path in PATHS:
        base = statistics.median(results[("metrics off", path)])
        for name in SETUPS:
            value = statistics.median(results[(name, path)])
            print(f"  {path:9} {name:20} {value:7.1f} µs  {(value / base - 1) * 100:+6.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
