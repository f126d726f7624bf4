"""Benchmark worker recycling and a killed worker under load, against no recycling.

Run with the project's venv (not part of the pytest suite, no timing assertions):

    .venv/bin/python bench/recycle.py            # ~7 min: 2 rounds, 3 setups, 60 s each
    .venv/bin/python bench/recycle.py --quick    # ~1 min: 1 round, 15 s each

Each setup gets a fresh private redis-server and gunicorn (2 workers, the
project's gunicorn.conf.py and worker class) on free loopback ports; wrk loads
one endpoint of tests.support.testapp:app for the same time in every setup:

- "recycling off": MAX_REQUESTS=0, the reference;
- "recycling on": MAX_REQUESTS low enough for several recycles per run;
- "kill -9": MAX_REQUESTS=0, one worker SIGKILLed a third into the run.

While wrk runs, the workers' /proc/<pid>/stat is sampled every 0.1 s, and
whether each accepts (its marker in the recycling board, service/recycling.py).
Printed per run: req/s, p99, timeouts and socket errors (wrk), recycles
(replacement workers that began to accept), the fewest workers accepting at any sample, and for each
replacement the CPU share of the busier worker over the 5 s after it began to
accept (cut short, and marked, if the next recycle starts before).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workers import (
    REDIS_MAX_CONNECTIONS,
    Setup,
    check_tools,
    elapsed,
    fmt_ms,
    parse_wrk,
    run,
    shielded,
    start,
    versions,
)

WINDOW = 5.0  # seconds after a replacement accepts, over which CPU shares are averaged
MIN_WINDOW = 2.0  # shorter windows (the next recycle began) are shown but not summarised
SAMPLE = 0.1
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    name: str
    max_requests: bool  # recycle at --max-requests (else MAX_REQUESTS=0)
    kill: bool = False


CASES = (
    Case("recycling off", max_requests=False),
    Case("recycling on", max_requests=True),
    Case("kill -9 one worker", max_requests=False, kill=True),
)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@dataclass
class Sampler:
    """Samples the master's children: CPU ticks and whether each accepts."""

    master: int
    samples: list = field(default_factory=list)  # (t, {pid: (ticks, accepting)})

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.board: str | None = None
        self.no_board = False
        self.started = time.monotonic()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _find_board(self, pids):
        for pid in pids:
            found = glob.glob(f"/dev/shm/gunicorn-workers-*/ready-{pid}") + glob.glob(
                os.path.join(tempfile.gettempdir(), f"gunicorn-workers-*/ready-{pid}"))
            if found:
                return os.path.dirname(found[0])
        return None

    def _run(self):
        while not self._stop.is_set():
            pids = children(self.master)
            if self.board is None and not self.no_board:
                self.board = self._find_board(pids)
                # Markers appear within a second of boot; the run starts later.
                self.no_board = self.board is None and time.monotonic() - self.started > 2
            now = time.monotonic()
            row = {}
            for pid in pids:
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    # Without a board (gunicorn's own worker class) every
                    # child counts as accepting from its fork on.
                    accepting = (self.board is None or self.no_board
                                 or os.path.exists(f"{self.board}/ready-{pid}"))
                    row[pid] = (ticks, accepting)
            self.samples.append((now, row))
            self._stop.wait(SAMPLE)


