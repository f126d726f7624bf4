"""Worker recycling: one worker at a time, never while another is booting,
and keep-alive connections that end after KEEPALIVE_MAX_AGE.

The order of events comes from gunicorn's stderr: every process appends its
lines to the same file, so the file's order is the order things happened.
A worker logs "Worker accepting" once it accepts and "Autorestarting worker"
at the moment it stops accepting; the test appends its own line when it
SIGKILLs a worker.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from service.recycling import ReadyBoard
from tests.support.processes import ROOT, base_env, wait_until

WORKERS = 2
EVENT = re.compile(
    r"Worker accepting \(pid:(?P<ready>\d+)\)"
    r"|Autorestarting worker after \d+ requests \(pid:(?P<stop>\d+)\)"
    r"|Worker reached \d+ requests \(pid:(?P<deferred>\d+)\)"
    r"|TEST killed pid (?P<killed>\d+)"
)


def replay(stderr: str) -> dict:
    """Walk the log in order; collect recycles that left fewer than N-1 accepting."""
    accepting: set[str] = set()
    violations, recycles, deferred_after_kill = [], 0, 0
    killed_pending: set[str] = set()  # killed, replacement not accepting yet
    for line in stderr.splitlines():
        match = EVENT.search(line)
        if not match:
            continue
        if pid := match["ready"]:
            accepting.add(pid)
            if len(accepting) >= WORKERS:
                killed_pending.clear()
        elif pid := match["stop"]:
            recycles += 1
            if pid not in accepting or len(accepting) < WORKERS:
                violations.append(f"{line.strip()} while accepting: {sorted(accepting)}")
            accepting.discard(pid)
        elif pid := match["deferred"]:
            deferred_after_kill += bool(killed_pending)
        elif pid := match["killed"]:
            accepting.discard(pid)
            killed_pending.add(pid)
    return {"violations": violations, "recycles": recycles,
            "deferred_after_kill": deferred_after_kill, "accepting": accepting}


class Load:
    """Bounded request loop from a few threads, each request on a new connection."""

    def __init__(self, url: str, threads: int = 4, limit: int = 6000, seconds: float = 40):
        self.url, self.limit, self.deadline = url, limit, time.monotonic() + seconds
        self.sent, self.failures = 0, []
        self.lock, self.done = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for t in self.threads:
            t.join(10)

    def run(self):
        while not self.done.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.sent >= self.limit:
                    return
                self.sent += 1
            try:
                status = requests.get(self.url, timeout=10).status_code
                if status != 200:
                    self.failures.append(status)
            except requests.RequestException as exc:
                self.failures.append(repr(exc))


def workers_of(master: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def dead(pid: int) -> bool:
    """Gone, or a zombie (its files, and so its locks, are released by then)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def recycling_server(redis_server, make_gunicorn, **env):
    return make_gunicorn(base_env(
        redis_server.url, WEB_CONCURRENCY=WORKERS, LOG_LEVEL="INFO", LOG_FORMAT="text",
        MAX_REQUESTS_JITTER=0, KEEPALIVE_MAX_AGE=0, **env)).start()


def test_two_workers_never_recycle_at_the_same_moment(redis_server, make_gunicorn):
    # Jitter 0: both workers reach the limit together, again and again.
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=50)
    with Load(server.url + "/healthz", limit=20000, seconds=90) as load:
        wait_until(lambda: replay(server.stderr())["recycles"] >= 4, 90,
                   "4 recycles under load")
    events = replay(server.stderr())
    assert events["violations"] == []
    assert load.failures == []
    # Positive control: the workers did reach their limit together and waited.
    assert "restarting once all 2 workers accept (now 1)" in server.stderr()
    # ... and after a replacement, the next recycle waits until it settled.
    assert "restarting once all 2 workers accept (now 2)" in server.stderr()


def test_after_kill_9_the_other_worker_waits_for_the_replacement(redis_server, make_gunicorn):
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=40)
    master = server.process.pid
    killed = []
    with Load(server.url + "/healthz") as load:
        for _ in range(4):
            def two_accepting():
                accepting = replay(server.stderr())["accepting"]
                return len(accepting) == WORKERS and accepting

            victim = int(min(wait_until(two_accepting, 20, "two accepting workers")))
            if victim not in workers_of(master):
                continue  # it just recycled; try again
            os.kill(victim, signal.SIGKILL)
            # Until it is dead its lock is held and it counts as accepting: a
            # recycle decided in those milliseconds raced the kill itself.
            wait_until(lambda victim=victim: dead(victim), 5, "the killed worker to die")
            with open(server.stderr_path, "a") as log:
                log.write(f"TEST killed pid {victim}\n")
            killed.append(victim)
            def replaced(victim=victim):
                return victim not in workers_of(master) and len(
                    replay(server.stderr())["accepting"]) == WORKERS

            wait_until(replaced, 20, "a replacement")
    events = replay(server.stderr())
    assert len(killed) >= 3
    assert events["violations"] == []
    # The survivor reached its limit while the replacement booted, and waited.
    assert events["deferred_after_kill"] >= 1
    # Requests in flight on the killed worker may fail; nothing else did.
    assert len(load.failures) <= 4 * len(killed), load.failures[:5]


