"""The full kit against its peers, same routes, one sitting.

    .venv/bin/python bench/peers.py               # default cells, 2 rounds: ~18 min
    .venv/bin/python bench/peers.py --quick       # 1 round, short cells: ~5 min
    .venv/bin/python bench/peers.py --routes io,hello --conns 10,100,1000 --rounds 3

Peers (2 workers each, fresh redis-server and server per cell, loopback):
  kit        the project: gunicorn.conf.py, service.worker.GeventWorker,
             APP_ENV=production defaults (sessions, security headers, request id,
             access log at INFO, limiter, CSRF, Host check), MAX_REQUESTS=0
  gevent     bare Flask on stock gunicorn -k gevent (cookie sessions)
  flask-session  bare Flask + Flask-Session's stock Redis interface, -k gevent
  uvicorn    Quart on uvicorn --loop uvloop --http httptools
  granian    bare Flask on granian --interface wsgi (blocking threads)

The peers' packages come from bench/requirements-peers.txt, installed by this
script into bench/.venv-peers; the kit runs from the project's .venv. Prints a
table and ratios, writes a JSON file and renders charts into
docs/performance.md (--no-doc to skip). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench.workers import fmt_ms, parse_wrk, shielded, wrk
from tests.support.processes import (
    Gunicorn,
    ManagedProcess,
    RedisServer,
    base_env,
    free_port,
)

PEERS_VENV = BENCH / ".venv-peers"
BEGIN, END = "<!-- bench/peers.py: begin -->", "<!-- bench/peers.py: end -->"
PEERS_REQUIREMENTS = BENCH / "requirements-peers.txt"
DOCS = ROOT / "docs"
ROUTES = ("io", "hello", "cpu", "redis", "session")
CONNS = (10, 100, 1000)
# The default sitting: the cells the targets in bench/README.md are about.
DEFAULT_CELLS = (("io", 1000), ("io", 100), ("hello", 100), ("hello", 10), ("cpu", 10),
                 ("redis", 1000), ("session", 100), ("session", 1000))
PEERS = ("kit", "gevent", "flask-session", "uvicorn", "granian")
WORKERS = 2
NGINX_BENCH_ARGS = ("--app-rate", "1000000r/s", "--app-burst", "1000000",
                    "--app-conn-per-address", "60000", "--conn-per-address", "60000")
GRANIAN_THREADS = 64
TICKS = os.sysconf("SC_CLK_TCK")


# -- the peers' venv ---------------------------------------------------------

def ensure_peers_venv() -> Path:
    """bench/.venv-peers with requirements.txt + requirements-peers.txt."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    wanted = (ROOT / "requirements.txt").read_text() + PEERS_REQUIREMENTS.read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return PEERS_VENV / "bin"
    print(f"installing the peers into {PEERS_VENV} ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"),
                    "-r", str(PEERS_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return PEERS_VENV / "bin"


# -- servers -------------------------------------------------------------------

class PeerServer(ManagedProcess):
    """A peer's server on a free loopback port, ready when /hello answers."""

    def __init__(self, name: str, argv: list[str], env: dict, directory: Path, port: int):
        super().__init__(name, directory / "server.log")
        directory.mkdir(parents=True, exist_ok=True)
        self.argv, self.env, self.port = argv, env, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> PeerServer:
        import requests

        self.spawn(self.argv, stdout=self.log_path, cwd=ROOT, env=self.env)
        self.wait_ready(lambda: requests.get(self.url + "/hello", timeout=1).ok, timeout,
                        f"{self.name} on port {self.port}")
        return self

    def stderr(self) -> str:
        return self.log()


def start_server(peer: str, directory: Path, redis_url: str, peers_bin: Path):
    secret = secrets.token_urlsafe(48)
    if peer == "kit":
        env = base_env(
            redis_url,
            APP_ENV="production",
            SECRET_KEY=secret,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            WEB_CONCURRENCY=WORKERS,
            MAX_REQUESTS=0,
            LOG_FORMAT=os.environ.get("BENCH_KIT_LOG_FORMAT", "text"),
            LOG_LEVEL="INFO",
        )
        # Settings to try on the kit: KIT_EXTRA_ENV="ACCESS_LOG=true GEVENT_LOOP=libuv".
        for item in os.environ.get("KIT_EXTRA_ENV", "").split():
            key, _, value = item.partition("=")
            env[key] = value
        server = Gunicorn(directory, env, app="bench.kit_app:app")
        server.start(timeout=30)
        return server
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "REDIS_URL": redis_url, "SECRET_KEY": secret,
           "PYTHONPATH": str(ROOT)}
    stock_conf = directory / "stock.conf.py"
    directory.mkdir(parents=True, exist_ok=True)
    stock_conf.write_text("# stock gunicorn: every setting at its default\n")
    gunicorn = [str(peers_bin / "gunicorn"), "--config", str(stock_conf), "-k", "gevent",
                "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    if peer == "gevent":
        argv = [*gunicorn, "bench.peer_flask:app"]
    elif peer == "flask-session":
        argv = [*gunicorn, "bench.peer_flask:app"]
        env["PEER_SESSIONS"] = "flask-session"
    elif peer == "uvicorn":
        argv = [str(peers_bin / "uvicorn"), "--loop", "uvloop", "--http", "httptools",
                "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", "bench.peer_quart:app"]
    elif peer == "granian":
        argv = [str(peers_bin / "granian"), "--interface", "wsgi", "--workers", str(WORKERS),
                "--blocking-threads", str(GRANIAN_THREADS), "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning",
                "bench.peer_flask:app"]
    else:
        raise ValueError(peer)
    return PeerServer(peer, argv, env, directory, port).start()


# -- /proc: the server's CPU time and its workers' memory ----------------------

def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
    return total / TICKS


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """The largest worker RSS seen while a cell runs (workers: every process
    under the server's root process)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = root, 0.0, threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            for pid in process_tree(self.root)[1:]:
                self.peak = max(self.peak, rss_mib(pid))


# -- one cell ------------------------------------------------------------------

def session_cookie(url: str, peer: str) -> str:
    """Create a session through the route itself; its cookie for wrk."""
    import requests

    response = requests.get(url + "/session", timeout=5)
    response.raise_for_status()
    raw = response.raw.headers.getlist("Set-Cookie") if hasattr(response.raw.headers, "getlist") \
        else [response.headers.get("Set-Cookie", "")]
    pairs = [c.split(";", 1)[0] for c in raw if c]
    if not pairs:
        raise RuntimeError(f"{peer}: /session set no cookie")
    return "; ".join(pairs)


def run_cell(peer, route, conns, rnd, tmp, args, wrk_binary, peers_bin) -> dict:
    directory = Path(tmp) / f"r{rnd}-{peer}-{route}-{conns}"
    redis = RedisServer(directory / "redis").start()
    server = None
    try:
        server = start_server(peer, directory / "server", redis.url, peers_bin)
        url = server.url + f"/{route}"
        headers = []
        if route == "session":
            headers = ["-H", f"Cookie: {session_cookie(server.url, peer)}"]
        if args.warmup:
            wrk(wrk_binary, url, conns, args.warmup, args.threads, args.timeout, headers)
        pids = process_tree(server.process.pid)
        sampler = RssSampler(server.process.pid)
        before = cpu_seconds(pids)
        sampler.start()
        try:
            output = wrk(wrk_binary, url, conns, args.duration, args.threads, args.timeout,
                         headers)
        finally:
            sampler.done.set()
            sampler.join()
        after = cpu_seconds(pids)
        figures = parse_wrk(output)
        figures["cpu_us"] = (after - before) * 1e6 / max(figures["requests"], 1)
        figures["rss_mib"] = sampler.peak
        if route == "session" and peer == "kit":
            figures["session_check"] = check_kit_session(redis)
        return dict(figures, peer=peer, route=route, conns=conns, round=rnd)
    except Exception:
        if server is not None:
            print(f"--- {peer} log ---\n{server.stderr()[-3000:]}", file=sys.stderr)
        raise
    finally:
        with shielded():
            if server is not None:
                server.stop()
            redis.stop()


def check_kit_session(redis) -> int:
    """Sessions in Redis after the /session cell (one: the client's)."""
    with redis.client() as client:
        return sum(1 for _ in client.scan_iter("session:*", count=1000))


# -- h2load through nginx (one cell) -------------------------------------------

def h2load_cell(tmp: str, args) -> dict | None:
    """The kit behind the project's nginx (TLS, HTTP/2, unix socket upstream)."""
    h2load = shutil.which("h2load")
    if not h2load:
        print("h2load not installed (apt-get install -y nghttp2-client): skipping the "
              "nginx cell", flush=True)
        return None
    from tests.support.nginx import Nginx
    from tests.support.tls import LocalCA

    directory = Path(tmp) / "h2"
    redis = RedisServer(directory / "redis").start()
    stack = contextlib.ExitStack()
    try:
        stack.callback(redis.stop)
        env = base_env(redis.url, APP_ENV="production", ALLOWED_HOSTS="localhost",
                       WEB_CONCURRENCY=WORKERS, MAX_REQUESTS=0, LOG_LEVEL="INFO",
                       LOG_FORMAT="text")
        socket_path = directory / "gunicorn.sock"
        server = Gunicorn(directory / "gunicorn", env, app="bench.kit_app:app",
                          bind=f"unix:{socket_path}")
        server.start(timeout=30)
        stack.callback(server.stop)
        ca = LocalCA(directory / "ca")
        cert = ca.issue("localhost")
        # One load generator on one address stands for many clients: lift the
        # per-address limits (deploy/nginx/render --help), keep everything else.
        nginx = Nginx(directory / "nginx", upstream=f"unix:{socket_path}", certs=[cert],
                      ca_file=ca.cert_path, server_names=("localhost",),
                      render_args=NGINX_BENCH_ARGS).start()
        stack.callback(nginx.stop)
        url = f"https://localhost:{nginx.https_port}/hello"
        cmd = [h2load, "-c", "100", "-m", "10", "-t", "2", "-D", f"{args.duration:g}",
               "--warm-up-time", f"{max(args.warmup, 1):g}", url]
        pids = process_tree(server.process.pid)
        before = cpu_seconds(pids)
        done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                              timeout=args.duration + args.warmup + 60)
        after = cpu_seconds(pids)
        out = done.stdout
        import re

        finished = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
        counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        mean = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
        if not (finished and counts and codes):
            raise RuntimeError(f"unexpected h2load output:\n{out}\n{done.stderr}")
        result = {
            "cell": "kit /hello through nginx (TLS, HTTP/2), h2load -c100 -m10",
            "rps": float(finished.group(1)),
            "requests": int(counts.group(3)),
            "failed": int(counts.group(5)) + int(counts.group(6)),
            "timeouts": int(counts.group(7)),
            "non2xx": sum(int(codes.group(i)) for i in (2, 3, 4)),
            "mean_ms": mean.group(3) if mean else None,
            "app_cpu_us": (after - before) * 1e6 / max(int(counts.group(3)), 1),
        }
        return result
    finally:
        with shielded():
            stack.close()


# -- output --------------------------------------------------------------------

def mean_of(results, peer, route, conns, key):
    values = [r[key] for r in results if (r["peer"], r["route"], r["conns"]) == (peer, route, conns)]
    return statistics.mean(values) if values else None


def summary(results, cells, peers) -> list[dict]:
    rows = []
    for route, conns in cells:
        for peer in peers:
            runs = [r for r in results if (r["peer"], r["route"], r["conns"]) == (peer, route, conns)]
            if not runs:
                continue
            row = {"peer": peer, "route": route, "conns": conns, "rounds": len(runs)}
            for key in ("rps", "p50", "p99", "cpu_us", "rss_mib"):
                row[key] = statistics.mean(r[key] for r in runs)
            for key in ("timeouts", "non2xx", "sockerr"):
                row[key] = sum(r[key] for r in runs)
            row["rps_range"] = [min(r["rps"] for r in runs), max(r["rps"] for r in runs)]
            for base in ("uvicorn", "gevent"):
                base_rps = mean_of(results, base, route, conns, "rps")
                base_cpu = mean_of(results, base, route, conns, "cpu_us")
                row[f"rps_x_{base}"] = row["rps"] / base_rps if base_rps else None
                row[f"cpu_x_{base}"] = row["cpu_us"] / base_cpu if base_cpu else None
            fs = mean_of(results, "flask-session", route, conns, "rps")
            row["rps_x_flask-session"] = row["rps"] / fs if fs else None
            rows.append(row)
    return rows


def ratio(value) -> str:
    return f"{value:.2f}" if value is not None else "-"


def table_lines(rows) -> list[str]:
    head = ("| cell | peer | req/s | p50 ms | p99 ms | timeouts | non-2xx | CPU us/req | "
            "worker RSS MiB | req/s x uvicorn | req/s x gevent | CPU x gevent |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| /{r['route']} c={r['conns']} | {r['peer']} | {r['rps']:,.0f} "
            f"({r['rps_range'][0]:,.0f}-{r['rps_range'][1]:,.0f}) | {fmt_ms(r['p50'])} | "
            f"{fmt_ms(r['p99'])} | {r['timeouts']} | {r['non2xx'] + r['sockerr']} | "
            f"{r['cpu_us']:.0f} | {r['rss_mib']:.1f} | {ratio(r['rps_x_uvicorn'])} | "
            f"{ratio(r['rps_x_gevent'])} | {ratio(r['cpu_x_gevent'])} |")
    return lines


def targets(rows) -> list[str]:
    """The kit's targets (bench/README.md), checked on this run's ratios."""
    kit = {(r["route"], r["conns"]): r for r in rows if r["peer"] == "kit"}
    lines = []

    def check(label, ok, detail):
        lines.append(f"- [{'x' if ok else ' '}] {label}: {detail}")

    for route in ("hello", "io"):
        cells = [r for (rt, _), r in kit.items() if rt == route and r["cpu_x_gevent"]]
        if cells:
            worst = max(r["cpu_x_gevent"] for r in cells)
            check(f"CPU per request on /{route} <= 1.3x bare gevent", worst <= 1.3,
                  ", ".join(f"c={r['conns']} {r['cpu_x_gevent']:.2f}x" for r in cells))
    for route, conns, key, goal in (("io", 1000, "rps_x_uvicorn", 0.8),
                                    ("hello", 100, "rps_x_uvicorn", 0.6),
                                    ("session", 100, "rps_x_flask-session", 1.0),
                                    ("session", 1000, "rps_x_flask-session", 1.0)):
        r = kit.get((route, conns))
        if r and r[key] is not None:
            base = key.split("_x_")[1]
            check(f"/{route} c={conns} >= {goal}x {base}", r[key] >= goal, f"{r[key]:.2f}x")
    if kit:
        bad = [f"/{r['route']} c={r['conns']}" for r in kit.values()
               if r["p99"] > 3 * r["p50"] or r["timeouts"] or r["non2xx"] or r["sockerr"]]
        check("every kit cell: p99 <= 3x p50, 0 timeouts, 0 errors", not bad,
              "all cells" if not bad else "not: " + ", ".join(bad))
    r = kit.get(("io", 1000))
    if r:
        check("worker RSS under /io c=1000 <= 60 MiB", r["rss_mib"] <= 60,
              f"{r['rss_mib']:.1f} MiB")
    return lines


def write_doc(report: dict, rows, cells, peers, peers_bin: Path) -> None:
    images = DOCS / "performance"
    chart_files = []
    # matplotlib lives in the peers' venv, not in the project's.
    done = subprocess.run([str(peers_bin / "python"), str(BENCH / "charts.py"), report["json"],
                           str(images)], check=False, capture_output=True, text=True, cwd=ROOT)
    if done.returncode == 0:
        chart_files = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        print(f"charts failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    lines = [
        BEGIN,
        "## The kit against its peers (`bench/peers.py`)",
        "",
        "Written by `bench/peers.py` between these markers (bench/README.md says how to run",
        "it and what each peer is); the rest of this file is left alone.",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- load average at start: {report['load_start']}; at the end: {report['load_end']}",
        f"- versions: {report['versions']}",
        "",
        "wrk runs on the same cores as the servers; absolute figures move with whatever else",
        "runs on the machine. Compare the ratios, measured in the same run. Only the kit and",
        "Flask-Session keep sessions in Redis: the other peers' `/session` is a signed cookie.",
        "",
        "### Targets",
        "",
        *report["targets"],
        "",
        "### Charts",
        "",
        *[f"![{name}](performance/{name})" for name in chart_files],
        "",
        "### Table (mean of the rounds; req/s range in brackets)",
        "",
        *table_lines(rows),
        "",
    ]
    if report.get("h2load"):
        h = report["h2load"]
        lines += ["### Through nginx", "",
                  (f"{h['cell']}: {h['rps']:,.0f} req/s, {h['requests']:,} requests, "
                  f"{h['failed']} failed, {h['timeouts']} timeouts, {h['non2xx']} non-2xx, "
                  f"mean {h['mean_ms']}, app CPU {h['app_cpu_us']:.0f} us per request "
                  "(gunicorn only; nginx's own CPU not counted)."), ""]
    notes = DOCS / "performance-notes.md"
    if notes.exists():  # hand-written: what moved what; kept across runs
        lines += [notes.read_text().rstrip()]
    lines.append(END)
    DOCS.mkdir(exist_ok=True)
    doc = DOCS / "performance.md"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    section = "\n".join(lines)
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        text = head + section + rest.partition(END)[2]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


def parse_list(text: str | None, allowed, kind=str):
    if text is None:
        return None
    items = [kind(x) for x in text.split(",") if x]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}: choose from {', '.join(map(str, allowed))}")
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", help=f"comma-separated, of {','.join(ROUTES)}")
    parser.add_argument("--conns", help="comma-separated connection counts, of 10,100,1000")
    parser.add_argument("--full", action="store_true", help="every route x every count")
    parser.add_argument("--peers", help=f"comma-separated, of {','.join(PEERS)}")
    parser.add_argument("--duration", type=float, default=8, help="seconds per cell (8)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per cell (2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds; the peers' order is reversed every other round (2)")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s warm-up, 3 s cells")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--timeout", type=float, default=5, help="wrk per-request timeout (5 s)")
    parser.add_argument("--json", default=None, help="where to write the results "
                        "(default docs/performance/peers.json)")
    parser.add_argument("--no-doc", action="store_true",
                        help="do not rewrite docs/performance.md and its charts")
    parser.add_argument("--no-h2load", action="store_true", help="skip the nginx + h2load cell")
    parser.add_argument("--render", metavar="JSON",
                        help="only rewrite docs/performance.md from an earlier run's JSON")
    args = parser.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report["json"] = args.render
        cells = [tuple(cell) for cell in report["cells"]]
        write_doc(report, report["summary"], cells, report["peers"], ensure_peers_venv())
        print(f"wrote {DOCS / 'performance.md'}")
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    if not (1 <= args.rounds <= 5 and 1 <= args.duration <= 60 and 0 <= args.warmup <= 10):
        parser.error("bounded runs only: --rounds 1-5, --duration 1-60, --warmup 0-10")
    routes = parse_list(args.routes, ROUTES)
    conns = parse_list(args.conns, CONNS, int)
    if args.full or routes or conns:
        cells = [(r, c) for r in (routes or ROUTES) for c in (conns or CONNS)]
    else:
        cells = list(DEFAULT_CELLS)
    peers = parse_list(args.peers, PEERS) or list(PEERS)
    wrk_binary = shutil.which("wrk")
    if not wrk_binary or not shutil.which("redis-server"):
        sys.exit("bench/peers.py needs wrk and redis-server: apt-get install -y wrk redis-server "
                 "(and nghttp2-client for h2load)")
    peers_bin = ensure_peers_venv()

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    per_cell = args.warmup + args.duration + 2.5
    print(f"{len(cells)} cells x {len(peers)} peers x {args.rounds} round(s), "
          f"{args.warmup:g} s warm-up + {args.duration:g} s each: "
          f"~{len(cells) * len(peers) * args.rounds * per_cell / 60:.0f} min; "
          f"load average {load_start}", flush=True)
    results: list[dict] = []
    h2 = None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for rnd in range(1, args.rounds + 1):
            order = peers if rnd % 2 else list(reversed(peers))
            for route, conn in cells:
                for peer in order:
                    r = run_cell(peer, route, conn, rnd, tmp, args, wrk_binary, peers_bin)
                    results.append(r)
                    print(f"r{rnd} /{route:<7} c={conn:<5} {peer:<14} {r['rps']:>8.0f} req/s  "
                          f"p50 {fmt_ms(r['p50']):>6}  p99 {fmt_ms(r['p99']):>6} ms  "
                          f"to {r['timeouts']:<4} err {r['non2xx'] + r['sockerr']:<6} "
                          f"cpu {r['cpu_us']:>5.0f} us  rss {r['rss_mib']:.1f} MiB", flush=True)
        if not args.no_h2load and "kit" in peers:
            h2 = h2load_cell(tmp, args)
            if h2:
                print(f"h2load: {h2}", flush=True)
    rows = summary(results, cells, peers)
    print()
    print("\n".join(table_lines(rows)))
    target_lines = targets(rows)
    print()
    print("\n".join(target_lines))
    import gevent
    import gunicorn

    report = {
        "command": "bench/peers.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores "
                   f"({cpu_model()}), {platform.platform()}",
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": f"python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
                    f"gevent {gevent.__version__}; peers: "
                    + ", ".join(line for line in
                                PEERS_REQUIREMENTS.read_text().split("# Transitive")[0].split()
                                if "==" in line),
        "cells": cells, "peers": peers, "args": vars(args),
        "results": results, "summary": rows, "targets": target_lines, "h2load": h2,
        "elapsed_s": round(time.monotonic() - started),
    }
    json_path = Path(args.json) if args.json else DOCS / "performance" / "peers.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report["json"] = str(json_path)
    json_path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {json_path}; elapsed {report['elapsed_s']} s")
    if not args.no_doc:
        write_doc(report, rows, cells, peers, peers_bin)
        print(f"wrote {DOCS / 'performance.md'}")
    return 0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: every process this run started was stopped")
