"""Prometheus metrics: served on METRICS_BIND by gunicorn's exporter process,
added up across workers, labelled by route template; dead workers' gauges go."""

import secrets
import tempfile
import threading
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.config import ConfigError, Settings
from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import ROOT, base_env, free_port, wait_until


def scrape(port: int) -> dict:
    """{(sample name, frozenset of labels): value} from the metrics endpoint."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_until(port: int, predicate, timeout: float = 5) -> dict:
    """A scrape for which predicate(samples) holds (event counts are written
    when they happen; request counts and latencies by each worker once a
    second, service/metrics.py)."""
    def check():
        samples = scrape(port)
        return samples if predicate(samples) else None

    return wait_until(check, timeout, "the expected metrics")


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: dict, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


def metered_env(redis_server, **overrides):
    port = free_port()
    return port, base_env(redis_server.url, METRICS_BIND=f"127.0.0.1:{port}", **overrides)


@pytest.fixture
def clients():
    made = []

    def make(base_url):
        made.append(ApiClient(base_url))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_requests_are_counted_by_route_template_on_the_metrics_bind_only(
        redis_server, make_gunicorn, clients):
    port, env = metered_env(redis_server, WEB_CONCURRENCY=2)
    server = make_gunicorn(env).start()
    # Not /healthz, which start() polled: a count is recorded when the
    # response is closed, just after the client read it.
    for _ in range(3):
        assert requests.get(server.url + "/test/client", timeout=5).status_code == 200
    secret_path = f"/no-such-page-{secrets.token_hex(4)}"
    assert requests.get(server.url + secret_path, timeout=5).status_code == 404
    client, name = clients(server.url), new_username()
    assert client.register(name, PASSWORD).status_code == 201
    assert client.login(name, PASSWORD).status_code == 200
    handle = f"h{secrets.token_hex(6)}"
    assert client.delete(f"/api/sessions/{handle}").status_code == 404
    # The public listener has no /metrics.
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 404

    mine = {"route": "/test/client", "method": "GET", "status": "200"}
    deleted = {"route": "/api/sessions/<handle>", "method": "DELETE", "status": "404"}

    def all_published(samples):
        # Each worker publishes its counts once a second: wait for both.
        return (value(samples, "service_http_requests_total", **mine) == 3
                and value(samples, "service_http_requests_total", **deleted) is not None
                and (value(samples, "service_http_requests_total",
                           route="[unmatched]", method="GET", status="404") or 0) >= 2)

    samples = scrape_until(port, all_published)
    assert value(samples, "service_http_requests_total", **deleted) == 1
    assert value(samples, "service_http_requests_total",  # secret_path and /metrics
                 route="[unmatched]", method="GET", status="404") == 2
    routes = {labels["route"] for labels in series(samples, "service_http_requests_total")}
    assert not [r for r in routes if handle in r or secret_path in r], routes  # bounded labels
    assert value(samples, "service_http_request_duration_seconds_count", route="/test/client") == 3
    assert value(samples, "service_http_request_duration_seconds_bucket",
                 route="/test/client", le="+Inf") == 3
    assert 0 < value(samples, "service_http_request_duration_seconds_sum",
                     route="/test/client") < 3
    # Per worker: one in-flight series per live worker, both booted.
    assert len(series(samples, "service_http_requests_in_flight")) == 2
    assert value(samples, "service_worker_starts_total") == 2
    pids = {labels["pid"] for labels in series(samples, "service_redis_pool_max_connections")}
    assert len(pids) == 2
    for pid in pids:
        assert value(samples, "service_redis_pool_max_connections", pid=pid, pool="main") == 50
    # Registration and login went through the main pool without waiting.
    assert value(samples, "service_redis_pool_wait_seconds_count", pool="main") == 0
    assert value(samples, "service_redis_pool_timeouts_total", pool="main") == 0


def test_an_exhausted_redis_pool_shows_in_use_waits_and_timeouts(redis_server, make_gunicorn):
    port, env = metered_env(redis_server, REDIS_MAX_CONNECTIONS=2, REDIS_POOL_TIMEOUT=0.8)
    server = make_gunicorn(env).start()

    def hold_three(seconds):
        """Three requests at once, each holding a connection (BLPOP) for seconds."""
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(requests.get(
            f"{server.url}/test/wait?seconds={seconds}", timeout=10).status_code))
            for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return sorted(statuses)

    # The third waits 0.5 s for a free connection, within REDIS_POOL_TIMEOUT.
    assert hold_three(0.5) == [200, 200, 200]
    samples = scrape_until(port, lambda s: value(
        s, "service_redis_pool_wait_seconds_count", pool="main") == 1)
    assert 0.3 < value(samples, "service_redis_pool_wait_seconds_sum", pool="main") < 0.8
    pid = series(samples, "service_redis_pool_connections_in_use")[0]["pid"]
    # The most in use at once, published each second: both connections.
    scrape_until(port, lambda s: value(
        s, "service_redis_pool_connections_in_use", pid=pid, pool="main") == 2)
    # Now the third waits longer than REDIS_POOL_TIMEOUT: 503, counted twice.
    assert hold_three(1.5) == [200, 200, 503]
    samples = scrape_until(port, lambda s: value(
        s, "service_redis_pool_timeouts_total", pool="main") == 1)
    assert value(samples, "service_redis_errors_total", error="ConnectionError") == 1


def test_session_login_csrf_and_rate_limit_events_are_counted(
        redis_server, make_gunicorn, clients):
    port, env = metered_env(redis_server, LOGIN_FAILURE_LIMIT="2 per minute")
    server = make_gunicorn(env).start()
    alice, other, guesser = clients(server.url), clients(server.url), clients(server.url)
    name = new_username()
    assert alice.register(name, PASSWORD).status_code == 201  # a CSRF pre-session: no record
    assert alice.login(name, PASSWORD).status_code == 200     # created
    assert other.login(name, PASSWORD).status_code == 200     # created
    handles = [s["handle"] for s in alice.get("/api/sessions").json()["sessions"]
               if not s["current"]]
    assert alice.delete(f"/api/sessions/{handles[0]}").status_code == 204   # revoked
    changed = alice.post("/api/auth/password",
                         {"current_password": PASSWORD, "new_password": PASSWORD + " 2"})
    assert changed.status_code == 204                                        # rotated
    assert alice.logout().status_code == 204                                # logged out
    statuses = [guesser.login(name, "wrong password!").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    refused = requests.post(server.url + "/api/auth/logout", timeout=5)  # no CSRF token
    assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"
    stale = requests.get(server.url + "/api/me", timeout=5,
                         cookies={"session": secrets.token_urlsafe(32)})
    assert stale.status_code == 401                                          # expired

    samples = scrape(port)
    events = {e: value(samples, "service_session_events_total", event=e)
              for e in ("created", "rotated", "expired", "revoked", "logged_out")}
    assert events == {"created": 2, "rotated": 1, "revoked": 1, "logged_out": 1, "expired": 1}
    assert value(samples, "service_login_failures_total") == 2
    assert value(samples, "service_rate_limited_total") == 1
    assert value(samples, "service_csrf_failures_total") == 1


def test_recycled_workers_leave_their_counts_but_not_their_gauges(
        redis_server, make_gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale from an earlier run")
    port, env = metered_env(redis_server, MAX_REQUESTS=4, MAX_REQUESTS_JITTER=0,
                            PROMETHEUS_MULTIPROC_DIR=directory)
    server = make_gunicorn(env).start()
    assert not (directory / "counter_999999.db").exists()  # cleaned on start
    mine = {"route": "/test/client", "method": "GET", "status": "200"}
    sent = 0

    def recycled_twice():
        # One request at a time until two workers were recycled (each after
        # 4 requests) and their replacement is up; bounded by the wait.
        nonlocal sent
        samples = scrape(port)
        exits = value(samples, "service_worker_exits_total", reason="recycled") or 0
        starts = value(samples, "service_worker_starts_total") or 0
        live = len(series(samples, "service_http_requests_in_flight"))
        if exits >= 2 and starts >= 3 and live == 1 and value(
                samples, "service_http_requests_total", **mine) == sent:
            return samples
        assert requests.get(server.url + "/test/client", timeout=5,
                            headers={"Connection": "close"}).status_code == 200
        sent += 1
        return None

    samples = wait_until(recycled_twice, 30, "two recycled workers", interval=0.1)
    # Counters of dead workers still count (sent: all of them, above); only
    # the live worker has gauges.
    assert sent >= 8
    live = {labels["pid"] for labels in series(samples, "service_http_requests_in_flight")}
    gauge_files = {p.name for p in directory.glob("gauge_liveall_*.db")}
    assert gauge_files == {f"gauge_liveall_{pid}.db" for pid in live}

    server.stop()
    with pytest.raises(requests.ConnectionError):  # the exporter went with the master
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert directory.exists()  # a directory given is kept, only its files are per run


def test_a_reload_keeps_the_counts_and_the_exporter(redis_server, make_gunicorn):
    port, env = metered_env(redis_server, WEB_CONCURRENCY=2)
    server = make_gunicorn(env).start()
    mine = {"route": "/test/client", "method": "GET", "status": "200"}
    for _ in range(3):
        assert requests.get(server.url + "/test/client", timeout=5).status_code == 200
    before = scrape_until(port, lambda s: value(s, "service_http_requests_total", **mine) == 3)
    old_pids = {labels["pid"] for labels in series(before, "service_http_requests_in_flight")}
    server.reload()  # SIGHUP: new workers, the same master, exporter and directory
    assert requests.get(server.url + "/test/client", timeout=5).status_code == 200

    def after_reload(samples):
        pids = {labels["pid"] for labels in series(samples, "service_http_requests_in_flight")}
        return (value(samples, "service_http_requests_total", **mine) == 4
                and len(pids) == 2 and not pids & old_pids
                and value(samples, "service_worker_starts_total") == 4)

    samples = scrape_until(port, after_reload, timeout=10)
    assert value(samples, "service_worker_exits_total", reason="shutdown") == 2


def test_a_fresh_temp_directory_per_run_removed_at_exit(redis_server, make_gunicorn):
    where = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    before = set(where.glob("service-metrics-*"))
    port, env = metered_env(redis_server)
    server = make_gunicorn(env).start()
    assert value(scrape(port), "service_worker_starts_total") == 1
    made = set(where.glob("service-metrics-*")) - before
    assert len(made) == 1 and list(next(iter(made)).glob("*.db"))
    server.stop()
    assert not next(iter(made)).exists()


def test_metrics_off_writes_no_files_even_with_an_empty_directory_variable(
        redis_server, make_gunicorn):
    # A blank PROMETHEUS_MULTIPROC_DIR= line (a copied .env) must not turn on
    # prometheus_client's file mode, which would write into the working directory.
    before = set(ROOT.glob("*.db"))
    server = make_gunicorn(base_env(redis_server.url, PROMETHEUS_MULTIPROC_DIR="")).start()
    for _ in range(3):
        assert requests.get(server.url + "/test/client", timeout=5).status_code == 200
    server.stop()
    assert set(ROOT.glob("*.db")) == before


@pytest.mark.parametrize("bind, allowed", [
    ("127.0.0.1:9101", True), ("[::1]:9101", True), ("localhost:9101", True),
    ("10.1.2.3:9101", True), ("192.168.1.5:9101", True),
    ("0.0.0.0:9101", False), ("[::]:9101", False), ("93.184.216.34:9101", False),
    ("8.8.8.8:9101", False), ("metrics.example.com:9101", False), ("127.0.0.1", False),
])
def test_the_metrics_bind_must_not_face_the_internet(bind, allowed):
    env = {"APP_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(48),
           "REDIS_URL": "redis://127.0.0.1:1/0", "ALLOWED_HOSTS": "example.com",
           "METRICS_BIND": bind}
    settings = Settings.from_env(env)
    if allowed:
        settings.require_valid()
    else:
        with pytest.raises(ConfigError, match="METRICS_BIND"):
            settings.require_valid()


def test_a_public_metrics_bind_only_when_explicitly_allowed():
    env = {"APP_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(48),
           "REDIS_URL": "redis://127.0.0.1:1/0", "ALLOWED_HOSTS": "example.com",
           "METRICS_BIND": "0.0.0.0:9101", "METRICS_ALLOW_PUBLIC": "true"}
    assert Settings.from_env(env).require_valid().metrics_bind == "0.0.0.0:9101"
    # Off by default: no METRICS_BIND at all.
    unset = {key: val for key, val in env.items() if key != "METRICS_BIND"}
    assert Settings.from_env(unset).require_valid().metrics_bind == ""


def test_requests_are_published_in_batches_exactly_as_observed_one_by_one():
    """RequestMetrics counts in memory and writes the sums once a second:
    the exported histogram must be the one Histogram.observe would give,
    bucket boundaries included ("le" is inclusive)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from service import metrics
    from service.logformat import ROUTE_KEY

    route = f"/batch-{secrets.token_hex(4)}"
    bounds = metrics.http_duration._upper_bounds[:-1]  # without +Inf
    durations = [0.0, 0.001, 0.005, 0.0050001, 0.1, 0.3, 2.5, 10, 10.5, 99.0]
    expected = CollectorRegistry()
    reference = Histogram("reference", "one by one", buckets=bounds, registry=expected)
    counted = Counter("reference_requests", "one by one", ["method"], registry=expected)

    def exported(histogram, counter):
        buckets = {s.labels["le"]: s.value for s in histogram.collect()[0].samples
                   if s.name.endswith("_bucket")}
        totals = {s.name.rsplit("_", 1)[1]: s.value for s in histogram.collect()[0].samples
                  if s.name.endswith(("_count", "_sum"))}
        requests_ = {s.labels["method"]: s.value for s in counter.collect()[0].samples
                     if s.name.endswith("_total") and s.labels.get("route", route) == route}
        return buckets, totals, requests_

    before = exported(metrics.http_duration.labels(route), metrics.http_requests)
    request_metrics = metrics.RequestMetrics()
    for i, seconds in enumerate(durations):
        method = "GET" if i % 2 else "BREW"  # an unknown method is "other"
        request_metrics.started()
        request_metrics.finished({ROUTE_KEY: route, "REQUEST_METHOD": method}, "200", seconds)
        reference.observe(seconds)
        counted.labels(method if method == "GET" else "other").inc()
    assert request_metrics.in_flight == 0
    assert exported(metrics.http_duration.labels(route), metrics.http_requests) == before
    request_metrics.publish()
    buckets, totals, by_method = exported(metrics.http_duration.labels(route),
                                          metrics.http_requests)
    want_buckets, want_totals, want_methods = exported(reference, counted)
    assert buckets == want_buckets
    assert totals["count"] == want_totals["count"] == len(durations)
    assert totals["sum"] == pytest.approx(want_totals["sum"])
    assert {m: by_method[m] for m in want_methods} == want_methods
