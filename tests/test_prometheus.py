"""deploy/prometheus/: the alert rules pass promtool's checks and unit tests,
and a real Prometheus (Debian's package) scraping the running kit (gunicorn
with gevent workers and Redis) answers PromQL with plausible values."""

import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from tests.support.processes import (
    ROOT,
    ManagedProcess,
    base_env,
    free_port,
    require_binary,
    wait_until,
)
from tests.support.scripts import StackCommand, alive, command_line, descendants

RULES = ROOT / "deploy" / "prometheus"


def promtool(*args) -> subprocess.CompletedProcess:
    binary = require_binary("promtool", "prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          cwd=RULES, check=False)


def test_alert_rules_and_example_config_are_valid():
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in promtool("check", "rules", "alerts.yml").stdout


def test_alert_rules_unit_tests_pass():
    done = promtool("test", "rules", "alerts.test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    """Control: a wrong expectation makes `promtool test rules` fail, so the
    passing run above means something."""
    broken = (RULES / "alerts.test.yml").read_text().replace(
        '"20% of requests on web1:9101 end in 5xx"', '"21% of requests on web1:9101 end in 5xx"')
    (tmp_path / "alerts.yml").write_text((RULES / "alerts.yml").read_text())
    (tmp_path / "broken.test.yml").write_text(broken)
    binary = require_binary("promtool", "prometheus")
    done = subprocess.run([binary, "test", "rules", "broken.test.yml"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode != 0 and "HighServerErrorRatio" in done.stdout + done.stderr


class Prometheus(ManagedProcess):
    """Debian's prometheus on a free loopback port, scraping one target every
    second with the project's alert rules loaded."""

    def __init__(self, directory: Path, target: str):
        self.binary = require_binary("prometheus", "prometheus")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (directory / "alerts.yml").write_text((RULES / "alerts.yml").read_text())
        (directory / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            f"  - job_name: service\n    static_configs: [{{targets: ['{target}']}}]\n")
        super().__init__("prometheus", directory / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        self.spawn([self.binary, f"--config.file={self.directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"],
                   stdout=self.log_path, cwd=self.directory)
        self.wait_ready(lambda: requests.get(self.url + "/-/ready", timeout=1).ok, 30,
                        f"prometheus on port {self.port}")
        return self

    def query(self, promql: str) -> list[dict]:
        body = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(tmp_path / "prometheus", target))
        return started[-1].start()

    yield start
    for process in started:
        process.stop()


def test_a_real_prometheus_sees_requests_latency_and_the_redis_pool(
        redis_server, make_gunicorn, prometheus):
    metrics_port = free_port()
    env = base_env(redis_server.url, WEB_CONCURRENCY=2, METRICS_BIND=f"127.0.0.1:{metrics_port}")
    server = make_gunicorn(env).start()
    prom = prometheus(f"127.0.0.1:{metrics_port}")
    wait_until(lambda: prom.scalar('up{job="service"}') == 1, 20, "the first scrape")

    for _ in range(20):
        assert requests.get(server.url + "/test/client", timeout=5).status_code == 200
    # Five requests hold a Redis connection each for 1.5 s (BLPOP) while
    # Prometheus scrapes every second: the pool gauge must show them.
    holders = [threading.Thread(target=requests.get, daemon=True,
                                args=(server.url + "/test/wait?seconds=1.5",),
                                kwargs={"timeout": 10}) for _ in range(5)]
    for thread in holders:
        thread.start()
    for thread in holders:
        thread.join(10)

    counted = wait_until(
        lambda: prom.scalar('sum(service_http_requests_total{route="/test/client",'
                            'method="GET",status="200"})') == 20, 20, "20 requests in Prometheus")
    assert counted
    wait_until(lambda: prom.scalar('sum(service_http_request_duration_seconds_count'
                                   '{route="/test/wait"})') == 5, 20, "the 5 waits")
    # Latency: the waits took 1.5 s each, /test/client far less.
    wait_mean = prom.scalar('sum(service_http_request_duration_seconds_sum{route="/test/wait"})'
                            ' / sum(service_http_request_duration_seconds_count{route="/test/wait"})')
    assert 1.4 < wait_mean < 5, wait_mean
    assert prom.scalar('sum(service_http_request_duration_seconds_bucket'
                       '{route="/test/wait",le="1.0"})') == 0
    assert prom.scalar('sum(service_http_request_duration_seconds_bucket'
                       '{route="/test/wait",le="2.5"})') == 5
    # Every one of the 20 /test/client requests is in the histogram (how fast
    # they were is bench/'s business, not a test's).
    assert prom.scalar('sum(service_http_request_duration_seconds_bucket'
                       '{route="/test/client",le="+Inf"})') == 20
    # The pool: per worker, 50 connections at most; five were in use at once.
    assert prom.scalar('sum(service_redis_pool_max_connections{pool="main"})') == 100
    peak = prom.scalar('max_over_time(sum(service_redis_pool_connections_in_use'
                       '{pool="main"})[1m:1s])')
    # Per worker, the most in use at once each second, added up: at least two
    # of the five holds overlapped in time (how many depends on how the
    # machine scheduled the client threads), never more than five.
    assert 2 <= peak <= 5, peak
    wait_until(lambda: prom.scalar('sum(service_redis_pool_connections_in_use{pool="main"})') == 0,
               10, "the connections back in the pool")
    # The alert rules evaluate against these real series without errors.
    # Prometheus evaluates them every second (evaluation_interval above) and
    # has run for seconds since the first scrape: every rule was evaluated.
    def rules():
        groups = requests.get(prom.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_until(lambda: all(rule["health"] != "unknown" for rule in rules()), 5,
               "every rule evaluated")
    rules = rules()
    assert len(rules) == 11 and all(rule["health"] == "ok" for rule in rules), rules
    assert {rule["name"] for rule in rules if rule["state"] != "inactive"} == set()


def test_scripts_stack_starts_prometheus_on_request(tmp_path):
    require_binary("prometheus", "prometheus")  # StackCommand requires the others
    prometheus_port, metrics_port = free_port(), free_port()
    script = StackCommand(ROOT, tmp_path / "stack.log", STATE_DIR=tmp_path / "state",
                          DOTENV_PATH=tmp_path / ".env", STACK_PROMETHEUS_PORT=prometheus_port,
                          METRICS_BIND=f"127.0.0.1:{metrics_port}")
    try:
        stack = script.start().process
        assert f"Prometheus on http://127.0.0.1:{prometheus_port}/" in script.log()
        ca = tmp_path / "state" / "local-ca" / "ca.crt"
        for _ in range(3):
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "10", "--cacert",
                            str(ca), "--resolve", f"localhost:{script.https_port}:127.0.0.1",
                            script.url + "/healthz"], check=True, timeout=20)
        url = f"http://127.0.0.1:{prometheus_port}/api/v1/query"

        def healthz_count():
            result = requests.get(url, timeout=5, params={"query": 'sum(service_http_requests_total'
                                  '{job="service",route="/healthz",status="200"})'}).json()
            values = result["data"]["result"]
            return values and float(values[0]["value"][1]) >= 3

        wait_until(healthz_count, 30, "Prometheus to see the requests through nginx")
        # Its children run in sessions of their own (scripts/lib.sh spawn):
        # follow the processes, not the script's process group.
        started = descendants(stack.pid)
        assert any("prometheus" in command_line(pid)[0] for pid in started
                   if command_line(pid)), started
        stack.send_signal(signal.SIGINT)
        assert stack.wait(30) == 130

        wait_until(lambda: not any(alive(pid) for pid in started), 15,
                   "the stack's processes (Prometheus, the exporter) to exit")
    finally:
        script.stop(30)
