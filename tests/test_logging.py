"""Readable errors: text tracebacks keep their lines, injected newlines stay
neutralised, JSON logs are one object per line (gunicorn's own too), every
line of a request carries its request id, and 500 pages show it."""

import json
import re

import requests

from tests.support.processes import base_env, wait_until


def test_text_tracebacks_keep_their_lines_and_carry_the_request_id(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, LOG_FORMAT="text")).start()
    page = requests.get(server.url + "/test/boom", timeout=5, headers={"Accept": "text/html"})
    assert page.status_code == 500
    request_id = page.headers["X-Request-ID"]
    assert f"<code>{request_id}</code>" in page.text  # the user can quote it

    def traceback_block():
        lines = server.stdout().splitlines()
        for index, line in enumerate(lines):
            if "Exception on /test/boom [GET]" in line:
                block = [line]
                for following in lines[index + 1:]:
                    if not following.startswith("    "):
                        break
                    block.append(following)
                if any("RuntimeError: boom" in b for b in block):
                    return block
        return None

    block = wait_until(traceback_block, 5, "the traceback")
    assert block[0].endswith(f"request_id={request_id}")
    assert block[1] == "    Traceback (most recent call last):"
    assert '    RuntimeError: boom' in block
    # The exception's message held a newline and a forged record: it stays
    # inside the indented block, and nothing is escaped into one long line.
    assert "    2026-01-01 00:00:00 INFO forged: line" in block
    assert not [line for line in server.stdout().splitlines() if line.startswith("2026-01-01")]
    assert not [line for line in block if "\\x0a" in line]


def test_text_lines_neutralise_newlines_in_what_the_client_sends(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, LOG_FORMAT="text")).start()
    r = requests.get(server.url + "/nope%0a2026-01-01%2000:00:00%20INFO%20forged", timeout=5)
    assert r.status_code == 404
    line = wait_until(lambda: [line for line in server.stdout().splitlines()
                               if r.headers["X-Request-ID"] in line], 5, "the access line")
    assert len(line) == 1 and "GET /nope\\x0a2026-01-01 00:00:00 INFO forged 404" in line[0]
    assert not [line for line in server.stdout().splitlines() if line.startswith("2026-01-01")]


def test_json_logs_are_one_object_per_line_gunicorn_included(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, LOG_FORMAT="json")).start()
    r = requests.get(server.url + "/test/boom", timeout=5, headers={"Accept": "application/json"})
    assert r.status_code == 500
    request_id = r.headers["X-Request-ID"]
    assert r.json() == {"error": "internal_error", "message": r.json()["message"],
                        "request_id": request_id}

    def exception_entry():
        entries = [json.loads(line) for line in server.stdout().splitlines()]
        return [e for e in entries if "exception" in e]

    entry = wait_until(exception_entry, 5, "the exception's line")[0]
    assert entry["request_id"] == request_id and entry["level"] == "ERROR"
    assert "RuntimeError: boom\n2026-01-01" in entry["exception"]
    server.stop()

    for name, text in (("stdout", server.stdout()), ("stderr", server.stderr())):
        for line in text.splitlines():
            assert isinstance(json.loads(line), dict), (name, line)
    messages = [json.loads(line)["message"] for line in server.stderr().splitlines()]
    assert [m for m in messages if m.startswith("Booting worker with pid")]
    assert [m for m in messages if m.startswith("Shutting down")]
    assert [m for m in messages if re.match(r"Listening at: http://127\.0\.0\.1:\d+", m)]


def test_behind_nginx_the_500_page_and_the_log_line_share_nginx_request_id(nginx_front):
    nginx, gunicorn = nginx_front()
    response = nginx.request("GET", "/test/boom", headers={"Accept": "application/json"})
    assert response.status == 500
    request_id = response.header("X-Request-ID")
    assert json.loads(response.body)["request_id"] == request_id
    # nginx made the id and passed it on as a trusted proxy: its access log
    # and the app's exception line carry the id the user sees.
    wait_until(lambda: request_id in nginx.access_log(), 5, "nginx's access line")

    def exception_entry():
        entries = [json.loads(line) for line in gunicorn.stdout().splitlines()]
        return [e for e in entries if e.get("request_id") == request_id and "exception" in e]

    entry = wait_until(exception_entry, 5, "the exception's line with nginx's request id")[0]
    assert "RuntimeError: boom" in entry["exception"]
