"""A reload (HUP) runs the code on disk: after a release is checked out into
a running copy of the service, every worker the HUP starts serves the new
create_app, service/config.py, templates and worker class, and no request
fails on the way through nginx, nor in nginx's own log (deploy/README.md,
"Deploying a new version")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import pytest
import requests

from tests.support.load import KeepAliveLoad
from tests.support.processes import ROOT, base_env, booted_pids, wait_until

HOST = "app.test"
COPIED = ("service", "wsgi.py", "gunicorn.conf.py")

# The running version, 1: every response says which worker process served it.
PID_HEADER = '''
    @app.after_request
    def worker_pid(response):
        import os

        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response
'''
# The release, 2: a header and a blueprint in create_app, values from a new
# constant in service/config.py (a module the gunicorn master imports too).
RELEASE = '''
    from flask import Blueprint

    from .config import RELEASE

    release = Blueprint("release", __name__)

    @release.get("/release")
    def show_release():
        import os

        return {"release": RELEASE, "worker_class": os.environ.get("WORKER_CLASS_RELEASE")}

    app.register_blueprint(release)

    @app.after_request
    def release_header(response):
        response.headers["X-Release"] = RELEASE
        return response
'''


def insert_before_return(path, code):
    """Add code at the end of create_app (before its last `return app`)."""
    text = path.read_text()
    at = text.rindex("\n    return app\n")
    path.write_text(text[:at] + "\n" + code + text[at:])


def release_2(checkout):
    insert_before_return(checkout / "service" / "__init__.py", RELEASE)
    with (checkout / "service" / "config.py").open("a") as config:
        config.write('\nRELEASE = "2"\n')
    base = checkout / "service" / "templates" / "base.html"
    base.write_text(base.read_text().replace("<head>", '<head>\n  <meta name="release" content="2">', 1))
    # The worker class is loaded by the master; its module marks the
    # environment the workers it forks inherit.
    with (checkout / "service" / "worker.py").open("a") as worker:
        worker.write('\nimport os as _os\n\n_os.environ["WORKER_CLASS_RELEASE"] = "2"\n')


def direct_get(socket_path, path):
    """GET over a new connection straight to gunicorn: (status, headers, body)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(socket_path)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@pytest.fixture
def checkout(tmp_path):
    """A copy of the service to deploy releases into, at version 1."""
    app = tmp_path / "app"
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    insert_before_return(app / "service" / "__init__.py", PID_HEADER)
    return app


def test_hup_serves_the_new_code_from_every_new_worker_without_failing_requests(
        nginx_front, checkout):
    nginx, gunicorn = nginx_front(WEB_CONCURRENCY=2,
                                  gunicorn_options={"app": "wsgi:app", "root": checkout})
    old_pids = set(booted_pids(gunicorn.stderr()))
    assert len(old_pids) == 2
    status, _, _ = direct_get(gunicorn.socket_path, "/release")
    assert status == 404  # not there yet: the positive control

    served: list[tuple[int, str | None, bool]] = []  # (pid, X-Release, meta tag in the page)

    def record(response, body):
        served.append((int(response.getheader("X-Worker-Pid")), response.getheader("X-Release"),
                       b'<meta name="release" content="2">' in body))

    with KeepAliveLoad(nginx, HOST, on_response=record) as load:
        time.sleep(1)
        release_2(checkout)  # the deploy: new code on disk ...
        gunicorn.reload()  # ... and the documented reload (SIGHUP)
        time.sleep(1)

    new_pids = set(booted_pids(gunicorn.stderr())) - old_pids
    assert len(new_pids) == 2
    assert load.failures == []
    assert load.ok > 100  # the load really ran across the reload
    assert {pid for pid, _, _ in served} <= old_pids | new_pids
    for pid, release, meta in served:
        # Old workers: the old code to the end; new ones: the release only.
        assert (release, meta) == (("2", True) if pid in new_pids else (None, False)), pid
    assert any(pid in new_pids for pid, _, _ in served)

    def logged():
        # nginx writes a request's log line after sending its response; the
        # client may have read the last response before that line is written.
        entries = [json.loads(line) for line in nginx.access_log().splitlines() if line]
        return entries if len(entries) >= load.ok else None

    entries = wait_until(logged, 5, "nginx to log every request the clients saw answered")
    assert {entry["status"] for entry in entries} == {200}  # none failed upstream either
    retried = [e for e in entries if "," in e["upstream_status"]]
    print(f"\n{load.ok} requests through the reload, 0 failed; "
          f"nginx retried {len(retried)} on a fresh upstream connection")

    # Every new worker serves the new route, header, config and worker class.
    seen = {}
    deadline = time.monotonic() + 20
    while set(seen) != new_pids and time.monotonic() < deadline:
        status, headers, body = direct_get(gunicorn.socket_path, "/release")
        assert status == 200, body
        assert headers["X-Release"] == "2"
        seen[int(headers["X-Worker-Pid"])] = json.loads(body)
    assert set(seen) == new_pids
    assert all(answer == {"release": "2", "worker_class": "2"} for answer in seen.values())
    assert "Worker graceful timeout" not in gunicorn.stderr()


def test_a_worker_replaced_without_a_reload_imports_the_whole_app_from_disk(
        redis_server, make_gunicorn, checkout):
    # The master keeps no application module a worker could reuse: a worker
    # that replaces one (crashed, or recycled after MAX_REQUESTS) gets the code
    # on disk, never half old (service/config.py) and half new.
    server = make_gunicorn(base_env(redis_server.url), app="wsgi:app", root=checkout).start()
    pid = int(requests.get(server.url + "/healthz", timeout=5).headers["X-Worker-Pid"])
    release_2(checkout)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: len(booted_pids(server.stderr())) == 2, 20, "the replacement worker")
    response = wait_until(lambda: requests.get(server.url + "/release", timeout=5), 20,
                          "the replacement to answer")
    assert int(response.headers["X-Worker-Pid"]) != pid
    assert response.headers["X-Release"] == "2"
    # The worker class is the one the master loaded: only a HUP reloads it.
    assert response.json() == {"release": "2", "worker_class": None}
