"""service/gunicorn_response.py: headers and first body bytes in one send,
everything else on the wire exactly as gunicorn writes it. In process, with
gunicorn's own parser and a real socket pair."""

import socket
import time
from types import SimpleNamespace

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from service import gunicorn_response


class CountingSocket(socket.socket):
    """A real socket that remembers what each sendall carried."""

    sends: list

    def sendall(self, data, *args):
        self.sends.append(bytes(data))
        return super().sendall(data, *args)


def respond(method, status, headers, body_parts, coalesce=True):
    server, client = socket.socketpair()
    server = CountingSocket(fileno=server.detach())
    server.sends = []
    with server, client:
        client.sendall(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        cfg = Config()
        req = next(RequestParser(cfg, server, ("127.0.0.1", 1)))
        response_class = gunicorn_response.Response if coalesce else wsgi.Response
        resp, _ = wsgi.create(req, server, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg,
                              response_class=response_class)
        resp.start_response(status, headers)
        for part in body_parts:
            resp.write(part)
        resp.close()
        server.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return server.sends, received


def without_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date:"))


@pytest.mark.parametrize(("method", "status", "headers", "parts"), [
    ("GET", "200 OK", [("Content-Length", "5")], [b"hello"]),
    ("GET", "200 OK", [("Content-Length", "10")], [b"hello", b"world"]),
    ("GET", "200 OK", [], [b"streamed", b" body"]),  # chunked
    ("HEAD", "200 OK", [("Content-Length", "5")], [b"hello"]),
    ("GET", "204 No Content", [], [b""]),
    ("GET", "200 OK", [("Content-Length", "0")], []),
])
def test_bytes_on_the_wire_are_gunicorns(method, status, headers, parts):
    _, ours = respond(method, status, headers, parts)
    _, theirs = respond(method, status, headers, parts, coalesce=False)
    assert without_date(ours) == without_date(theirs)
    assert ours.count(b"HTTP/1.1 ") == 1


def test_headers_and_a_single_body_go_out_in_one_send():
    sends, received = respond("GET", "200 OK", [("Content-Length", "5")], [b"hello"])
    assert len(sends) == 1 and sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert sends[0].endswith(b"\r\n\r\nhello") and received == sends[0]
    stock, _ = respond("GET", "200 OK", [("Content-Length", "5")], [b"hello"], coalesce=False)
    assert len(stock) == 2  # what the change saves: gunicorn sends headers, then body


def test_a_response_without_body_bytes_still_sends_its_headers():
    sends, received = respond("HEAD", "200 OK", [("Content-Length", "5")], [b"hello"])
    assert len(sends) == 1 and received.endswith(b"\r\n\r\n")
    assert b"hello" not in received


def test_the_date_header_is_formatted_once_a_second_and_stays_right(monkeypatch):
    from email.utils import parsedate_to_datetime

    first = gunicorn_response.http_date()
    assert gunicorn_response.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert abs(parsedate_to_datetime(first).timestamp() - time.time()) < 2

    # The module's clock, moved by hand across a second; gunicorn's own
    # formatting (not replaced in this process: install() runs in workers).
    assert util.http_date is not gunicorn_response.http_date
    now = [1_700_000_000.2]
    monkeypatch.setattr(gunicorn_response, "time", SimpleNamespace(time=lambda: now[0]))
    first = gunicorn_response.http_date()
    assert first == util.http_date(1_700_000_000)
    now[0] = 1_700_000_000.9
    assert gunicorn_response.http_date() is first  # the same second: not formatted again
    now[0] = 1_700_000_001.0
    second = gunicorn_response.http_date()
    assert second != first and second == util.http_date(1_700_000_001)
    now[0] = 1_700_003_601.5  # an hour later
    assert gunicorn_response.http_date() == util.http_date(1_700_003_601)
