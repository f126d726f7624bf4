"""One client cannot take the service from the others: a slow-loris of
1,100 partial headers and an HTTP/2 rapid-reset burst, against the
production render (nginx_front: deploy/nginx/render's defaults, gunicorn
with gevent workers on a unix socket, Redis).

The attacker always comes from another loopback address (127.0.0.2), so the
per-address limits apply to it and not to the client that is measured."""

from __future__ import annotations

import collections
import contextlib
import importlib.machinery
import importlib.util
import json
import re
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from tests.support import h2frames
from tests.support.load import KeepAliveLoad
from tests.support.nginx import RENDER, _ResolvedHTTPS
from tests.support.processes import ROOT, require_binary, wait_until

HOST = "app.test"
ATTACKER = "127.0.0.2"
SLOW_SOCKETS = 1100


def rendered(nginx, snippet: str, pattern: str) -> int:
    """A number from the configuration nginx runs (the renderer's defaults)."""
    match = re.search(pattern, (nginx.conf_dir / snippet).read_text(), re.MULTILINE)
    assert match, f"{pattern!r} not in {snippet}"
    return int(match[1])


@contextlib.contextmanager
def open_file_limit(needed: int):
    """This process may open `needed` files (ulimit -n) while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise AssertionError(f"ulimit -Hn is {hard}; this test needs {needed} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_partial_requests(port: int, count: int) -> list[socket.socket]:
    """count connections from ATTACKER, each with half a request header."""
    partial = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: slow".encode()
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                            source_address=(ATTACKER, 0))
            sockets.append(sock)
            sock.sendall(partial)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    """Has nginx closed it? (Non-blocking: False while it is held open.)"""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""  # EOF
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: reset_timedout_connection


def test_slow_loris_of_1100_sockets_does_not_stop_other_clients(nginx_front):
    nginx, _ = nginx_front(host=HOST)
    header_timeout = rendered(nginx, "snippets/limits.conf", r"client_header_timeout (\d+)s;")
    context = ssl.create_default_context(cafile=str(nginx.ca_file))

    def fresh_https_get():
        # A new connection each time: what failed before was accepting new ones.
        started = time.monotonic()
        conn = _ResolvedHTTPS(HOST, nginx.https_port, timeout=3, context=context)
        try:
            conn.request("GET", "/healthz", headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
            return response.status, time.monotonic() - started
        except OSError as exc:
            return repr(exc), time.monotonic() - started
        finally:
            conn.close()

    with open_file_limit(SLOW_SOCKETS + 512):
        attack_started = time.monotonic()
        slow = open_partial_requests(nginx.http_port, SLOW_SOCKETS)
        try:
            opened = time.monotonic() - attack_started
            # While every partial header is held: a normal client from 127.0.0.1.
            results = []
            while time.monotonic() - attack_started < header_timeout - 1 and len(results) < 100:
                results.append(fresh_https_get())
                time.sleep(0.05)
            held = sum(not closed_by_server(sock) for sock in slow)

            # Then nginx sheds them all at client_header_timeout.
            open_ones = set(slow)
            deadline = attack_started + header_timeout + 5
            with selectors.DefaultSelector() as selector:  # epoll: fds above 1024
                for sock in slow:
                    selector.register(sock, selectors.EVENT_READ)
                while open_ones and time.monotonic() < deadline:
                    for key, _ in selector.select(0.2):
                        if closed_by_server(key.fileobj):
                            selector.unregister(key.fileobj)
                            open_ones.discard(key.fileobj)
            shed_after = time.monotonic() - attack_started
        finally:
            for sock in slow:
                sock.close()

    statuses = [status for status, _ in results]
    print(f"\nslow-loris: {SLOW_SOCKETS} sockets opened in {opened:.2f}s, {held} still held "
          f"after {header_timeout - 1}s; normal client: {statuses.count(200)}/{len(results)} "
          f"fresh HTTPS GETs answered 200, slowest {max(t for _, t in results) * 1000:.0f} ms; "
          f"all shed by nginx after {shed_after:.1f}s")
    assert held == SLOW_SOCKETS  # the attack really held its sockets the whole time
    assert len(results) >= 10
    assert statuses == [200] * len(results), statuses
    assert not open_ones, f"{len(open_ones)} partial requests still open"
    assert shed_after < header_timeout + 5
    assert "worker_connections are not enough" not in nginx.error_log()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def test_http2_rapid_reset_burst_is_bounded_and_others_are_still_served(nginx_front):
    # The app's own access line (off by default in production) counts what
    # reached the app.
    nginx, gunicorn = nginx_front(host=HOST, ACCESS_LOG="true")
    # What one address may push to the app, as rendered: an immediate allowance
    # (limit_req delay=) and a sustained rate (limit_req_zone rate=).
    app_delay = rendered(nginx, "snippets/proxy.conf", r"limit_req zone=\w+_app .*delay=(\d+);")
    app_rate = rendered(nginx, "site.conf", r"limit_req_zone .* zone=\w+_app:.* rate=(\d+)r/s;")
    context = ssl.create_default_context(cafile=str(nginx.ca_file))
    conn = _ResolvedHTTPS(HOST, nginx.https_port, timeout=5, context=context)

    def healthz_ms():
        started = time.perf_counter()
        conn.request("GET", "/healthz", headers={"Host": HOST})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return (time.perf_counter() - started) * 1000

    def measure(count, until=None):
        """count /healthz timings (ms), and more until the process `until` has ended."""
        samples, give_up = [], time.monotonic() + 30
        while len(samples) < count or (until and until.poll() is None):
            samples.append(healthz_ms())
            time.sleep(0.01)  # a busy client, still far under the per-address rate
            if time.monotonic() > give_up:
                break
        return samples

    try:
        baseline = measure(100)
        attack = subprocess.Popen(
            [sys.executable, "-m", "tests.support.rapid_reset", "--port", str(nginx.https_port),
             "--server-name", HOST, "--cafile", str(nginx.ca_file), "--source", ATTACKER,
             "--connections", "5", "--streams", "1000", "--path", "/"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            during = measure(300, until=attack)  # from the burst's start: 3-5 s
            out, _ = attack.communicate(timeout=30)
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait()
    finally:
        conn.close()
    burst = json.loads(out)

    def app_saw():
        """The attacker's requests in the app's own access log (JSON lines)."""
        lines = [json.loads(line) for line in gunicorn.stdout().splitlines()
                 if line.startswith("{")]
        return sum(1 for entry in lines if entry.get("logger") == "service.access"
                   and entry["path"] == "/" and entry["remote_addr"] == ATTACKER)

    counts = [app_saw()]
    for _ in range(20):  # until the last proxied requests are done and logged
        time.sleep(0.25)
        counts.append(app_saw())
        if len(counts) >= 3 and counts[-1] == counts[-2] == counts[-3]:
            break
    app_saw = counts[-1]
    entries = [json.loads(line) for line in nginx.access_log().splitlines() if line]
    attacker = [e for e in entries if e["remote_addr"] == ATTACKER]
    p99 = percentile(during, 0.99)
    print(f"\nrapid reset: {burst['streams']} streams in {burst['seconds']}s; nginx logged "
          f"{len(attacker)}, the app served {app_saw}; "
          f"/healthz p50/p99 before {percentile(baseline, 0.5):.1f}/"
          f"{percentile(baseline, 0.99):.1f} ms, during {percentile(during, 0.5):.1f}/"
          f"{p99:.1f} ms, slowest {max(during):.0f} ms ({len(during)} samples); nginx statuses: "
          f"{collections.Counter(e['status'] for e in attacker)}")
    assert burst["streams"] >= 2000  # the burst really went out
    # What one address can push to the app: the immediate allowance plus the
    # sustained rate over the burst (and the second after it).
    bound = 1 + app_delay + app_rate * (burst["seconds"] + 2)
    assert 0 < app_saw <= bound, (app_saw, bound)
    # Another client was served throughout: every /healthz during the burst
    # got its 200 (healthz_ms asserts it; a 5 s socket timeout fails it).
    assert len(during) >= 300, len(during)
    # A liveness bound, not a speed figure (speed belongs in bench/): no
    # /healthz hung behind the burst.
    assert max(during) < 5000, sorted(during)[-5:]


def test_a_heavy_client_that_waits_for_its_answers_is_slowed_never_refused(nginx_front):
    """A load test or an office NAT: many requests at once from one address,
    each client waiting for its answer. Over the rate it waits in nginx; it
    gets no 429."""
    nginx, _ = nginx_front(host=HOST)
    app_rate = rendered(nginx, "site.conf", r"limit_req_zone .* zone=\w+_app:.* rate=(\d+)r/s;")
    started = time.monotonic()
    with KeepAliveLoad(nginx, HOST, path="/healthz", clients=24) as load:
        time.sleep(3)
    elapsed = time.monotonic() - started
    print(f"\nheavy client: {load.ok} requests in {elapsed:.1f}s from 24 keep-alive "
          f"connections, failures: {load.failures[:3]}")
    assert load.failures == []  # no 429, no error: every answer a 200
    assert load.ok > 100  # it really ran
    # Held to the rate (plus what passes at once, and the requests in flight).
    assert load.ok <= app_rate * elapsed + 200


def test_http2_streams_count_against_the_per_address_app_limit(nginx_front):
    """Requests in progress at the app, per address, HTTP/2 streams included:
    over the limit nginx answers 429 at once; gunicorn's listen queue holds
    what nginx does pass (BACKLOG, capped by net.core.somaxconn)."""
    nginx, gunicorn = nginx_front(host=HOST)
    limit = rendered(nginx, "snippets/proxy.conf", r"^limit_conn \w+_app_addr (\d+);")
    streams_per_connection = rendered(nginx, "snippets/limits.conf",
                                      r"^http2_max_concurrent_streams (\d+);")
    connections = limit // streams_per_connection + 1
    source = "127.0.0.4"
    context = ssl.create_default_context(cafile=str(nginx.ca_file))

    # Backlog as the kernel applied it to gunicorn's socket (ss: Send-Q of a listener).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    listing = subprocess.run([require_binary("ss", "iproute2"), "-xlnH"], capture_output=True,
                             text=True, check=True).stdout
    backlog = [line.split()[3] for line in listing.splitlines()
               if line.split()[4:5] == [gunicorn.socket_path]]
    assert backlog == [str(min(int(gunicorn.env.get("BACKLOG", 2048)), somaxconn))], listing

    sent = connections * streams_per_connection

    def statuses():
        entries = [json.loads(line) for line in nginx.access_log().splitlines() if line]
        return collections.Counter(e["status"] for e in entries
                                   if e["remote_addr"] == source and "/test/wait" in e["request"])

    sockets = []
    try:
        for _ in range(connections):
            tls = h2frames.connect(nginx.https_port, HOST, context, source=source)
            sockets.append(tls)
            data = b""
            for stream in range(1, 2 * streams_per_connection, 2):
                block = h2frames.header_block((":method", "GET"), (":scheme", "https"),
                                              (":path", "/test/wait?seconds=1.5"),
                                              (":authority", HOST))
                data += h2frames.frame(h2frames.HEADERS,
                                       h2frames.END_HEADERS | h2frames.END_STREAM, stream, block)
            tls.sendall(data)
        time.sleep(0.9)  # every stream has been admitted or refused; the first still wait
        # Meanwhile: one more request from that address is refused at once,
        # one from anyone else is served.
        refused = nginx.request("GET", "/test/wait?seconds=0", source=source)
        other = nginx.request("GET", "/healthz")
        # The admitted ones finish (connections open: no stream is cancelled).
        wait_until(lambda: sum(statuses().values()) >= sent + 1, 20, "every stream answered")
    finally:
        for tls in sockets:
            tls.close()
    print(f"\n{sent} streams on {connections} connections from one address: {dict(statuses())}")
    assert statuses()[200] == limit
    assert statuses()[429] == sent + 1 - limit
    assert refused.status == 429
    assert refused.header("Retry-After") == "1"
    assert b'id="nginx-error"' in refused.body
    assert other.status == 200


# Debian's /etc/nginx/nginx.conf (nginx 1.22, bookworm), the parts that matter
# here; the real one includes the system's sites instead of ours.
DEBIAN_NGINX_CONF = """user www-data;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;

