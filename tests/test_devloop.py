"""The developer's loop on scripts/run: with APP_ENV=development an edited
file is served within seconds by fresh gevent workers (a graceful HUP,
service/devreload.py); a file that does not compile keeps the last good code
serving; in production nothing watches the files. scripts/run and
scripts/stack share one Redis and its data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import booted_pids, wait_until
from tests.support.scripts import (
    RunCommand,
    StackCommand,
    command_line,
    copy_tracked_files,
    descendants,
)

# What the developer sees: an edit is served within this many seconds.
SERVED_WITHIN = 3.0


@pytest.fixture
def run_in_copy(tmp_path):
    started = []

    def start(**env) -> RunCommand:
        repo = tmp_path / "clone"
        copy_tracked_files(repo)
        started.append(RunCommand(repo, tmp_path / "run.log", **env).start())
        return started[-1]

    yield start
    for run in started:
        run.stop()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def seconds_until(url: str, served, limit: float = 15) -> tuple[float, int]:
    """Seconds until served(response) is true, and how many requests failed
    on the way (refused, reset, or a 5xx; waiting for a booting worker is not
    a failure)."""
    started, failed = time.monotonic(), 0
    while time.monotonic() - started < limit:
        try:
            response = requests.get(url, timeout=5)
        except requests.RequestException:
            failed += 1
        else:
            failed += response.status_code >= 500
            if response.ok and served(response):
                return time.monotonic() - started, failed
        time.sleep(0.05)
    raise AssertionError(f"{url} did not serve the edit within {limit} s")


def watchers(run: RunCommand) -> list[int]:
    return [pid for pid in descendants(run.process.pid)
            if "service.devreload" in command_line(pid)]


def test_an_edited_view_and_create_app_are_served_within_3_s(run_in_copy):
    # One worker: once /readyz answers, no worker is still importing the app
    # (one that did would serve an edit without any reload).
    run = run_in_copy(WEB_CONCURRENCY=1)
    assert len(watchers(run)) == 1
    assert "development: the workers reload when a .py file changes" in run.log()

    # A view.
    edit(run.repo / "service" / "health" / "__init__.py",
         'return {"status": "ok"}', 'return {"status": "ok", "edited": "view"}')
    seconds, failed = seconds_until(run.url + "/healthz",
                                    lambda r: r.json().get("edited") == "view")
    assert seconds < SERVED_WITHIN, run.log()
    assert failed == 0
    assert "reloading the workers: service/health/__init__.py" in run.log()

    # The factory itself (service/__init__.py): new workers import it from disk.
    edit(run.repo / "service" / "__init__.py", "    return app\n",
         "    app.after_request(lambda r: (r.headers.update({'X-Edited': 'factory'}), r)[1])\n"
         "    return app\n")
    seconds, failed = seconds_until(run.url + "/healthz",
                                    lambda r: r.headers.get("X-Edited") == "factory")
    assert seconds < SERVED_WITHIN, run.log()
    assert failed == 0

    # A template: re-read by the running workers, no reload needed.
    reloads = run.log().count("reloading the workers")
    edit(run.repo / "service" / "templates" / "index.html", "<h1>It works</h1>",
         "<h1>It still works</h1>")
    seconds, failed = seconds_until(run.url + "/", lambda r: "It still works" in r.text)
    assert seconds < SERVED_WITHIN and failed == 0
    assert run.log().count("reloading the workers") == reloads

    # A typo: reported, not reloaded; the last good code keeps serving.
    health = run.repo / "service" / "health" / "__init__.py"
    good = health.read_text()
    health.write_text(good + "\ndef broken(:\n")
    wait_until(lambda: "not reloading, fix and save again" in run.log(), 10, "the typo report")
    assert f"{health}:" in run.log()
    time.sleep(0.5)
    assert run.process.poll() is None
    assert requests.get(run.url + "/healthz", timeout=2).json()["edited"] == "view"
    # Fixed: served again.
    health.write_text(good.replace('"edited": "view"', '"edited": "fixed"'))
    seconds, _ = seconds_until(run.url + "/healthz", lambda r: r.json().get("edited") == "fixed")
    assert seconds < SERVED_WITHIN, run.log()

    # An error at import time: the new worker answers 500 and prints the
    # traceback instead of failing to boot, which would stop scripts/run.
    health.write_text(good + "\nundefined_name_at_import\n")
    wait_until(lambda: requests.get(run.url + "/healthz", timeout=5).status_code == 500, 15,
               "the worker that failed to load the app")
    assert "The app failed to load" in requests.get(run.url + "/healthz", timeout=5).text
    assert "NameError: name 'undefined_name_at_import' is not defined" in run.log()
    assert run.process.poll() is None
    health.write_text(good.replace('"edited": "view"', '"edited": "again"'))
    seconds, _ = seconds_until(run.url + "/healthz", lambda r: r.json().get("edited") == "again")
    assert seconds < SERVED_WITHIN, run.log()


def test_nothing_watches_the_files_in_production(run_in_copy):
    run = run_in_copy(APP_ENV="production")

    def booting():
        """Workers that booted but do not accept yet (they import the app now)."""
        log = run.log()
        return [pid for pid in booted_pids(log) if f"Worker accepting (pid:{pid})" not in log]

    # Every worker has loaded the app: one still importing would load the edit.
    wait_until(lambda: not booting(), 20, "every worker to accept")
    processes = descendants(run.process.pid)
    assert len(processes) >= 3  # redis-server, gunicorn master, a worker
    assert watchers(run) == []
    before = requests.get(run.url + "/healthz", timeout=5).json()
    # An edit that development would serve within SERVED_WITHIN: here the
    # same workers keep serving the code they loaded.
    edit(run.repo / "service" / "health" / "__init__.py",
         'return {"status": "ok"}', 'return {"status": "ok", "edited": "view"}')
    time.sleep(2 * SERVED_WITHIN / 3)
    for _ in range(5):
        assert requests.get(run.url + "/healthz", timeout=5).json() == before
    assert descendants(run.process.pid) == processes  # no worker replaced
    assert "reload" not in run.log()


def test_scripts_run_and_stack_share_one_redis_and_its_data(tmp_path):
    repo = tmp_path / "clone"
    copy_tracked_files(repo)
    clients = []

    def client(server) -> ApiClient:
        if isinstance(server, StackCommand):
            clients.append(ApiClient(server.url, cookie_name="__Host-session"))
            clients[-1].http.verify = str(server.ca_file)
            clients[-1].http.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify
        else:
            clients.append(ApiClient(server.url))
        return clients[-1]

    first, second = new_username("run"), new_username("stack")
    run = RunCommand(repo, tmp_path / "run.log").start()
    stack = StackCommand(repo, tmp_path / "stack.log")
    try:
        # The first one starts the Redis: it does not share one.
        assert "==> private Redis at unix://" in run.log() and "sharing" not in run.log()
        # .env is written the first time only: later starts keep its SECRET_KEY.
        assert "with a new SECRET_KEY" in run.log()
        dotenv = (repo / ".env").read_bytes()
        assert client(run).register(first, PASSWORD).status_code == 201
        # Both at once: the stack shares the Redis scripts/run started.
        stack.start()
        assert "sharing the private Redis at unix://" in stack.log()
        assert client(stack).login(first, PASSWORD).status_code == 200
        assert client(stack).register(second, PASSWORD).status_code == 201
        assert stack.stop() == 143
        assert client(run).login(second, PASSWORD).status_code == 200  # its Redis lives on
    finally:
        stack.stop()
        run.stop()
    assert not run.redis_socket.exists()

    # One after the other: the stack starts the Redis itself, on the same data.
    stack = StackCommand(repo, tmp_path / "stack-again.log")
    try:
        stack.start()
        assert "==> private Redis at unix://" in stack.log() and "sharing" not in stack.log()
        for name in (first, second):
            assert client(stack).login(name, PASSWORD).status_code == 200
    finally:
        stack.stop()
        for each in clients:
            each.close()
    assert (repo / ".env").read_bytes() == dotenv
    for log in ("stack.log", "stack-again.log"):
        assert "new SECRET_KEY" not in (tmp_path / log).read_text()
