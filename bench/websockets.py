"""Many idle live-event WebSockets on 2 gevent workers: memory, broadcast time, /healthz.

Run with the project's venv (not part of the pytest suite, no timing assertions):

    .venv/bin/python bench/websockets.py                      # 10,000 sockets held 60 s
    .venv/bin/python bench/websockets.py --sockets 2000 --hold 20

A fresh private redis-server and gunicorn (2 workers, the project's
gunicorn.conf.py, APP_ENV=test) on free loopback ports. One account; its
sessions open --sockets WebSockets to /api/events (a lean client: raw sockets
and epoll in one thread, answering the server's pings). Measured:
- RSS of the two workers before and with every socket open, per socket;
- time from one PUBLISH to its arrival on every socket (--broadcasts of them:
  p50, p99, max over all deliveries), client's own reading included, and the
  CPU time the workers and the client spent on each;
- /healthz latency with wrk (10 connections, 1 thread) on the idle server and
  again while every socket is held;
- sockets dropped during the hold (the server pings every 25 s; they answer).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from workers import check_tools, parse_wrk, shielded, wrk

from tests.support.processes import Gunicorn, RedisServer, base_env

PASSWORD = "correct horse battery"
PER_SESSION = 1000  # sockets per session (tabs), so the account has several sessions
CHANNEL = "events:accounts"  # service/events/__init__.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=10_000)
    p.add_argument("--hold", type=float, default=60.0, help="seconds every socket is held")
    p.add_argument("--broadcasts", type=int, default=5)
    p.add_argument("--healthz-seconds", type=float, default=10.0)
    p.add_argument("--sources", default="127.0.0.1",
                   help="comma-separated loopback source addresses (more ephemeral ports)")
    p.add_argument("--parallel", type=int, default=64, help="handshakes in flight")
    return p.parse_args(argv)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(f"need {needed} open files, the hard limit is {hard}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))


def worker_pids(gunicorn: Gunicorn) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(gunicorn.process.pid)],
                         capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid in out.split()]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ms(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far, in ms."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1000 / ticks


def login_sessions(base: str, count: int) -> tuple[str, list[str]]:
    """(uid, session ids) of `count` sessions of one new account."""
    import requests

    username = f"bench-{os.urandom(4).hex()}"
    sids = []
    with requests.Session() as http:
        token = http.get(base + "/api/csrf", timeout=10).json()["csrf_token"]
        r = http.post(base + "/api/auth/register", json={"username": username,
                      "password": PASSWORD}, headers={"X-CSRF-Token": token}, timeout=10)
        r.raise_for_status()
    for _ in range(count):
        with requests.Session() as http:
            token = http.get(base + "/api/csrf", timeout=10).json()["csrf_token"]
            r = http.post(base + "/api/auth/login", json={"username": username,
                          "password": PASSWORD}, headers={"X-CSRF-Token": token}, timeout=10)
            r.raise_for_status()
            sids.append(http.cookies["session"])
    return username, sids


def handshake(port: int, source: str, sid: str) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: http://127.0.0.1:{port}\r\nCookie: session={sid}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    sock.setblocking(False)
    return sock, rest


class Reader(threading.Thread):
    """All sockets in one epoll, in a thread of its own from the first
    handshake on: answers pings, notes when text frames arrive."""

    def __init__(self):
        super().__init__(daemon=True)
        self.epoll = select.epoll()
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()
        self.socks: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.arrivals: list[float] = []
        self.pings = 0
        self.closed = 0
        self.stopping = threading.Event()

    def add(self, sock: socket.socket, rest: bytes) -> None:
        self.incoming.put((sock, rest))

    def run(self) -> None:
        while not self.stopping.is_set():
            while not self.incoming.empty():
                sock, rest = self.incoming.get()
                self.socks[sock.fileno()] = sock
                self.buffers[sock.fileno()] = rest
                self.epoll.register(sock.fileno(), select.EPOLLIN)
            for fd, _ in self.epoll.poll(0.05):
                now = time.perf_counter()
                try:
                    data = self.socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(fd)
                    continue
                self._frames(fd, self.buffers[fd] + data, now)

    def _frames(self, fd: int, buf: bytes, now: float) -> None:
        while len(buf) >= 2:
            opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + length:
                break
            payload, buf = buf[offset:offset + length], buf[offset + length:]
            if opcode == 0x9:  # ping: a masked pong (an all-zero mask leaves it as is)
                self.pings += 1
                self.socks[fd].send(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 0x1:
                self.arrivals.append(now)
            elif opcode == 0x8:
                self._drop(fd)
                return
        self.buffers[fd] = buf

    def _drop(self, fd: int) -> None:
        self.epoll.unregister(fd)
        self.socks.pop(fd).close()
        self.closed += 1

    def close(self) -> None:
        self.stopping.set()
        self.join(5)
        for sock in self.socks.values():
            sock.close()
        self.epoll.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def healthz(binary: str, gunicorn: Gunicorn, seconds: float) -> dict:
    return parse_wrk(wrk(binary, gunicorn.url + "/healthz", 10, seconds, 1, 5))


def main(argv=None) -> int:
    args = parse_args(argv)
    binary = check_tools()
    raise_fd_limit(args.sockets + 1000)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    sessions = max(1, -(-args.sockets // PER_SESSION))
    directory = Path(tempfile.mkdtemp(prefix="bench-websockets-"))
    redis = RedisServer(directory / "redis").start()
    env = base_env(
        redis.url, WEB_CONCURRENCY=2, LOG_LEVEL="WARNING", LOG_FORMAT="text", MAX_REQUESTS=0,
        AUTH_RATE_LIMIT="1000000 per minute", LOGIN_FAILURE_LIMIT="1000000 per minute",
        # Room for every socket on either worker (the kernel need not split them evenly).
        WORKER_CONNECTIONS=args.sockets + 500, EVENTS_MAX_CONNECTIONS=args.sockets + 100,
        EVENTS_MAX_PER_ADDRESS=args.sockets, EVENTS_MAX_PER_SESSION=PER_SESSION,
    )
    gunicorn = Gunicorn(directory / "gunicorn", env)
    reader = None
    try:
        gunicorn.start()
        pids = worker_pids(gunicorn)
        print(f"gunicorn workers {pids}; {args.sockets} sockets in {sessions} sessions, "
              f"sources {sources}", flush=True)
        username, sids = login_sessions(gunicorn.url, sessions)
        with redis.client() as r:
            uid = r.get(f"username:{username}").decode()

        # Warm-up: both workers have served sockets (hub, imports) before the baseline.
        with ThreadPoolExecutor(16) as pool:
            warm = list(pool.map(lambda i: handshake(gunicorn.port, sources[0], sids[0]),
                                 range(100)))
        for sock, _ in warm:
            sock.close()
        time.sleep(2)
        idle = healthz(binary, gunicorn, args.healthz_seconds)
        before = {pid: rss_kib(pid) for pid in pids}

        reader = Reader()
        reader.start()

        def open_one(i):
            reader.add(*handshake(gunicorn.port, sources[i % len(sources)],
                                  sids[i // PER_SESSION]))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(open_one, range(args.sockets)))
        connect_s = time.perf_counter() - started
        held_since = time.perf_counter()
        time.sleep(2)
        after = {pid: rss_kib(pid) for pid in pids}
        per_worker = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{gunicorn.port} )"],
            capture_output=True, text=True, check=True).stdout
        split = {pid: per_worker.count(f"pid={pid},") for pid in pids}
        print(f"{args.sockets} sockets open in {connect_s:.1f}s; per worker {split}", flush=True)

        loaded = healthz(binary, gunicorn, args.healthz_seconds)

        deliveries, alls, server_cpu, client_cpu = [], [], [], []
        with redis.client() as r:
            for _ in range(args.broadcasts):
                reader.arrivals.clear()
                cpu0, client0 = cpu_ms(pids), time.process_time()
                t0 = time.perf_counter()
                r.publish(CHANNEL, json.dumps({"type": "sessions_changed", "uid": uid}))
                while len(reader.arrivals) < len(reader.socks) and time.perf_counter() - t0 < 30:
                    time.sleep(0.01)
                got = [(t - t0) * 1000 for t in reader.arrivals]
                server_cpu.append(cpu_ms(pids) - cpu0)
                client_cpu.append((time.process_time() - client0) * 1000)
                deliveries += got
                alls.append(max(got) if got else float("nan"))
                print(f"broadcast: {len(got)}/{len(reader.socks)} in {alls[-1]:.0f} ms; CPU: "
                      f"workers {server_cpu[-1]:.0f} ms, client {client_cpu[-1]:.0f} ms",
                      flush=True)
                time.sleep(2)

        remaining = args.hold - (time.perf_counter() - held_since)
        if remaining > 0:
            time.sleep(remaining)
        held = time.perf_counter() - held_since
        open_at_end = len(reader.socks)

        grown = sum(after.values()) - sum(before.values())
        print()
        print(f"sockets: {args.sockets}, held {held:.0f} s, open at the end: {open_at_end} "
              f"(dropped: {reader.closed}), pings answered: {reader.pings}")
        print(f"connect: {connect_s:.1f} s ({args.sockets / connect_s:.0f} handshakes/s, "
              f"{args.parallel} in flight)")
        print(f"worker RSS: {sum(before.values()) / 1024:.0f} MiB -> "
              f"{sum(after.values()) / 1024:.0f} MiB: {grown / args.sockets:.1f} KiB per socket")
        if deliveries:
            print(f"broadcast to all ({args.broadcasts}x): p50 {percentile(deliveries, .5):.0f} ms,"
                  f" p99 {percentile(deliveries, .99):.0f} ms, max {max(deliveries):.0f} ms; "
                  f"all delivered in {statistics.median(alls):.0f} ms (median of broadcasts)")
            print(f"CPU per broadcast (median): workers {statistics.median(server_cpu):.0f} ms "
                  f"({statistics.median(server_cpu) * 1000 / args.sockets:.0f} us per socket), "
                  f"client {statistics.median(client_cpu):.0f} ms")
        for name, result in (("idle", idle), ("sockets held", loaded)):
            print(f"/healthz {name}: {result['rps']:.0f} req/s, p50 {result['p50']:.1f} ms, "
                  f"p99 {result['p99']:.1f} ms, max {result['max']:.1f} ms "
                  f"(wrk -c10 -t1 {args.healthz_seconds:g}s)")
    finally:
        with shielded():
            if reader is not None:
                reader.close()
            gunicorn.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
