"""Live account events over WebSocket (service/events/): the handshake's
checks, sockets closed the moment their session ends, events across two
workers with one Redis subscription each, the limits, a reload closing
sockets with 1001, nginx's socket location, and a browser through nginx.

Real processes only: redis-server, gunicorn with gevent workers, nginx with
TLS, chromium. The WebSocket client is websocket-client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.cookies import SimpleCookie

import pytest
import websocket

from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.browser import start_chrome
from tests.support.nginx import RENDER, Nginx
from tests.support.processes import Gunicorn, base_env, wait_until
from tests.support.tls import LocalCA
from tests.support.websockets import GOING_AWAY, SESSION_ENDED, read_until_closed

MESSAGE_TOO_BIG = 1009
HOST = "app.test"
RELAXED = {"AUTH_RATE_LIMIT": "1000 per minute", "LOGIN_FAILURE_LIMIT": "1000 per minute"}


# -- clients ------------------------------------------------------------------------


def user_sessions(server, count):
    """`count` logged-in API clients of one new account."""
    username = new_username("live")
    first = ApiClient(server.url)
    assert first.register(username, PASSWORD).status_code == 201
    clients = []
    for _ in range(count):
        client = ApiClient(server.url)
        assert client.login(username, PASSWORD).status_code == 200
        clients.append(client)
    first.close()
    return clients


def handle_of(viewer, client):
    """The public handle of client's session, as viewer's sessions list shows it."""
    mine = {s["handle"] for s in client.get("/api/sessions").json()["sessions"] if s["current"]}
    assert len(mine) == 1
    listed = {s["handle"] for s in viewer.get("/api/sessions").json()["sessions"]}
    assert mine <= listed
    return mine.pop()


def connect(server, client=None, origin=None, source=None, **options):
    """A WebSocket to server's /api/events with client's session cookie."""
    sock = None
    if source:  # from another loopback address
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                        source_address=(source, 0))
    cookie = f"session={client.sid}" if client else None
    return websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/api/events", origin=origin or server.url, cookie=cookie,
        timeout=5, socket=sock, **options)


def refusal(open_socket):
    """The HTTP status a refused handshake got."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        open_socket().close()
    return refused.value.status_code


def next_message(ws, timeout=2.0):
    ws.settimeout(timeout)
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return json.loads(frame.data)
        assert opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG), opcode


