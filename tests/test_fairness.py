"""After every request a worker yields to the gevent hub (gunicorn.conf.py,
post_request): a connection whose next requests are already buffered does
not keep the worker while another connection waits its turn."""

import socket
import threading
import time

import pytest

from tests.support.processes import base_env

PIPELINED = 20
CPU = "/test/cpu?rounds=100000"  # several ms of Python that never yields
ROUNDS = 5


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def read_responses(sock: socket.socket, n: int, done_at: list) -> None:
    """Read n responses (Content-Length bodies), noting when each was complete."""
    buffer = b""
    while len(done_at) < n:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end].decode("latin-1")
            assert head.startswith("HTTP/1.1 200"), head
            length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                          if line.lower().startswith("content-length:"))
            end = head_end + 4 + length
            if len(buffer) >= end:
                done_at.append(time.monotonic())
                buffer = buffer[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(done_at)} of {n} responses"
        buffer += chunk


@pytest.fixture
def one_worker(redis_server, make_gunicorn):
    return make_gunicorn(base_env(redis_server.url, WEB_CONCURRENCY=1)).start()


def test_buffered_requests_of_one_connection_do_not_hold_back_another(one_worker):
    port = one_worker.port
    for _ in range(ROUNDS):
        busy_done, other_done = [], []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as busy, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as other:
            # Both connections are accepted (and idle) before the burst.
            for sock, done in ((busy, busy_done), (other, other_done)):
                sock.sendall(request("/healthz"))
                read_responses(sock, 1, done)
            busy_done.clear(), other_done.clear()
            reader = threading.Thread(target=read_responses,
                                      args=(busy, PIPELINED, busy_done))
            busy.sendall(request(CPU) * PIPELINED)  # all of them buffered at once
            reader.start()
            # Once the worker is busy with the first of them, one request here.
            while not busy_done:
                time.sleep(0.001)
            other.sendall(request("/healthz"))
            read_responses(other, 1, other_done)
            reader.join(30)
        assert len(busy_done) == PIPELINED
        # Served in turn: long before the buffered ones were all done (back
        # to back, it would come after the last of them).
        assert other_done[0] < busy_done[PIPELINED // 2], (other_done, busy_done)
