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
the CPU each request costs. On a shared machine it still varies by +-5 % from
one run to the next, more than metrics cost, so the script also times the
app's whole WSGI stack (middleware, Flask, hooks, the view) in process with
metrics off and on, in processes set up as a gunicorn worker is (multiprocess
files, prometheus_client imported before gevent patches, then patched), and
gives the difference as a share of the worker's CPU per request measured
here. See bench/README.md.
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


# Run in a fresh interpreter, set up as a gunicorn worker is: with metrics on,
# the multiprocess files and prometheus_client imported before gevent patches
# (gunicorn.conf.py does it in the master), then patched.
STACK = """
import io, os, secrets, sys, tempfile, timeit
mode, root, redis_url = sys.argv[1:4]
if mode == "on":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-mp-")
    os.environ["METRICS_BIND"] = "127.0.0.1:9"  # never served here
    import prometheus_client.multiprocess
from gevent import monkey
monkey.patch_all()
sys.path.insert(0, root)
os.environ.update(DOTENV_PATH=os.devnull, APP_ENV="test", SECRET_KEY=secrets.token_urlsafe(48),
                  REDIS_URL=redis_url, LOG_LEVEL="WARNING", LOG_FORMAT="text")
import gc
from tests.support.testapp import app
from service import metrics
def start_response(status, headers, exc_info=None):
    assert status.startswith("200"), status
sys.path.insert(0, os.path.join(root, "bench"))
from request_cost import environ_for  # the gunicorn-like environ bench/request_cost.py uses
for path in sys.argv[4:]:
    environ = dict(environ_for(path, None), **{"wsgi.input": io.BytesIO()})
    calls = 0
    def one():
        global calls
        body = app.wsgi_app(dict(environ), start_response)
        for _ in body:
            pass
        body.close()
        calls += 1
        if mode == "on" and calls % 1000 == 0:  # the publisher, once a second
            metrics.publish()
    one()
    gc.freeze()  # as service/worker.py does after boot
    n = 5000
    print(path, min(timeit.repeat(one, number=n, repeat=7)) / n * 1e6)
"""


def stack_cost(redis_url: str, paths, rounds: int) -> dict[tuple[str, str], float]:
    """µs per request through the app's whole WSGI stack (middleware, Flask,
    hooks, view), in process, with metrics off and on: what metrics add to a
    request, wherever in the app they add it, without the network and with
    far less noise than the worker's CPU under wrk. Best of ``rounds``
    alternating processes."""
    best: dict[tuple[str, str], float] = {}
    for rnd in range(rounds):
        for mode in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
            out = subprocess.run(
                [sys.executable, "-c", STACK, mode, str(BENCH.parent), redis_url, *paths],
                check=True, capture_output=True, text=True, timeout=600).stdout
            for line in out.splitlines():
                path, value = line.split()
                best[(mode, path)] = min(best.get((mode, path), float("inf")), float(value))
    return best


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
            stack = stack_cost(redis.url, paths, max(2, args.rounds))
        finally:
            with shielded():
                redis.stop()
    print("\nworker CPU per request, median of rounds (change against metrics off):")
    for path in paths:
        base = statistics.median(results[("metrics off", path)])
        for name in setups:
            value = statistics.median(results[(name, path)])
            print(f"  {path:9} {name:20} {value:7.1f} µs  {(value / base - 1) * 100:+6.1f} %")
    print("\nthe app's WSGI stack in process, metrics off -> on (best of "
          f"{max(2, args.rounds)} processes x 7 x 5000 calls):")
    for path in paths:
        off, on = stack[("off", path)], stack[("on", path)]
        base = statistics.median(results[("metrics off", path)])
        print(f"  {path:9} {off:6.1f} -> {on:6.1f} µs: {on - off:+5.1f} µs = "
              f"{(on - off) / base * 100:+.1f} % of the worker CPU per request with metrics off "
              f"({base:.0f} µs, median above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