def analyse(samples, workers: int, started: float, ended: float) -> dict:
    """Fewest accepting workers, and CPU shares after each replacement accepted."""
    run = [(t, row) for t, row in samples if started <= t <= ended]
    fewest = min(sum(acc for _, acc in row.values()) for _, row in run) if run else 0
    # Time with fewer than `workers` accepting: in total, and the longest stretch.
    short, longest, stretch = 0.0, 0.0, 0.0
    for (t, row), (t2, _) in itertools.pairwise(run):
        if sum(acc for _, acc in row.values()) < workers:
            short += t2 - t
            stretch += t2 - t
            longest = max(longest, stretch)
        else:
            stretch = 0.0
    initial = {pid for pid, (_, acc) in run[0][1].items()} if run else set()
    seen_ready: set[int] = set()
    windows = []
    for i, (t, row) in enumerate(run):
        for pid, (_, acc) in row.items():
            if not acc or pid in seen_ready:
                continue
            seen_ready.add(pid)
            if pid in initial:
                continue
            # pid is a replacement that began to accept at t. Its window
            # begins once `workers` accept: the worker it replaces stops
            # accepting only after it (a recycle), or was already gone (a kill).
            begin = next((k for k in range(i, len(run))
                          if sum(a for _, a in run[k][1].values()) == workers), None)
            if begin is None:
                continue
            t, start_row = run[begin]
            serving = {p for p, (_, a) in start_row.items() if a}
            end_t, end_row, cut = t, start_row, False
            for t2, row2 in run[begin + 1:]:
                if t2 > t + WINDOW:
                    break
                if {p for p, (_, a) in row2.items() if a} != serving:
                    cut = True  # the next recycle (or a kill) changed who serves
                    break
                end_t, end_row = t2, row2
            used = {p: end_row[p][0] - start_row[p][0] for p in serving if p in end_row}
            total = sum(used.values())
            share = max(used.values()) / total if total and len(used) == workers else None
            windows.append({"at": t - started, "length": end_t - t, "cut": cut,
                            "share": share, "new_pid": pid})
    return {"fewest": fewest, "windows": windows, "short": short, "longest": longest}