def worker_of(server, ws):
    """pid of the gunicorn worker holding the server side of ws (from ss)."""
    port = ws.sock.getsockname()[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established",
                          f"( sport = :{server.port} and dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    pids = set(re.findall(r"pid=(\d+)", out))
    assert len(pids) == 1, out
    return int(pids.pop())


def subscribers(redis_server):
    """client name -> number of its connections subscribed to a channel."""
    with redis_server.client() as r:
        found = {}
        for entry in r.client_list():
            if int(entry.get("sub", 0)) or int(entry.get("psub", 0)):
                found[entry["name"]] = found.get(entry["name"], 0) + 1
        return found


# -- servers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(redis_server, tmp_path_factory):
    """gunicorn with 2 gevent workers on a loopback port (APP_ENV=test)."""
    server = Gunicorn(tmp_path_factory.mktemp("events-gunicorn"),
                      base_env(redis_server.url, WEB_CONCURRENCY=2, **RELAXED)).start()
    yield server
    server.stop()


@pytest.fixture
def clients():
    made = []
    yield made
    for client in made:
        client.close()


# -- the handshake ------------------------------------------------------------------


def test_forged_origin_gets_403_and_the_own_origin_connects(two_workers, clients):
    (client,) = user_sessions(two_workers, 1)
    clients.append(client)
    port = two_workers.port
    for origin in ("http://evil.test", f"https://127.0.0.1:{port}", f"http://evil.test:{port}",
                   f"http://127.0.0.1:{port}.evil.test", f"http://127.0.0.1.evil.test:{port}",
                   f"http://user@127.0.0.1:{port}", "null"):
        assert refusal(lambda o=origin: connect(two_workers, client, origin=o)) == 403, origin
    # Without any Origin (not a browser): refused too.
    assert refusal(lambda: connect(two_workers, client, suppress_origin=True)) == 403
    ws = connect(two_workers, client)  # positive control: the same request from its own origin
    assert ws.connected
    ws.close()


def test_socket_without_a_live_session_is_refused(two_workers, clients):
    assert refusal(lambda: connect(two_workers)) == 401
    (client,) = user_sessions(two_workers, 1)
    clients.append(client)
    sid = client.sid
    assert client.logout().status_code == 204
    client.http.cookies.set("session", sid)  # the old cookie, replayed
    assert refusal(lambda: connect(two_workers, client)) == 401
    client.http.cookies.set("session", "x" * 43)
    assert refusal(lambda: connect(two_workers, client)) == 401


def test_plain_get_without_upgrade_is_refused(two_workers):
    import requests

    response = requests.get(two_workers.url + "/api/events", timeout=5)
    assert response.status_code == 400


# -- sockets end with their session ------------------------------------------------------


def revoke_from_other(victim, other):
    assert other.delete(f"/api/sessions/{handle_of(other, victim)}").status_code == 204


def log_out(victim, other):
    assert victim.logout().status_code == 204


def change_password_from_other(victim, other):
    response = other.post("/api/auth/password",
                          {"current_password": PASSWORD, "new_password": PASSWORD + "!"})
    assert response.status_code == 204


def delete_account_from_other(victim, other):
    assert other.delete("/api/account", {"password": PASSWORD}).status_code == 204


@pytest.mark.parametrize("end,reason", [
    (revoke_from_other, "revoked"), (log_out, "logout"),
    (change_password_from_other, "password"), (delete_account_from_other, "deleted"),
])
def test_socket_of_an_ended_session_gets_the_reason_and_closes_within_a_second(
        two_workers, clients, end, reason):
    for _ in range(3):  # a race: several rounds
        victim, other = user_sessions(two_workers, 2)
        clients.extend((victim, other))
        ws = connect(two_workers, victim)
        time.sleep(0.1)  # past the socket's first session check
        started = time.monotonic()
        end(victim, other)
        messages, code, _ = read_until_closed(ws, timeout=3)
        elapsed = time.monotonic() - started
        assert messages == [{"type": "session_ended", "reason": reason}]
        assert code == SESSION_ENDED
        assert elapsed < 1.0, f"closed after {elapsed:.2f}s"


def test_other_sessions_survive_a_revocation(two_workers, clients):
    victim, survivor, other = user_sessions(two_workers, 3)
    clients.extend((victim, survivor, other))
    doomed, kept = connect(two_workers, victim), connect(two_workers, survivor)
    revoke_from_other(victim, other)
    assert read_until_closed(doomed, timeout=3)[1] == SESSION_ENDED
    # The survivor's socket is open and still hears the account's events.
    late = ApiClient(two_workers.url)
    clients.append(late)
    assert late.login(other.get("/api/me").json()["username"], PASSWORD).status_code == 200
    assert next_message(kept) == {"type": "sessions_changed"}
    kept.close()


def test_a_session_that_ended_while_no_worker_listened_is_noticed_on_resubscription(
        two_workers, redis_server, clients):
    """An event published while a worker's subscription was down is lost to
    it; after every (re)subscription each socket re-checks its session."""
    for _ in range(3):  # several rounds: the resubscription races the checks
        (victim,) = user_sessions(two_workers, 1)
        clients.append(victim)
        ws = connect(two_workers, victim)
        time.sleep(0.1)  # past the socket's first session check
        with redis_server.client() as db:
            # The record goes with no event at all (as if its logout's event
            # was published while nobody was subscribed) ...
            assert db.delete(f"session:{victim.sid}") == 1
            # ... so the socket stays open (the control) ...
            with pytest.raises(websocket.WebSocketTimeoutException):
                next_message(ws, timeout=1.0)
            # ... until the subscriptions are lost and come back.
            assert db.client_kill_filter(_type="pubsub") >= 1  # (the hub starts with a socket)
        messages, code, _ = read_until_closed(ws, timeout=10)
        assert messages == [{"type": "session_ended", "reason": "expired"}]
        assert code == SESSION_ENDED


# -- across workers ----------------------------------------------------------------------


def test_events_cross_workers_with_one_redis_subscription_per_worker(
        two_workers, redis_server, clients):
    member, other = user_sessions(two_workers, 2)
    clients.extend((member, other))
    sockets, pids = [], set()
    for _ in range(40):  # the kernel spreads connections over both workers
        sockets.append(connect(two_workers, member))
        pids.add(worker_of(two_workers, sockets[-1]))
        if len(pids) == 2 and len(sockets) >= 6:
            break
    assert len(pids) == 2, "every socket landed on one worker"

    # One subscription per worker, however many sockets it holds.
    names = subscribers(redis_server)
    assert {f"service-{pid}" for pid in pids} <= set(names)
    assert all(names[f"service-{pid}"] == 1 for pid in pids), names

    # A login handled by one worker reaches the sockets of both.
    late = ApiClient(two_workers.url)
    clients.append(late)
    assert late.login(member.get("/api/me").json()["username"], PASSWORD).status_code == 200
    for ws in sockets:
        assert next_message(ws) == {"type": "sessions_changed"}

    started = time.monotonic()
    revoke_from_other(member, other)
    for ws in sockets:
        messages, code, _ = read_until_closed(ws, timeout=3)
        assert (messages, code) == ([{"type": "session_ended", "reason": "revoked"}],
                                    SESSION_ENDED)
    assert time.monotonic() - started < 1.0


# -- limits, pings, expiry -------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(redis_server, tmp_path_factory):
    """One worker with small limits and a 1 s ping interval."""
    server = Gunicorn(tmp_path_factory.mktemp("events-limited"), base_env(
        redis_server.url, EVENTS_MAX_CONNECTIONS=4, EVENTS_MAX_PER_SESSION=2,
        EVENTS_MAX_PER_ADDRESS=3, EVENTS_PING_INTERVAL=1, **RELAXED)).start()
    yield server
    server.stop()


def test_connection_limits_per_session_address_and_worker(limited, clients):
    first, second, third, fourth = user_sessions(limited, 4)
    clients.extend((first, second, third, fourth))
    held = [connect(limited, first), connect(limited, first)]
    assert refusal(lambda: connect(limited, first)) == 429  # a third tab of one session
    held.append(connect(limited, second))
    assert refusal(lambda: connect(limited, third)) == 429  # a fourth from 127.0.0.1
    held.append(connect(limited, third, source="127.0.0.2"))  # another address is fine
    # The worker holds EVENTS_MAX_CONNECTIONS sockets: nobody else gets one.
    assert refusal(lambda: connect(limited, fourth, source="127.0.0.3")) == 503
    held.pop(0).close()
    # A closed socket frees its places.
    wait_until(lambda: connect(limited, first).close() is None, 5, "a free place again")
    for ws in held:
        ws.close()
    wait_until(lambda: all(connect(limited, c).close() is None for c in (first, fourth)), 5,
               "every place free again")


def test_too_large_a_message_closes_with_1009(limited, clients):
    from service.events.socket import MAX_MESSAGE

    (client,) = user_sessions(limited, 1)
    clients.append(client)
    ws = connect(limited, client)
    ws.send("small is fine")
    ws.send("x" * MAX_MESSAGE)  # exactly the limit: accepted, the socket still answers
    ws.ping(b"still there")
    ws.settimeout(3)
    while True:  # the server's own pings (every second here) may come first
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PONG:
            assert frame.data == b"still there"
            break
        assert opcode == websocket.ABNF.OPCODE_PING, opcode
    ws.send("x" * (MAX_MESSAGE + 1))  # one byte more
    assert read_until_closed(ws, timeout=3)[1] == MESSAGE_TOO_BIG


def test_peer_that_does_not_answer_pings_is_dropped(limited, clients):
    (client,) = user_sessions(limited, 1)
    clients.append(client)
    answering, silent = connect(limited, client), connect(limited, client)
    pings = []

    def answer():  # reading answers every ping (websocket-client sends the pong)
        started = time.monotonic()
        while time.monotonic() - started < 4:
            answering.settimeout(2)
            opcode, _ = answering.recv_data_frame(control_frame=True)
            pings.append(opcode)

    reader = threading.Thread(target=answer)
    reader.start()
    time.sleep(3.5)  # three ping intervals; `silent` reads nothing meanwhile
    silent.settimeout(3)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:  # the pings it never answered, then the end
            silent.recv_data_frame(control_frame=True)
    reader.join(5)
    # Positive control: the socket that answered is open after many pings.
    assert len(pings) >= 3 and set(pings) == {websocket.ABNF.OPCODE_PING}
    assert answering.connected
    answering.close()


@pytest.fixture(scope="module")
def short_sessions(redis_server, tmp_path_factory):
    server = Gunicorn(tmp_path_factory.mktemp("events-short"), base_env(
        redis_server.url, SESSION_IDLE_TIMEOUT=2, SESSION_ABSOLUTE_TIMEOUT=4, **RELAXED)).start()
    yield server
    server.stop()


def test_socket_closes_at_the_idle_timeout(short_sessions, clients):
    (client,) = user_sessions(short_sessions, 1)
    clients.append(client)
    client.get("/api/me")
    touched = time.monotonic()
    ws = connect(short_sessions, client)
    messages, code, _ = read_until_closed(ws, timeout=5)
    elapsed = time.monotonic() - touched
    assert (messages, code) == ([{"type": "session_ended", "reason": "expired"}], SESSION_ENDED)
    assert 1.8 < elapsed < 3.0, elapsed


def test_socket_closes_at_the_absolute_timeout_despite_activity(short_sessions, clients):
    (client,) = user_sessions(short_sessions, 1)
    clients.append(client)
    logged_in = time.monotonic()
    ws = connect(short_sessions, client)
    closed = {}

    def watch():
        closed["result"] = read_until_closed(ws, timeout=7)
        closed["at"] = time.monotonic() - logged_in

    watcher = threading.Thread(target=watch)
    watcher.start()
    while watcher.is_alive() and time.monotonic() - logged_in < 6:
        client.get("/api/me")  # activity: the idle timeout keeps moving
        time.sleep(0.5)
    watcher.join(8)
    messages, code, _ = closed["result"]
    assert code == SESSION_ENDED and messages[-1]["reason"] == "expired"
    assert 3.7 < closed["at"] < 5.0, closed["at"]  # the 4 s absolute timeout, not 2 s idle


# -- shutdown and reload -------------------------------------------------------------


def sockets_going_away(redis_server, make_gunicorn, clients, signal_them):
    """Four open sockets of a 2-worker server with GRACEFUL_TIMEOUT 30;
    signal_them(server) returns once the old workers have exited. Every socket
    must get 1001, and long before the graceful timeout. The server."""
    server = make_gunicorn(base_env(redis_server.url, WEB_CONCURRENCY=2, GRACEFUL_TIMEOUT=30,
                                    **RELAXED)).start()
    (client,) = user_sessions(server, 1)
    clients.append(client)
    sockets = [connect(server, client) for _ in range(4)]
    started = time.monotonic()
    signal_them(server)
    took = time.monotonic() - started
    for ws in sockets:
        assert read_until_closed(ws, timeout=3)[1] == GOING_AWAY
    assert took < 8, f"{signal_them.__name__} took {took:.1f}s (GRACEFUL_TIMEOUT is 30)"
    assert "Worker graceful timeout" not in server.stderr()
    return server, client


def test_reload_closes_sockets_with_1001_at_once(redis_server, make_gunicorn, clients):
    # Gunicorn.reload returns once the old workers have exited.
    server, client = sockets_going_away(redis_server, make_gunicorn, clients, Gunicorn.reload)
    again = connect(server, client)  # the new workers take the reconnect
    assert again.connected
    again.close()


def test_shutdown_closes_sockets_with_1001_at_once(redis_server, make_gunicorn, clients):
    def shut_down(server):  # SIGTERM to the master; returns once it has exited
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(20)

    server, _ = sockets_going_away(redis_server, make_gunicorn, clients, shut_down)
    assert server.process.returncode == 0
    assert "Shutting down: Master" in server.stderr()


# -- the single writer, under a reader that never reads ----------------------------------


def test_a_peer_that_never_reads_is_dropped_with_a_bounded_queue():
    import gevent
    import gevent.socket

    from service.events.socket import SEND_QUEUE, WebSocket

    key = base64.b64encode(b"0123456789abcdef").decode()

    ours, theirs = gevent.socket.socketpair()
    for sock, option in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    ws = WebSocket(ours, ping_interval=60)
    writer = gevent.spawn(ws.serve, key)
    gevent.sleep(0.05)  # handshake written; the writer waits for work
    started = time.monotonic()
    sent = 0
    while not writer.dead and sent < 100_000:
        ws.send_json({"type": "sessions_changed", "padding": "x" * 1000})
        sent += 1
        assert ws.outbox.qsize() <= SEND_QUEUE
        if sent % 8 == 0:
            gevent.sleep(0)  # let the writer write until the socket is full
    writer.join(2)
    assert writer.dead, "the writer is still blocked on a peer that never reads"
    assert time.monotonic() - started < 2
    assert sent < 2 * SEND_QUEUE + 400  # dropped once the queue filled, not after 100k
    # ... and because it filled: SEND_QUEUE frames still wait, and more were sent.
    assert ws.outbox.qsize() == SEND_QUEUE and sent > SEND_QUEUE, (ws.outbox.qsize(), sent)
    # The peer was a WebSocket: the 101 is the first thing waiting for it.
    accept = base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    theirs.settimeout(2)
    head = theirs.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head[:100]
    assert f"Sec-WebSocket-Accept: {accept}\r\n".encode() in head, head[:200]
    ours.close()
    theirs.close()


# -- through nginx (TLS, production settings) -------------------------------------------


@pytest.fixture(scope="module")
def front(redis_server, tmp_path_factory):
    """gunicorn (production, 2 workers, unix socket) behind nginx with TLS."""
    directory = tmp_path_factory.mktemp("events-front")
    ca = LocalCA(directory / "ca")
    cert = ca.issue(HOST)
    env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS=HOST,
                   WEB_CONCURRENCY=2, **RELAXED)
    gunicorn = Gunicorn(directory / "gunicorn", env, bind=f"unix:{directory}/gunicorn.sock")
    gunicorn.start()
    nginx = Nginx(directory / "nginx", upstream=gunicorn.bind, certs=[cert], ca_file=ca.cert_path,
                  server_names=(HOST,),
                  render_args=("--login-rate", "600r/m", "--login-burst", "100"))
    try:
        nginx.start()
        yield nginx, cert, gunicorn
    finally:
        nginx.stop()
        gunicorn.stop()