def test_keepalive_connection_closes_after_its_max_age(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, KEEPALIVE_MAX_AGE=1)).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.getheader("Connection") != "close"
        time.sleep(1.1)  # past the age this connection drew (0.5-1 s)
        conn.request("GET", "/healthz")
        last = conn.getresponse()
        last.read()
        assert last.status == 200
        assert last.getheader("Connection") == "close"
    finally:
        conn.close()


def test_keepalive_max_age_0_keeps_connections(redis_server, make_gunicorn):
    server = make_gunicorn(base_env(redis_server.url, KEEPALIVE_MAX_AGE=0)).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.getheader("Connection") != "close"
            time.sleep(1.1)
    finally:
        conn.close()


def server_side_inode(conn: http.client.HTTPConnection, server_port: int) -> str:
    client_port = conn.sock.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == server_port and int(remote, 16) == client_port:
            return fields[9]
    raise AssertionError(f"no server socket for client port {client_port}")


def holder(conn: http.client.HTTPConnection, server_port: int, pids: list[int]) -> int:
    """The worker process that holds the server side of a connection."""
    wanted = f"socket:[{server_side_inode(conn, server_port)}]"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker holds {wanted}")


def get(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return response


def test_survivor_sheds_its_connections_once_a_replacement_accepts(redis_server,
                                                                  make_gunicorn):
    # No recycling and no age limit: only a worker joining makes them close.
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=0)
    wait_until(lambda: len(replay(server.stderr())["accepting"]) == WORKERS, 20, "2 workers")
    master = server.process.pid
    conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5) for _ in range(8)]
    try:
        for conn in conns:
            assert get(conn).getheader("Connection") != "close"
        pids = workers_of(master)
        holders = [holder(conn, server.port, pids) for conn in conns]
        survivor = max(set(holders), key=holders.count)
        victim = next(pid for pid in pids if pid != survivor)
        kept = [conn for conn, pid in zip(conns, holders, strict=True) if pid == survivor]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(replay(server.stderr())["accepting"] - {str(victim)}) == WORKERS,
                   20, "a replacement to accept")
        time.sleep(1.2)  # SHED_SPREAD (1 s) and a poll
        for conn in kept:
            assert get(conn).getheader("Connection") == "close"
    finally:
        for conn in conns:
            conn.close()


HOLDER = """
import sys, time
from service.recycling import ReadyBoard
board = ReadyBoard(sys.argv[1], int(sys.argv[2]))
board.mark_ready()
if sys.argv[3:] == ["due"]:
    assert board.try_leave(99) == (False, 2)  # becomes due, stays
print("ready", flush=True)
time.sleep(60)
"""


def hold_marker(directory, pid_label, *args):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(pid_label),
                                *args],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with process.stdout:
        assert process.stdout.readline().strip() == "ready"
    return process


def test_ready_board_counts_live_markers_and_lets_one_leave(tmp_path):
    holder = hold_marker(tmp_path, 1001)
    try:
        me = ReadyBoard(str(tmp_path), os.getpid())
        assert me.try_leave(1) == (False, 1)  # not accepting itself: cannot leave
        me.mark_ready()
        assert me.try_leave(3) == (False, 2)  # one of three missing: stays
        assert me.try_leave(2) == (True, 2)
        assert not me.marked and not (tmp_path / f"ready-{os.getpid()}").exists()
        # One accepts now, so nobody else may leave.
        assert ReadyBoard(str(tmp_path), 1003).try_leave(2) == (False, 1)
    finally:
        holder.kill()
        holder.wait()


def test_ready_board_ignores_and_removes_the_marker_of_a_killed_worker(tmp_path):
    holder = hold_marker(tmp_path, 1002)
    me = ReadyBoard(str(tmp_path), os.getpid())
    me.mark_ready()
    assert me.try_leave(3) == (False, 2)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "ready-1002").exists()  # left behind by SIGKILL
    assert me.try_leave(2) == (False, 1)
    assert not (tmp_path / "ready-1002").exists()
    me.leave()


def test_ready_board_lets_the_longest_due_go_first_once_the_newest_settled(tmp_path):
    me = ReadyBoard(str(tmp_path), os.getpid())
    me.mark_ready()
    holder = hold_marker(tmp_path, 1004, "due")  # due before this process asks
    try:
        assert me.try_leave(2) == (False, 2)  # the other has waited longer
        assert me.marked
    finally:
        holder.kill()
        holder.wait()
    # The holder's marker is stale now; a fresh one is newer than 60 s.
    holder = hold_marker(tmp_path, 1005)
    try:
        assert me.try_leave(2, settle=60) == (False, 2)
        assert me.try_leave(2, settle=0) == (True, 2)
    finally:
        holder.kill()
        holder.wait()
