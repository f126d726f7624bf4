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
the CPU each request costs. On a shared machine it still varies by tens of
percent from one run to the next, so the script also times the instrumentation
itself (what RequestLog and the Redis pool call per request, in a process set
up as a gunicorn worker is: multiprocess files, prometheus_client imported
before gevent patches, then patched), and gives it as a share of the
worker's CPU per request measured here. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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


def measure(binary, redis, directory: Path, name: str, args, paths) -> dict[str, float]:
    overrides = {k: v.format(port=free_port()) for k, v in SETUPS[name].items()}
    env = base_env(redis.url, WEB_CONCURRENCY=1, LOG_LEVEL="WARNING", LOG_FORMAT="text",
                   MAX_REQUESTS=0, **overrides)
    gunicorn = Gunicorn(directory, env).start()
    try:
        workers = worker_pids(gunicorn.process.pid)
        result = {}
        for path in paths:
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


# Run in a fresh interpreter, set up as a gunicorn worker with metrics on.
MICRO = """
import os, sys, time, timeit
import prometheus_client.multiprocess  # imported by the master, as gunicorn.conf.py does
from gevent import monkey
monkey.patch_all()
sys.path.insert(0, sys.argv[1])
from service import metrics
request = metrics.RequestMetrics()
environ = {"service.route": "/healthz", "REQUEST_METHOD": "GET"}
import queue
pool = metrics.timed_queue_class("main", 50)(50)
plain = queue.LifoQueue(50)  # redis-py's own queue class, for the difference
for _ in range(50):
    pool.put(None)
    plain.put(None)
def one_request():
    request.started()
    request.finished(environ, "200", 0.001)
def one_redis_command():
    pool.put(pool.get(True, 5))
def one_plain_command():
    plain.put(plain.get(True, 5))
n = 50000
for name, fn in (("request", one_request), ("redis", one_redis_command),
                 ("plain", one_plain_command)):
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
    print(name, f"{best:.2f}")
"""


def instrumentation_cost() -> dict[str, float]:
    """µs per request (middleware) and per Redis command (pool) of metrics."""
    with tempfile.TemporaryDirectory(prefix="bench-metrics-mp-") as directory:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
        out = subprocess.run([sys.executable, "-c", MICRO, str(BENCH.parent)], env=env,
                             check=True, capture_output=True, text=True, timeout=300).stdout
    return {name: float(value) for name, value in (line.split() for line in out.splitlines())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s per cell")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated, from: " + ", ".join(SETUPS))
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated")
    args = parser.parse_args()
    setups = [name for name in args.setups.split(",") if name]
    paths = [path for path in args.paths.split(",") if path]
    if "metrics off" not in setups or set(setups) - set(SETUPS) or set(paths) - set(PATHS):
        parser.error(f"--setups must include 'metrics off' and name only {list(SETUPS)}; "
                     f"--paths only {list(PATHS)}")
    if args.quick:
        args.rounds, args.duration = 1, 3
    binary = check_tools()
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            for rnd in range(args.rounds):
                names = setups if rnd % 2 == 0 else list(reversed(setups))
                for name in names:
                    got = measure(binary, redis, Path(tmp) / f"{rnd}-{name}".replace(" ", "_"),
                                  name, args, paths)
                    for path, value in got.items():
                        results.setdefault((name, path), []).append(value)
                    print(f"round {rnd + 1} {name}: "
                          + ", ".join(f"{p} {v:.0f} µs" for p, v in got.items()), flush=True)
        finally:
            with shielded():
                redis.stop()
    print("\nworker CPU per request, median of rounds (change against metrics off):")
    for path in paths:
        base = statistics.median(results[("metrics off", path)])
        for name in setups:
            value = statistics.median(results[(name, path)])
            print(f"  {path:9} {name:20} {value:7.1f} µs  {(value / base - 1) * 100:+6.1f} %")
    cost = instrumentation_cost()
    print("\nthe instrumentation itself (best of 5 x 50000 calls):")
    print(f"  per request (RequestLog: in flight, counter, histogram): {cost['request']:.2f} µs")
    redis = max(0.0, cost["redis"] - cost["plain"])
    print(f"  per Redis command (pool peak, wait when exhausted):      {redis:.2f} µs "
          f"({cost['redis']:.2f} against {cost['plain']:.2f} for redis-py's own queue)")
    for path, commands in (("/healthz", 0), ("/readyz", 1)):
        if path not in paths:
            continue
        base = min(results[("metrics off", path)])
        added = cost["request"] + commands * redis
        print(f"  {path:9} {added:5.1f} µs = {added / base * 100:.1f} % of the least worker CPU "
              f"per request measured with metrics off ({base:.0f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