class ThroughNginx:
    """A JSON API client through nginx: the __Host-session cookie and CSRF token."""

    def __init__(self, nginx):
        self.nginx = nginx
        self.cookie = None
        self.csrf = None

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        if method != "GET":
            if self.csrf is None:
                self.csrf = json.loads(self.request("GET", "/api/csrf").body)["csrf_token"]
            headers["X-CSRF-Token"] = self.csrf
        if self.cookie:
            headers["Cookie"] = f"__Host-session={self.cookie}"
        response = self.nginx.request(method, path, headers=headers,
                                      body=json.dumps(body) if body is not None else None)
        for value in response.header_values("Set-Cookie"):
            morsel = SimpleCookie(value).get("__Host-session")
            if morsel is not None:
                self.cookie = morsel.value or None
        if response.header("Content-Type") == "application/json" and response.body:
            token = json.loads(response.body).get("csrf_token")
            self.csrf = token or self.csrf
        return response

    def login(self, username):
        response = self.request("POST", "/api/auth/login",
                                {"username": username, "password": PASSWORD})
        assert response.status == 200, response.body
        return self


def register(nginx):
    username = new_username("front")
    response = ThroughNginx(nginx).request("POST", "/api/auth/register",
                                           {"username": username, "password": PASSWORD})
    assert response.status == 201, response.body
    return username


