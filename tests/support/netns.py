"""A test bed of real hosts: Linux network namespaces on a private bridge.

    bed = NetBed.create(tmp_path, ["lb", "app1", "app2", "r1", "r2", "r3", "client"],
                        aliases={"lb": ["app.test"]})
    bed["app1"].addr                      # 10.213.0.x, reachable from every host of the bed
                                          # and named "app1" there (and "lb" also "app.test")
    bed["app1"].spawn(ManagedProcess(...), argv, ...)   # a process inside that host
    bed["r1"].run("redis-cli", ...)       # a command inside it, waited for
    bed.cut("r1"); bed.heal("r1")         # take its link down / up again
    bed.destroy()                         # kills what runs inside, deletes every namespace

Each host is a namespace with one veth link to a bridge that lives in a
namespace of its own (the "switch"), so nothing is added to the machine's own
network: the 10.213.0.0/24 subnet exists only inside the bed, and its hosts
can reach nothing but each other. Each host resolves the others' names through
its own hosts file (iproute2 bind-mounts /etc/netns/<namespace>/hosts over
/etc/hosts for commands run with `ip netns exec`). Names carry the pid of the test process
(``fkt<pid>x<n>-<host>``); NetBed.sweep() removes what a crashed run left
behind (namespaces whose pid is gone). Needs root (CI runs the suite as root)
and iproute2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ManagedProcess, require_binary

PREFIX = "fkt"
NETNS_ETC = Path("/etc/netns")
SUBNET = "10.213.0"
SWITCH = "switch"
_beds = itertools.count()


def _ip(*args: str) -> str:
    result = subprocess.run([require_binary("ip", "iproute2"), *args], check=False,
                            capture_output=True, text=True, timeout=10)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process running in a namespace, and wait for them."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", namespace).split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _delete(namespace: str) -> None:
    _kill_inside(namespace)
    _ip("netns", "delete", namespace)
    shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


@dataclass
class Host:
    bed: NetBed
    name: str
    namespace: str
    addr: str
    link: str  # the switch-side end of its veth pair

    def argv(self, *command: str) -> list[str]:
        return [require_binary("ip", "iproute2"), "netns", "exec", self.namespace, *command]

    def run(self, *command: str, timeout: float = 30, check: bool = True) -> str:
        """Run a command inside this host; its stdout."""
        result = subprocess.run(self.argv(*command), check=False, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(command)} on {self.name} failed "
                                 f"({result.returncode}): {result.stderr}{result.stdout}")
        return result.stdout

    def spawn(self, process: ManagedProcess, argv: list[str], **spawn_args) -> ManagedProcess:
        """Start argv inside this host as `process` (``ip netns exec`` execs
        the command, so process.process.pid is the command's own pid)."""
        process.spawn(self.argv(*argv), **spawn_args)
        self.bed.processes.append(process)
        return process


@dataclass
class NetBed:
    directory: Path
    prefix: str
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, names: list[str],
               aliases: dict[str, list[str]] | None = None) -> NetBed:
        cls.sweep()
        bed = cls(directory, f"{PREFIX}{os.getpid()}x{next(_beds)}")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            bed._build(names)
            bed._write_hosts_files(aliases or {})
        except BaseException:
            bed.destroy()
            raise
        return bed

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def switch(self) -> str:
        return f"{self.prefix}-{SWITCH}"

    def _build(self, names: list[str]) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for number, name in enumerate(names, start=10):
            namespace = f"{self.prefix}-{name}"
            host = Host(self, name, namespace, f"{SUBNET}.{number}", f"v{number}")
            _ip("netns", "add", namespace)
            self.hosts[name] = host
            _ip("-n", self.switch, "link", "add", host.link, "type", "veth",
                "peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.switch, "link", "set", host.link, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def _write_hosts_files(self, aliases: dict[str, list[str]]) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{h.addr} {' '.join([h.name, *aliases.get(h.name, [])])}"
                  for h in self.hosts.values()]
        for host in self.hosts.values():
            (NETNS_ETC / host.namespace).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host.namespace / "hosts").write_text("\n".join(lines) + "\n")

    def cut(self, name: str) -> None:
        """Take a host's link down: a network partition, the process keeps running."""
        _ip("-n", self.switch, "link", "set", self[name].link, "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self[name].link, "up")

    def destroy(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):  # everything is killed below anyway
                process.stop(timeout=5)
        for namespace in _namespaces():
            if namespace.startswith(self.prefix + "-"):
                _delete(namespace)

    @staticmethod
    def sweep() -> None:
        """Delete namespaces left by test runs whose process is gone."""
        for namespace in _namespaces():
            if not namespace.startswith(PREFIX):
                continue
            pid = namespace[len(PREFIX):].split("x", 1)[0]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # still running: another test process's bed
            except ProcessLookupError:
                _delete(namespace)
