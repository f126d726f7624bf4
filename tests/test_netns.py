"""The network-namespace test bed cleans up after itself (tests/support/netns.py)."""

from __future__ import annotations

import signal
import subprocess

from tests.support.netns import NETNS_ETC, PREFIX, NetBed, _ip, _namespaces
from tests.support.processes import ManagedProcess, wait_until


def inside(namespace: str, process: subprocess.Popen) -> bool:
    return str(process.pid) in _ip("netns", "pids", namespace).split()


def test_destroy_removes_namespaces_processes_and_hosts_files(tmp_path):
    bed = NetBed.create(tmp_path / "bed", ["a", "b"], aliases={"a": ["site.test"]})
    try:
        namespaces = [h.namespace for h in bed.hosts.values()] + [bed.switch]
        assert set(namespaces) <= set(_namespaces())
        # The hosts reach each other by name, through the bed's bridge only.
        assert "site.test" in bed["b"].run("getent", "hosts", "site.test")
        assert bed["b"].run("ip", "-o", "-4", "addr", "show", "eth0").split()[3] == \
            f"{bed['b'].addr}/24"
        sleeper = bed["a"].spawn(ManagedProcess("sleep"), ["sleep", "600"])
        # One the bed does not know of (not through Host.spawn): found by its namespace.
        untracked = subprocess.Popen(bed["b"].argv("sleep", "600"), start_new_session=True)
        wait_until(lambda: inside(bed["b"].namespace, untracked), 5, "the untracked sleep in b")
    finally:
        bed.destroy()
    try:
        assert untracked.wait(5) == -signal.SIGKILL
    finally:
        untracked.kill()
        untracked.wait()
    assert not set(namespaces) & set(_namespaces())
    assert sleeper.process.poll() is not None
    assert not any((NETNS_ETC / n).exists() for n in namespaces)


def test_sweep_removes_what_a_dead_test_run_left():
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale, alive = f"{PREFIX}{gone.pid}x0-app", f"{PREFIX}1x0-app"  # pid 1 is alive
    for name in (stale, alive):
        _ip("netns", "add", name)
    left = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"], start_new_session=True)
    try:
        wait_until(lambda: inside(stale, left), 5, "a process left in the stale namespace")
        NetBed.sweep()
        assert stale not in _namespaces()
        assert alive in _namespaces()
        assert left.wait(5) == -signal.SIGKILL  # what ran inside is gone too
    finally:
        left.kill()
        left.wait()
        for name in (stale, alive):
            if name in _namespaces():
                _ip("netns", "delete", name)