def connect_tls(nginx, cookie=None, origin=None):
    """A WebSocket through nginx's TLS port as the browser opens it (HTTP/1.1)."""
    context = ssl.create_default_context(cafile=str(nginx.ca_file))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname=HOST)
    url = f"wss://{HOST}:{nginx.https_port}/api/events"
    return websocket.create_connection(
        url, socket=tls, timeout=5, origin=origin or f"https://{HOST}:{nginx.https_port}",
        cookie=f"__Host-session={cookie}" if cookie else None)


def test_socket_through_nginx_hears_events_and_refusals_are_the_apis_json(front):
    nginx = front[0]
    username = register(nginx)
    first, second = ThroughNginx(nginx).login(username), ThroughNginx(nginx)
    ws = connect_tls(nginx, first.cookie)
    second.login(username)
    assert next_message(ws) == {"type": "sessions_changed"}

    with pytest.raises(websocket.WebSocketBadStatusException) as forged:
        connect_tls(nginx, first.cookie, origin="https://evil.test")
    assert forged.value.status_code == 403
    assert json.loads(forged.value.resp_body)["error"] == "forbidden_origin"
    headers = {k.lower(): v for k, v in forged.value.resp_headers.items()}
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["x-content-type-options"] == "nosniff"
    with pytest.raises(websocket.WebSocketBadStatusException) as anonymous:
        connect_tls(nginx)
    assert anonymous.value.status_code == 401

    handles = json.loads(second.request("GET", "/api/sessions").body)["sessions"]
    (handle,) = [s["handle"] for s in handles if not s["current"]]
    started = time.monotonic()
    assert second.request("DELETE", f"/api/sessions/{handle}").status == 204
    messages, code, _ = read_until_closed(ws, timeout=3)
    assert (messages, code) == ([{"type": "session_ended", "reason": "revoked"}], SESSION_ENDED)
    assert time.monotonic() - started < 1.0


