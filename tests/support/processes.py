"""Start and stop the real processes the tests talk to, on free loopback ports."""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def require_binary(name: str, package: str) -> str:
    """Path of a binary the tests need; a clear failure (not a skip) without it."""
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if not path:
        pytest.fail(
            f"{name} is not installed: install it with `apt-get install {package}` "
            "(scripts/test does this for you)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - reported below
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class RedisServer:
    """A private redis-server on a free port, persisting to AOF in its own dir."""

    def __init__(self, directory: Path):
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--save", "",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        def up():
            with self.client() as client:
                return client.ping()

        wait_until(up, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)


def base_env(redis_url: str, **overrides) -> dict[str, str]:
    """Environment for a service under test; the developer's .env is not read."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "DOTENV_PATH": os.devnull,
        "APP_ENV": "test",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "REDIS_URL": redis_url,
        "WEB_CONCURRENCY": "1",
        "LOG_FORMAT": "json",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Gunicorn:
    """gunicorn with the project's gunicorn.conf.py, on a free loopback port,
    or on ``bind="unix:/path"`` (as behind nginx; then ``port`` is None)."""

    def __init__(self, directory: Path, env: dict[str, str], app: str = "tests.support.testapp:app",
                 extra_args: tuple[str, ...] = (), bind: str | None = None):
        self.binary = require_binary("gunicorn", "gunicorn (pip, requirements.txt)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = None if bind else free_port()
        self.bind = bind or f"127.0.0.1:{self.port}"
        self.env = dict(env, BIND=self.bind)
        self.app = app
        self.extra_args = extra_args
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [self.binary, "--config", str(ROOT / "gunicorn.conf.py"), *self.extra_args,
                 self.app],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self.process

    def start(self, timeout: float = 20) -> Gunicorn:
        self.launch()

        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.stderr()}")
            return self.healthy()

        try:
            wait_until(up, timeout, f"gunicorn on {self.bind}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- stderr ---\n{self.stderr()}") from None
        return self

    @property
    def socket_path(self) -> str | None:
        return self.bind[len("unix:"):] if self.bind.startswith("unix:") else None

    def healthy(self) -> bool:
        if self.socket_path is None:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        host = self.env.get("ALLOWED_HOSTS", "localhost").split(",")[0].strip().lstrip(".")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(self.socket_path)
            sock.sendall(f"GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return sock.recv(64).split(b"\r\n", 1)[0].split()[1:2] == [b"200"]

    def stop(self) -> int | None:
        if self.process is None:
            return None
        # Close the test's own idle keep-alive connections (held by response
        # objects nobody references any more): gunicorn's graceful shutdown
        # otherwise waits for them up to GRACEFUL_TIMEOUT.
        gc.collect()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
