"""Headers, errors, proxy trust and request logs. Header profiles, error
negotiation and the Host check are pure logic, tested in process (the
`client` fixture); the rest through real gunicorn."""

import json
import re

import pytest
import requests

from tests.support.processes import base_env, wait_until

SECURITY_HEADERS = (
    "Content-Security-Policy", "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy",
    "Permissions-Policy", "Referrer-Policy", "X-Content-Type-Options", "X-Frame-Options",
)


def header_lines(client, path: str) -> list[tuple[str, str]]:
    """The app's header lines as it hands them to the server, one per line
    sent (to count duplicates)."""
    return client.get(path).headers.to_wsgi_list()


@pytest.mark.parametrize("path, csp_start", [
    ("/", "default-src 'none'; script-src 'self'"),
    ("/healthz", "default-src 'none'; form-action 'none'"),
])
def test_security_headers_are_sent_exactly_once(client, path, csp_start):
    headers = header_lines(client, path)
    names = [name.lower() for name, _ in headers]
    for header in SECURITY_HEADERS:
        assert names.count(header.lower()) == 1, (header, headers)
    assert "strict-transport-security" not in names  # nginx's job, see service/security.py
    csp = dict(headers)["Content-Security-Policy"]
    assert csp.startswith(csp_start)
    for directive in ("frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'"):
        assert directive in csp
    assert "unsafe" not in csp
    assert dict(headers)["X-Content-Type-Options"] == "nosniff"


def test_a_view_overrides_a_header_without_duplicating_it(app, client):
    @app.get("/own-csp")
    def own_csp():
        return {"ok": True}, 200, {"Content-Security-Policy": "default-src 'self'"}

    headers = header_lines(client, "/own-csp")
    csps = [v for k, v in headers if k.lower() == "content-security-policy"]
    assert csps == ["default-src 'self'"]


def test_malformed_json_is_400_with_a_clear_message(service):
    r = requests.post(service.url + "/test/echo", data=b'{"a": ', timeout=5,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_json", "message": "The request body is not valid JSON."}


def test_body_over_the_limit_is_413(service):
    r = requests.post(service.url + "/test/echo", json={"x": "y" * 5000}, timeout=5)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    # ...and the worker keeps serving.
    assert requests.post(service.url + "/test/echo", json={"x": 1}, timeout=5).json() == {
        "received": {"x": 1}}


def test_404_and_405_as_json_for_api_clients_and_html_for_browsers(client):
    api = client.get("/api/nothing-here")
    assert api.status_code == 404 and api.json["error"] == "not_found"
    page = client.get("/nothing-here", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<h1>404 Not Found</h1>" in page.text
    wrong = client.delete("/healthz", headers={"Accept": "application/json"})
    assert wrong.status_code == 405
    assert wrong.json["error"] == "method_not_allowed"
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}


def test_unexpected_host_header_is_400(client):
    r = client.get("/healthz", headers={"Host": "evil.example"})
    assert r.status_code == 400
    assert "<h1>400 Bad Request</h1>" in r.text or r.json["error"] == "bad_request"


def test_forwarded_headers_from_a_trusted_proxy_are_used(service):
    # 127.0.0.1 is in FORWARDED_ALLOW_IPS (the default), PROXY_HOPS=1: the
    # last X-Forwarded-For entry is the one the proxy itself appended.
    r = requests.get(service.url + "/test/client", timeout=5, headers={
        "X-Forwarded-For": "203.0.113.9, 198.51.100.7",
        "X-Forwarded-Proto": "https",
        "X-Request-ID": "proxy-given-id-42",
    })
    assert r.json() == {"remote_addr": "198.51.100.7", "scheme": "https",
                        "request_id": "proxy-given-id-42"}
    assert r.headers["X-Request-ID"] == "proxy-given-id-42"


def test_without_the_access_log_requests_still_get_an_id_and_no_line(redis_server,
                                                                    make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, ACCESS_LOG="false")).start()
    ids = {requests.get(server.url + "/healthz", timeout=5).headers["X-Request-ID"]
           for _ in range(3)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    server.stop()
    assert not any(i in server.stdout() for i in ids), server.stdout()
    assert "service.access" not in server.stdout()


def test_forwarded_headers_from_anyone_else_are_ignored(redis_server, make_gunicorn):
    env = base_env(redis_server.url, FORWARDED_ALLOW_IPS="192.0.2.1")
    server = make_gunicorn(env).start()
    r = requests.get(server.url + "/test/client", timeout=5, headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Request-ID": "forged",
    })
    body = r.json()
    assert (body["remote_addr"], body["scheme"]) == ("127.0.0.1", "http")
    assert body["request_id"] != "forged"
    assert r.headers["X-Request-ID"] == body["request_id"]


def test_one_json_log_line_per_request_with_its_request_id(service):
    r = requests.get(service.url + "/healthz?probe=1", timeout=5)
    request_id = r.headers["X-Request-ID"]

    def logged():
        lines = [json.loads(line) for line in service.stdout().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    # The line is written when the server closes the response, just after
    # the client has read it.
    mine = wait_until(logged, 5, "the access log line")
    # A later request's line is written after any second line of this one.
    after = requests.get(service.url + "/healthz?probe=2", timeout=5).headers["X-Request-ID"]
    wait_until(lambda: after in service.stdout(), 5, "the next request's line")
    mine = logged()
    assert len(mine) == 1
    entry = mine[0]
    assert entry["method"] == "GET" and entry["path"] == "/healthz" and entry["status"] == 200
    assert entry["duration_ms"] >= 0 and entry["logger"] == "service.access"


def test_the_access_line_logs_the_path_as_text(service):
    """PATH_INFO carries the URL's bytes as latin-1 (PEP 3333): the line shows
    the UTF-8 text, and bytes that are no UTF-8 as replacement characters."""
    ids = {}
    for path in ("/caf%C3%A9", "/bad%FF"):
        ids[path] = requests.get(service.url + path, timeout=5).headers["X-Request-ID"]

    def entries():
        lines = [json.loads(line) for line in service.stdout().splitlines()
                 if line.startswith("{")]
        found = {e["request_id"]: e for e in lines if e.get("request_id") in ids.values()}
        return found if len(found) == len(ids) else None

    found = wait_until(entries, 5, "the access lines")
    assert found[ids["/caf%C3%A9"]]["path"] == "/café"
    assert found[ids["/bad%FF"]]["path"] == "/bad\ufffd"