def test_nginx_socket_location_upgrades_http11_with_read_timeout_above_the_ping(tmp_path, front):
    nginx, cert = front[:2]
    conf = (nginx.conf_dir / "snippets" / "websocket.conf").read_text()
    assert "location = /api/events {" in (nginx.conf_dir / "site.conf").read_text()
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert 'proxy_set_header Connection "upgrade";' in conf
    assert "include" in conf and "headers-proxied.conf;" in conf
    assert "proxy_read_timeout 60s;" in conf  # default ping 25 s
    # Open sockets have a per-address limit of their own, not the general one.
    assert "limit_conn service_events_addr 50;" in conf
    assert "limit_req zone=service_app " in conf
    # The renderer follows EVENTS_PING_INTERVAL from the env file.
    env_file = tmp_path / "service.env"
    env_file.write_text(f"ALLOWED_HOSTS={HOST}\nBIND=unix:/run/app/g.sock\n"
                        "EVENTS_PING_INTERVAL=40\nEVENTS_MAX_PER_ADDRESS=7\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(RENDER), "--out", str(out), "--env-file", str(env_file),
         "--cert", str(cert[0]), "--key", str(cert[1]), "--app-python", sys.executable],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rendered = (out / "snippets" / "websocket.conf").read_text()
    assert "proxy_read_timeout 90s;" in rendered and "proxy_send_timeout 90s;" in rendered
    assert "limit_conn service_events_addr 7;" in rendered