events {{
\tworker_connections 768;
\t# multi_accept on;
}}

http {{
\tsendfile on;
\ttcp_nopush on;
\ttypes_hash_max_size 2048;
\tinclude /etc/nginx/mime.types;
\tdefault_type application/octet-stream;
\tgzip on;
\tinclude {site};
}}
"""
# The edit deploy/README.md (section 5) tells operators to make, as sed -e expressions.
README_EDIT = (
    r"s|^\(\s*\)worker_connections .*;|\1include /etc/nginx/flask-service/snippets/events.conf;|",
    r"s|^worker_processes .*;$|&\ninclude /etc/nginx/flask-service/snippets/main.conf;|",
)


def test_debian_nginx_conf_gets_the_rendered_capacity_with_the_guides_edit(nginx_front, tmp_path):
    render = load_render()
    nginx, _ = nginx_front(host=HOST)
    guide = (ROOT / "deploy" / "README.md").read_text()
    for expression in README_EDIT:
        assert f"-e '{expression}'" in guide
    conf = tmp_path / "debian-nginx.conf"
    conf.write_text(DEBIAN_NGINX_CONF.format(prefix=nginx.prefix, site=nginx.conf_dir / "site.conf"))

    def dump():
        result = subprocess.run([nginx.binary, "-T", "-p", str(nginx.prefix), "-c", str(conf)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # As Debian ships it: 768 connections, and the renderer's --system-check says so.
    assert render.main_context_missing(dump(), nginx.conf_dir) == [
        f"{nginx.conf_dir}/snippets/main.conf", f"{nginx.conf_dir}/snippets/events.conf"]
    # After the guide's edit: the rendered values, accepted by nginx -t.
    sed = ["sed", "-i"]
    for expression in README_EDIT:
        sed += ["-e", expression.replace("/etc/nginx/flask-service", str(nginx.conf_dir))]
    subprocess.run([*sed, str(conf)], check=True)
    edited = dump()
    assert render.main_context_missing(edited, nginx.conf_dir) == []
    assert not re.search(r"^\s*worker_connections 768;", edited, re.MULTILINE)
    connections = rendered(nginx, "snippets/events.conf", r"^worker_connections (\d+);")
    assert connections >= 4096
    assert f"worker_rlimit_nofile {2 * connections + 1024};" in edited


def load_render():
    """deploy/nginx/render as a module (it is a script without .py)."""
    loader = importlib.machinery.SourceFileLoader("deploy_nginx_render", str(RENDER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
