"""The blocked-hub watchdog: a view that burns CPU without yielding (1 s, so
that a busy machine cannot hide it from gevent's monitor thread) is
reported once, with its route, request id and stack, and counted."""

import json

import requests

from service.config import Settings
from tests.support.processes import base_env, free_port, wait_until
from tests.test_metrics import scrape_until, value


def watchdog_lines(server) -> list[dict]:
    return [entry for entry in map(json.loads, server.stdout().splitlines())
            if entry["logger"] == "service.watchdog"]


def test_a_view_burning_cpu_is_logged_with_route_request_id_stack_and_counted(
        redis_server, make_gunicorn):
    port = free_port()
    env = base_env(redis_server.url, METRICS_BIND=f"127.0.0.1:{port}",
                   BLOCKED_HUB_THRESHOLD="0.2")
    server = make_gunicorn(env).start()
    # Positive control first: a view that waits 0.5 s on Redis yields the hub.
    assert requests.get(server.url + "/test/wait?seconds=0.5", timeout=5).status_code == 200
    burned = requests.get(server.url + "/test/burn?seconds=1", timeout=10)
    assert burned.status_code == 200
    request_id = burned.headers["X-Request-ID"]

    def mine():
        return [e for e in watchdog_lines(server) if e.get("request_id") == request_id]

    lines = wait_until(mine, 5, "the watchdog's line")
    assert len(lines) == 1, lines  # one line per episode, not one per check
    line = lines[0]
    assert line["level"] == "WARNING" and line["request_id"] == request_id
    assert "by route /test/burn" in line["message"] and request_id in line["message"]
    assert "in burn" in line["stack"] and "testapp.py" in line["stack"]
    # On a busy machine the OS may also stall the whole worker past the
    # threshold now and then (logged without a route): count lines, not 1.
    samples = scrape_until(port, lambda s: value(s, "service_hub_blocked_total")
                           == len(watchdog_lines(server)))
    assert value(samples, "service_hub_blocked_total") >= 1
    assert not [e for e in watchdog_lines(server) if "/test/wait" in e["message"]]


def test_workers_boot_without_asking_for_psutil(redis_server, make_gunicorn):
    """gevent's memory monitor (off here) warns on stderr that psutil is
    missing whenever its thread starts; without metrics the hub runs before
    the watchdog's callback, so the filter must outlive it."""
    env = base_env(redis_server.url, BLOCKED_HUB_THRESHOLD="0.2", WEB_CONCURRENCY="2")
    server = make_gunicorn(env).start()
    assert requests.get(server.url + "/test/wait?seconds=0.3", timeout=5).status_code == 200

    def both_accepting():
        stderr = server.stderr()
        return stderr if stderr.count("Worker accepting") == 2 else None

    wait_until(both_accepting, 10, "both workers accepting")
    # The watchdog runs (its monitor thread started and reports a block)...
    burned = requests.get(server.url + "/test/burn?seconds=1", timeout=10)
    assert burned.status_code == 200
    request_id = burned.headers["X-Request-ID"]
    wait_until(lambda: [e for e in watchdog_lines(server) if e.get("request_id") == request_id],
               5, "the watchdog's line")
    # ...and gevent's memory monitor did not ask for psutil.
    stderr = server.stderr()
    assert "MonitorWarning" not in stderr and "psutil" not in stderr, stderr


def test_on_by_default_in_production_only():
    secret = "x" * 8 + "abcdefghijklmnopqrstuvwxyz0123456789"
    production = Settings.from_env({"APP_ENV": "production", "SECRET_KEY": secret})
    assert production.blocked_hub_threshold == 0.2
    assert Settings.from_env({"APP_ENV": "development"}).blocked_hub_threshold == 0
    assert Settings.from_env({"APP_ENV": "production",
                              "BLOCKED_HUB_THRESHOLD": "0"}).blocked_hub_threshold == 0