# -- a browser through nginx ------------------------------------------------------------


def spki_hash(cert_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def chrome_via_nginx(front, tmp_path_factory):
    cert = front[1]
    profile = tmp_path_factory.mktemp("chromium-events")
    driver = start_chrome(profile, f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
                          f"--ignore-certificate-errors-spki-list={spki_hash(cert[0])}")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def on_sessions_page(chrome, nginx):
    """Log a new account in through the login form, open /sessions, mark
    the page (a reload would lose the mark) and drain the console.
    Returns the username."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    username = register(nginx)
    chrome.delete_all_cookies()
    chrome.get(nginx.url("/login"))
    chrome.find_element(By.ID, "username").send_keys(username)
    chrome.find_element(By.ID, "password").send_keys(PASSWORD)
    chrome.find_element(By.ID, "login").click()
    WebDriverWait(chrome, 10).until(seen.url_contains("/account"))
    chrome.get(nginx.url("/sessions"))
    assert len(chrome.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")) == 1
    chrome.get_log("browser")  # drain
    chrome.execute_script("window.notReloaded = true;")
    time.sleep(0.5)  # the page's socket is open
    return username


def test_browser_sees_a_new_login_live_and_goes_to_login_when_revoked(front, chrome_via_nginx):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    nginx = front[0]
    chrome = chrome_via_nginx
    username = on_sessions_page(chrome, nginx)

    # A second session of the same user appears on this page, without a reload.
    other = ThroughNginx(nginx).login(username)
    WebDriverWait(chrome, 3).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")) == 2)
    assert chrome.execute_script("return window.notReloaded === true;")

    # The other session ends this one: the login page with the reason, within 1 s.
    sessions = json.loads(other.request("GET", "/api/sessions").body)["sessions"]
    (handle,) = [s["handle"] for s in sessions if not s["current"]]
    started = time.monotonic()
    assert other.request("DELETE", f"/api/sessions/{handle}").status == 204
    WebDriverWait(chrome, 2, poll_frequency=0.02).until(
        lambda d: d.find_elements(By.ID, "reason"))
    elapsed = time.monotonic() - started
    assert "/login" in chrome.current_url
    assert "ended from another session" in chrome.find_element(By.ID, "reason").text
    assert elapsed < 1.0, f"login page after {elapsed:.2f}s"
    problems = [e["message"] for e in chrome.get_log("browser")
                if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []


def test_browser_reconnects_after_a_reload(front, chrome_via_nginx):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    nginx, _, gunicorn = front
    chrome = chrome_via_nginx
    username = on_sessions_page(chrome, nginx)

    gunicorn.reload()  # the page's socket is closed with 1001 ...
    time.sleep(4)  # ... and reopened 1.5 to 3.5 s later (events.js: GOING_AWAY_DELAY + jitter)
    ThroughNginx(nginx).login(username)
    WebDriverWait(chrome, 3).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")) == 2)
    assert chrome.execute_script("return window.notReloaded === true;")
    assert [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"] == []
