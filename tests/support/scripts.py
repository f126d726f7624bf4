"""scripts/run and scripts/stack as a developer starts them, in a fresh copy
of the repository, with their process trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.support.processes import ROOT, ManagedProcess, free_port, require_binary


def copy_tracked_files(dest: Path) -> None:
    # What a fresh clone would hold, plus files not committed yet (not ignored).
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def script_env(home: Path, **overrides) -> dict[str, str]:
    """A developer's environment: nothing exported but the basics, and this
    virtualenv reused instead of installing a new one."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
           "VENV": str(Path(sys.executable).parent.parent)}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class RunCommand(ManagedProcess):
    """scripts/run in `repo` (a copy: copy_tracked_files), on a free port."""

    def __init__(self, repo: Path, log: Path, **env):
        require_binary("redis-server", "redis-server")
        self.repo = repo
        self.port = free_port()
        self.env = script_env(repo.parent, BIND=f"127.0.0.1:{self.port}", **env)
        super().__init__("scripts/run", log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> RunCommand:
        self.spawn([str(self.repo / "scripts" / "run")], stdout=self.log_path, cwd=self.repo,
                   env=self.env)
        self.wait_ready(
            lambda: requests.get(self.url + "/readyz", timeout=1).status_code == 200,
            timeout, "scripts/run to serve /readyz")
        return self

    def stop(self, timeout: float = 30) -> int | None:
        # TERM, so its trap stops the children it started in sessions of
        # their own (SIGKILL would leave them running).
        return super().stop(timeout)

    @property
    def redis_socket(self) -> Path:
        return self.repo / ".state" / "redis" / "redis.sock"


class StackCommand(ManagedProcess):
    """scripts/stack in `repo` (nginx with TLS in front), on free ports."""

    def __init__(self, repo: Path, log: Path, **env):
        for binary, package in (("nginx", "nginx"), ("redis-server", "redis-server"),
                                ("openssl", "openssl"), ("curl", "curl")):
            require_binary(binary, package)
        self.repo = repo
        self.https_port, self.http_port = free_port(), free_port()
        self.env = script_env(repo.parent, STACK_HTTPS_PORT=self.https_port,
                              STACK_HTTP_PORT=self.http_port, **env)
        super().__init__("scripts/stack", log)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def ca_file(self) -> Path:
        return self.repo / ".state" / "local-ca" / "ca.crt"

    def start(self, timeout: float = 90) -> StackCommand:
        self.spawn([str(self.repo / "scripts" / "stack")], stdout=self.log_path, cwd=self.repo,
                   env=self.env)
        self.wait_ready(lambda: "==> serving" in self.log(), timeout, "scripts/stack to serve")
        return self

    def stop(self, timeout: float = 30) -> int | None:
        return super().stop(timeout)
