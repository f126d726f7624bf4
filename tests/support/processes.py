"""Start and stop the real processes the tests talk to, on free loopback ports."""

from __future__ import annotations

import gc
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
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


def booted_pids(log: str) -> list[int]:
    """The gunicorn workers a log says were booted, in order."""
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log)]


def read_log(path: Path) -> str:
    """The text of a log file so far ("" before the process has written it)."""
    return path.read_text(errors="replace") if path.exists() else ""


class ManagedProcess:
    """One child process a test starts and must stop: its own session (so a
    stuck group can be killed whole), output to log files, a readiness wait
    that fails with the log, and stop() with a timeout, then SIGKILL.

    Subclasses (RedisServer, Gunicorn, Nginx) name the log that explains a
    failure (``log``); Pebble holds two plain instances, and so do the tests
    of scripts/run and scripts/stack and of a TLS redis-server.
    """

    def __init__(self, name: str, log_path: Path | None = None):
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def spawn(self, argv: list[str], *, stdout: Path | None = None,
              stderr: Path | None = None, **popen_args) -> subprocess.Popen:
        """Start argv; stdout/stderr append to those files (None: discarded;
        stderr=None with a stdout file: into the same file)."""
        with ExitStack() as files:
            out = files.enter_context(stdout.open("ab")) if stdout else subprocess.DEVNULL
            if stderr:
                err = files.enter_context(stderr.open("ab"))
            else:
                err = subprocess.STDOUT if stdout else subprocess.DEVNULL
            self.process = subprocess.Popen(argv, stdout=out, stderr=err,
                                            start_new_session=True, **popen_args)
        return self.process

    def log(self, path: Path | None = None) -> str:
        """Its log so far, or that of another file it writes."""
        path = path or self.log_path
        return read_log(path) if path else ""

    def wait_ready(self, ready, timeout: float, what: str) -> None:
        """Wait until ready() is true; if the process exits or time runs
        out, stop it and fail with its log."""
        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}")
            return ready()

        try:
            wait_until(up, timeout, what)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- {self.name} log ---\n{self.log()}") from None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after `timeout` seconds;
        returns the exit status (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


# The service's Redis settings (AOF): scripts/run and the guide use the same.
REDIS_CONF = ROOT / "deploy" / "redis" / "service.conf"


class RedisServer(ManagedProcess):
    """A private redis-server on a free port with the service's settings
    (REDIS_CONF), persisting to AOF in its own dir."""

    def __init__(self, directory: Path):
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        super().__init__("redis-server", directory / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.spawn([
            self.binary, str(REDIS_CONF), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--logfile", str(self.log_path),
        ])

        def up():
            with self.client() as client:
                return client.ping()

        self.wait_ready(up, 10, f"redis-server on port {self.port}")
        return self

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


class Gunicorn(ManagedProcess):
    """gunicorn with the project's gunicorn.conf.py, on a free loopback port,
    or on ``bind="unix:/path"`` (as behind nginx; then ``port`` is None).
    ``root``: the checkout to run (gunicorn.conf.py and the app), default this one."""

    def __init__(self, directory: Path, env: dict[str, str], app: str = "tests.support.testapp:app",
                 extra_args: tuple[str, ...] = (), bind: str | None = None, root: Path = ROOT):
        self.binary = require_binary("gunicorn", "gunicorn (pip, requirements.txt)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = None if bind else free_port()
        self.bind = bind or f"127.0.0.1:{self.port}"
        self.env = dict(env, BIND=self.bind)
        self.app = app
        self.extra_args = extra_args
        self.root = root
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        super().__init__("gunicorn", self.stderr_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen:
        return self.spawn(
            [self.binary, "--config", str(self.root / "gunicorn.conf.py"), *self.extra_args,
             self.app],
            stdout=self.stdout_path, stderr=self.stderr_path, cwd=self.root, env=self.env,
        )

    def start(self, timeout: float = 20) -> Gunicorn:
        self.launch()
        self.wait_ready(self.healthy, timeout, f"gunicorn on {self.bind}")
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

    def reload(self, timeout: float = 20) -> None:
        """Graceful reload, the documented deploy step (SIGHUP): returns once
        a new set of workers has booted and the old ones have exited."""
        workers = int(self.env.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
        log = self.stderr()
        booted, exited = log.count("Booting worker"), log.count("Worker exiting")
        self.process.send_signal(signal.SIGHUP)
        wait_until(lambda: self.stderr().count("Booting worker") >= booted + workers, timeout,
                   "new workers")
        wait_until(lambda: self.stderr().count("Worker exiting") >= exited + workers, timeout,
                   "old workers to exit")

    def stop(self, timeout: float = 15) -> int | None:
        # Close the test's own idle keep-alive connections (held by response
        # objects nobody references any more): gunicorn's graceful shutdown
        # otherwise waits for them up to GRACEFUL_TIMEOUT.
        gc.collect()
        return super().stop(timeout)

    def stdout(self) -> str:
        return read_log(self.stdout_path)

    def stderr(self) -> str:
        return read_log(self.stderr_path)