def run_case(case: Case, directory: Path, args, wrk_binary: str) -> dict:
    max_requests = args.max_requests if case.max_requests else 0
    env = {"MAX_REQUESTS": max_requests, "MAX_REQUESTS_JITTER": max_requests // 2,
           "KEEPALIVE_MAX_AGE": args.keepalive_max_age}
    setup = Setup(case.name, tuple(args.gunicorn_args))
    redis, server = start(setup, directory, args, **env)
    try:
        url = server.url + args.path
        if args.warmup:
            subprocess.run([wrk_binary, "-t2", f"-c{args.connections}", f"-d{args.warmup:g}s",
                            url], capture_output=True, timeout=args.warmup + 30, check=True)
        sampler = Sampler(server.process.pid).start()
        cmd = [wrk_binary, f"-t{args.threads}", f"-c{args.connections}",
               f"-d{args.duration:g}s", f"--timeout={args.timeout:g}s", "--latency", url]
        began = time.monotonic()
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = None
        try:
            if case.kill:
                time.sleep(args.duration / 3)
                killed = random.choice(children(server.process.pid))
                os.kill(killed, signal.SIGKILL)
            out, err = load.communicate(timeout=args.duration + args.timeout + 30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        ended = time.monotonic()
        time.sleep(SAMPLE * 2)
        sampler.stop()
        if load.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {load.returncode}:\n{err}")
        figures = parse_wrk(out)
        figures.update(analyse(sampler.samples, 2, began, ended))
        figures["recycles"] = len(figures["windows"]) - (killed is not None)
        figures["killed"] = killed
        figures["max_requests"] = max_requests
        return figures
    except Exception:
        print(f"--- gunicorn stderr ({case.name}) ---\n{server.stderr()[-3000:]}", file=sys.stderr)
        raise
    finally:
        with shielded():
            server.stop()
            redis.stop()


def describe_windows(windows) -> str:
    parts = []
    for w in windows:
        share = "n/a" if w["share"] is None else f"{w['share'] * 100:.0f}/{100 - w['share'] * 100:.0f}"
        cut = f", cut at {w['length']:.1f} s" if w["cut"] else ""
        parts.append(f"{share} @{w['at']:.0f}s{cut}")
    return "; ".join(parts) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per run (60)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds (2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over the setups; order reversed every other round (2)")
    parser.add_argument("--quick", action="store_true", help="1 round, 15 s per run")
    parser.add_argument("--path", default="/test/wait?seconds=0.05",
                        help="endpoint (/test/wait?seconds=0.05: a 50 ms BLPOP)")
    parser.add_argument("--connections", type=int, default=500, help="wrk connections (500)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--timeout", type=float, default=5, help="wrk per-request timeout (5 s)")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="MAX_REQUESTS when recycling is on (default: a twelfth of the "
                             "requests the last run without recycling served, so that each "
                             "run recycles about 5 times: each waits for the last to settle); MAX_REQUESTS_JITTER is half of it")
    parser.add_argument("--keepalive-max-age", type=float, default=5,
                        help="KEEPALIVE_MAX_AGE for every setup (5 s; 0: off)")
    parser.add_argument("--gunicorn-args", nargs="*", default=[],
                        help="extra gunicorn arguments, e.g. --worker-class gevent")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 15
    if not (1 <= args.rounds <= 5 and 5 <= args.duration <= 120 and 0 <= args.warmup <= 10):
        parser.error("bounded runs only: --rounds 1-5, --duration 5-120, --warmup 0-10")
    wrk_binary = check_tools()

    print(versions())
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
          f"--timeout {args.timeout:g}s {args.path}; {args.rounds} round(s) x {len(CASES)} setups")
    print(f"gunicorn: 2 workers, gunicorn.conf.py {' '.join(args.gunicorn_args)}, "
          f"MAX_REQUESTS={args.max_requests or 'auto'} (when on; jitter half of it), "
          f"KEEPALIVE_MAX_AGE={args.keepalive_max_age:g}, "
          f"REDIS_MAX_CONNECTIONS={REDIS_MAX_CONNECTIONS}, LOG_LEVEL=WARNING")
    print()

    results = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-recycle-") as tmp:
        for rnd in range(1, args.rounds + 1):
            order = CASES if rnd % 2 else tuple(reversed(CASES))
            for case in order:
                directory = Path(tmp) / f"r{rnd}-{CASES.index(case)}"
                run_args = argparse.Namespace(**vars(args))
                if case.max_requests and not args.max_requests:
                    # Round 1 runs "recycling off" first; later rounds reuse the last.
                    reference = [r for r in results if r["case"] is CASES[0]][-1]
                    run_args.max_requests = max(100, reference["requests"] // 12)
                r = run_case(case, directory, run_args, wrk_binary)
                r.update(case=case, round=rnd)
                results.append(r)
                print(f"round {rnd}: {case.name:<20} {r['rps']:>7.0f} req/s  "
                      f"p99 {fmt_ms(r['p99']):>6} ms  max {fmt_ms(r['max']):>6} ms  "
                      f"timeouts {r['timeouts']}  sockerr {r['sockerr']}  "
                      f"recycles {r['recycles']}  fewest accepting {r['fewest']} "
                      f"(fewer than 2 for {r['short']:.1f} s, longest {r['longest']:.1f} s)"
                      + (f"  (MAX_REQUESTS={r['max_requests']})" if r["max_requests"] else ""),
                      flush=True)
                print(f"    CPU share of the busier worker, {WINDOW:g} s after each "
                      f"replacement accepted: {describe_windows(r['windows'])}", flush=True)

    print()
    base = {r["round"]: r for r in results if r["case"] is CASES[0]}
    for case in CASES[1:]:
        rows = [r for r in results if r["case"] is case]
        ratios = [r["p99"] / base[r["round"]]["p99"] for r in rows]
        shares = [w["share"] for r in rows for w in r["windows"] if w["share"] is not None
                  and w["length"] >= MIN_WINDOW]
        print(f"{case.name}: p99 x{statistics.mean(ratios):.2f} of recycling off "
              f"[{', '.join(f'{x:.2f}' for x in ratios)}], timeouts "
              f"{[r['timeouts'] for r in rows]}, recycles {[r['recycles'] for r in rows]}, "
              f"fewest accepting {min(r['fewest'] for r in rows)}, busier worker's CPU share "
              f"over windows of {MIN_WINDOW:g} s or more: "
              + (f"mean {statistics.mean(shares) * 100:.0f} %, worst {max(shares) * 100:.0f} % "
                 f"({len(shares)} windows)" if shares else "none"))
    print()
    print(elapsed(began))
    return 0


if __name__ == "__main__":
    run(main)
