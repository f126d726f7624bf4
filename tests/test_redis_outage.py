"""Redis stops mid-run: 503 with Retry-After fast, health stays up, and
everything recovers by itself (with the session intact) when Redis is back."""

import re
import signal
import time

import pytest
import requests

from tests.support.api import PASSWORD, ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env, wait_until


@pytest.fixture
def outage(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    server = Gunicorn(tmp_path / "gunicorn", base_env(redis_server.url, LOG_FORMAT="text"))
    server.start()
    yield redis_server, server
    server.stop()
    redis_server.stop()


def timed(method, url, **kwargs):
    started = time.monotonic()
    response = requests.request(method, url, timeout=10, **kwargs)
    return response, time.monotonic() - started


def test_redis_outage_gives_503_and_recovers(outage):
    redis_server, server = outage
    url = server.url
    login = requests.post(url + "/test/session", json={"user": "ada"}, timeout=5)
    cookies = {"session": login.cookies["session"]}

    redis_server.stop()

    cases = [
        ("GET", "/test/session", {"cookies": cookies}),                  # session load
        ("POST", "/test/session", {"json": {"a": 1}}),                    # a new record
        ("GET", "/test/wait", {}),                                        # Redis in a view
        ("GET", "/test/session", {"cookies": cookies, "headers": {"Accept": "text/html"}}),
    ]
    for method, path, kwargs in cases:
        r, elapsed = timed(method, url + path, **kwargs)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.headers["Retry-After"] == "5"
        assert elapsed < 1.0, f"{path} took {elapsed:.2f}s"
        assert "Traceback" not in r.text
        assert "Set-Cookie" not in r.headers
        assert r.headers["X-Request-ID"] in r.text  # a user's report leads to the log
    api = requests.get(url + "/test/session", cookies=cookies, timeout=5,
                       headers={"Accept": "application/json"})
    assert api.json()["error"] == "store_unavailable"
    assert "retry" in api.json()["message"]

    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    ready, elapsed = timed("GET", url + "/readyz")
    assert ready.status_code == 503 and elapsed < 1.0
    assert ready.json()["status"] == "unavailable"
    assert "redis" in ready.json()["checks"]

    redis_server.start()  # same port, same AOF directory

    wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, 10, "readyz")
    back = requests.get(url + "/test/session", cookies=cookies, timeout=5)
    assert back.status_code == 200
    assert back.json() == {"user": "ada"}  # the session survived the outage
    assert server.process.poll() is None  # the same gunicorn kept serving
    log = server.stdout()
    assert "Traceback" not in log
    # LOG_FORMAT=text: one line per request, with its id.
    assert re.search(r"service\.access: GET /readyz 503 127\.0\.0\.1 [\d.]+ms request_id=\w{32}", log)
    assert "Redis unavailable: ConnectionError" in log


@pytest.fixture
def hung(tmp_path):
    """Redis that accepts connections but never answers (SIGSTOP), timeout 1 s."""
    redis_server = RedisServer(tmp_path / "redis").start()
    server = Gunicorn(tmp_path / "gunicorn",
                      base_env(redis_server.url, LOG_FORMAT="text", REDIS_SOCKET_TIMEOUT=1))
    server.start()
    yield redis_server, server
    redis_server.process.send_signal(signal.SIGCONT)
    server.stop()
    redis_server.stop()


def test_a_hung_redis_costs_one_timeout_and_one_warning_per_request(hung):
    redis_server, server = hung
    client = ApiClient(server.url)
    client.register("hung-user", PASSWORD)
    client.login("hung-user", PASSWORD)
    cookies = {"session": client.sid}
    client.close()
    redis_server.process.send_signal(signal.SIGSTOP)

    paths = ["/test/session", "/api/me", "/account"]
    for path in paths:
        r, elapsed = timed("GET", server.url + path, cookies=cookies)
        assert r.status_code == 503, (path, r.text)
        assert 0.9 < elapsed < 1.8, f"{path} took {elapsed:.2f}s"  # one 1 s timeout, not two

    def logged():
        return [line for line in server.stdout().splitlines() if " 503 " in line]

    wait_until(lambda: len(logged()) == len(paths), 5, "the access log lines")
    warnings = server.stdout().count("Redis unavailable: TimeoutError")
    assert warnings == len(paths), server.stdout()
    assert "Traceback" not in server.stdout()
