"""Command 1 (scripts/run) on a fresh copy of the repository: it writes .env
with a new SECRET_KEY, starts a private Redis and gunicorn, answers on its
port, and Ctrl-C leaves nothing running."""

import os
import signal
import sys
import time
from pathlib import Path

import redis
import requests

from tests.support.processes import ManagedProcess, free_port, require_binary, wait_until
from tests.support.scripts import alive, copy_tracked_files, descendants


def test_run_command_serves_and_ctrl_c_stops_everything(tmp_path):
    require_binary("redis-server", "redis-server")
    repo = tmp_path / "clone"
    copy_tracked_files(repo)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
        # Reuse this virtualenv instead of installing a new one.
        "VENV": str(Path(sys.executable).parent.parent), "BIND": f"127.0.0.1:{port}",
    }
    script = ManagedProcess("scripts/run", tmp_path / "run.log")
    process = script.spawn([str(repo / "scripts" / "run")], stdout=script.log_path, cwd=repo,
                           env=env)
    try:
        def serving():
            if process.poll() is not None:
                raise AssertionError(f"scripts/run exited with {process.returncode}")
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200

        try:
            wait_until(serving, 90, "scripts/run to serve /readyz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'run.log').read_text()}") from None
        dotenv = (repo / ".env").read_text()
        secret = next(line.split("=", 1)[1] for line in dotenv.splitlines()
                      if line.startswith("SECRET_KEY="))
        assert len(secret) >= 43
        assert oct((repo / ".env").stat().st_mode & 0o777) == "0o600"
        assert (repo / ".state" / "redis" / "redis.sock").is_socket()
        # The private Redis runs with deploy/redis/service.conf: AOF, fsync every second.
        with redis.Redis(unix_socket_path=str(repo / ".state" / "redis" / "redis.sock"),
                         socket_timeout=2) as db:
            assert db.config_get("appendonly") == {"appendonly": "yes"}
            assert db.config_get("appendfsync") == {"appendfsync": "everysec"}
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert r.status_code == 200 and "It works" in r.text
        started = descendants(process.pid)
        assert len(started) >= 3  # redis-server, gunicorn master, a worker

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert process.wait(30) in (0, 130)
        wait_until(lambda: not any(alive(pid) for pid in started), 10, "children to exit")
    finally:
        # After a failure: TERM, so its trap stops the children it started in
        # sessions of their own (SIGKILL would leave them running).
        script.stop(30)
    output = (tmp_path / "run.log").read_text()
    assert "/.env with a new SECRET_KEY" in output
    assert "private Redis at unix://" in output
    assert "stopped" in output
    time.sleep(0.2)
    assert not (repo / ".state" / "redis" / "redis.sock").exists()
