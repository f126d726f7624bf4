"""Graceful shutdown: requests in flight finish, idle keep-alive connections
are closed at once instead of holding the worker for GRACEFUL_TIMEOUT."""

import signal
import socket
import threading
import time

import requests

from tests.support.processes import base_env, wait_until

RELOADS = 5


def test_term_finishes_in_flight_requests_and_closes_idle_connections(redis_server,
                                                                      make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, GRACEFUL_TIMEOUT=30)).start()

    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    response = b""
    while not response.endswith(b'{"status":"ok"}\n'):
        response += idle.recv(65536)
    assert response.startswith(b"HTTP/1.1 200")  # answered; now idle, kept alive

    result = {}

    def slow():
        r = requests.get(server.url + "/test/wait?seconds=1.5", timeout=10)
        result["status"], result["connection"] = r.status_code, r.headers.get("Connection")

    in_flight = threading.Thread(target=slow)
    in_flight.start()
    time.sleep(0.5)  # the slow request is inside BLPOP now

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert idle.recv(65536) == b""  # closed by the server, between requests
    idle.close()
    in_flight.join(10)
    code = server.process.wait(15)
    elapsed = time.monotonic() - started

    assert result == {"status": 200, "connection": "close"}
    assert code == 0
    assert elapsed < 5, f"shutdown took {elapsed:.1f}s (GRACEFUL_TIMEOUT is 30)"
    assert "Worker graceful timeout" not in server.stderr()


def test_hup_reload_replaces_workers_without_failing_requests(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, WEB_CONCURRENCY=2)).start()
    failures, answered, done = [], [], threading.Event()

    def load():
        with requests.Session() as client:  # keep-alive, like nginx upstream
            while not done.is_set():
                try:
                    status = client.get(server.url + "/healthz", timeout=5).status_code
                    (answered if status == 200 else failures).append(status)
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # The race (a request sent on a keep-alive connection just as its worker
    # stops) is run several times: reloads 1.5 s apart, each under the load.
    for _ in range(RELOADS):
        server.reload()
        time.sleep(1.5)
    done.set()
    for t in threads:
        t.join(10)
    assert failures == []
    print(f"\n{len(answered)} requests across {RELOADS} reloads")
    assert len(answered) > 100 * RELOADS  # the load really ran across the reloads
    assert server.process.poll() is None
    # Each reload really replaced both workers.
    wait_until(lambda: server.stderr().count("Booting worker") == 2 * (1 + RELOADS), 20,
               "two new workers per reload")
