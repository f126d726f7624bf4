"""Worker recycling: one worker at a time, its replacement accepting before
it stops, and keep-alive connections that end after KEEPALIVE_MAX_AGE.

The order of events comes from gunicorn's stderr: every process appends its
lines to the same file, so the file's order is the order things happened.
A worker logs "Worker accepting" once it accepts and "Autorestarting worker"
at the moment it stops accepting; the test appends its own line when it
SIGKILLs a worker. A recycle must leave all WORKERS accepting: the
replacement (one worker more, asked for with SIGTTIN) accepts first.
"""

import glob
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
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
    """Walk the log in order; collect recycles that left fewer than N accepting."""
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
            if pid not in accepting or len(accepting) <= WORKERS:
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
    log = server.stderr()
    # Positive control: every recycle went through a replacement, and the
    # workers did reach their limit together: one waited for its turn.
    assert log.count("its replacement is starting") >= events["recycles"]
    assert "restarting once all 2 workers accept (now 2)" in log
    # The master took each extra worker back: WORKERS left, no spare forked.
    wait_until(lambda: len(workers_of(server.process.pid)) == WORKERS, 10, "two workers")
    assert log.count("Booting worker") <= WORKERS + log.count("its replacement is starting")


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


@pytest.mark.parametrize("interruption", ["SIGKILL", "SIGHUP", "SIGTTOU"])
def test_a_recycle_interrupted_leaves_the_configured_worker_count(
        redis_server, make_gunicorn, interruption):
    """The recycling worker killed while its replacement boots (the extra
    worker is its replacement), a reload meanwhile, or an operator's SIGTTOU
    (the count is reset): either way the master ends with WORKERS workers,
    never one more or less."""
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=30)
    master = server.process.pid
    for _ in range(3):
        before = server.stderr().count("its replacement is starting")
        with Load(server.url + "/healthz", threads=2, limit=2000, seconds=20):
            wait_until(lambda before=before: server.stderr().count(
                "its replacement is starting") > before,
                       20, "a worker asking for its replacement", interval=0.02)
        asking = re.findall(r"Worker reached \d+ requests \(pid:(\d+)\); its replacement",
                            server.stderr())[-1]
        if interruption == "SIGKILL":
            os.kill(int(asking), signal.SIGKILL)
        else:
            server.process.send_signal(getattr(signal, interruption))
        # Settled: the worker that asked is gone and the count is the
        # configured one. (After SIGTTOU gunicorn stops its oldest worker,
        # which may be the other one: then the one that asked stays past its
        # limit until the pool is whole again, and recycles once more.)
        wait_until(lambda asking=asking: int(asking) not in workers_of(master)
                   and len(workers_of(master)) == WORKERS, 30,
                   "the recycle to settle")
        time.sleep(1)  # and it stays so: no recycle is due (no load now)
        workers = workers_of(master)
        assert len(workers) == WORKERS, (workers, server.stderr()[-2000:])
        assert int(asking) not in workers
        for _ in range(5):
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_a_replacement_asked_for_by_a_worker_already_gone_is_not_forked(
        redis_server, make_gunicorn):
    """A recycling worker's note and SIGTTIN, handled after the worker is
    gone (a reload stopped it first): the master takes the extra worker back
    at once instead of running one worker more for good."""
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=0)
    master = server.process.pid
    workers = workers_of(master)
    [board] = {os.path.dirname(p) for pid in workers
               for p in glob.glob(f"/dev/shm/gunicorn-workers-*/ready-{pid}")
               + glob.glob(f"{tempfile.gettempdir()}/gunicorn-workers-*/ready-{pid}")}
    (Path(board) / "surge-999999999").touch()  # above any pid_max: no such worker
    server.process.send_signal(signal.SIGTTIN)
    wait_until(lambda: not list(Path(board).glob("surge-*")), 10, "the master to take the note")
    time.sleep(1.5)
    assert sorted(workers_of(master)) == sorted(workers)
    assert server.stderr().count("Booting worker") == WORKERS


def nice_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (FileNotFoundError, IndexError):
        return None


def test_a_worker_boots_at_low_priority_and_serves_at_normal(redis_server, make_gunicorn):
    """A replacement boots beside the workers serving, at a lower CPU priority
    (gunicorn.conf.py, BOOT_NICENESS), and serves at the master's. Here with an
    operator's SIGTTIN, which the master answers with a plain worker more
    (no recycle is waiting for it); SIGTTOU takes it back."""
    server = recycling_server(redis_server, make_gunicorn, MAX_REQUESTS=0)
    master = server.process.pid
    normal = nice_of(master)
    before = set(workers_of(master))
    wait_until(lambda: all(f"Worker accepting (pid:{pid})" in server.stderr() for pid in before),
               20, "both workers to accept")
    assert {nice_of(pid) for pid in before} == {normal}
    seen: list[int | None] = []
    server.process.send_signal(signal.SIGTTIN)
    deadline = time.monotonic() + 20
    new = set()
    while time.monotonic() < deadline:
        new = set(workers_of(master)) - before
        if new:
            seen.append(nice_of(min(new)))
            if f"Worker accepting (pid:{min(new)})" in server.stderr():
                break
        time.sleep(0.005)
    assert new, "no worker forked after SIGTTIN"
    assert normal + 10 in seen, seen  # while it booted
    assert nice_of(min(new)) == normal  # once it accepts
    assert len(workers_of(master)) == WORKERS + 1
    server.process.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(workers_of(master)) == WORKERS, 20, "back to two workers")


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
        # At 0, 2.6 and 5.2 s: past the age the default (5 s) would draw
        # (2.5-5 s), one connection throughout.
        client_port = None
        for i in range(3):
            if i:
                time.sleep(2.6)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("Connection") != "close", f"closed at request {i + 1}"
            client_port = client_port or conn.sock.getsockname()[1]
            assert conn.sock.getsockname()[1] == client_port
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
    assert board.take_turn(99) == (False, 2)  # becomes due
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


def test_ready_board_counts_live_markers_and_gives_one_the_turn(tmp_path):
    holder = hold_marker(tmp_path, 1001)
    try:
        me = ReadyBoard(str(tmp_path), os.getpid())
        assert me.take_turn(1) == (False, 1)  # not accepting itself: no turn
        me.mark_ready()
        assert me.accepting() == 2
        assert me.take_turn(3) == (False, 2)  # one of three missing
        assert me.take_turn(2) == (True, 2)
        me.leave()
        assert not me.marked and not (tmp_path / f"ready-{os.getpid()}").exists()
        assert me.accepting() == 1
        # One accepts now, so nobody else gets the turn.
        assert ReadyBoard(str(tmp_path), 1003).take_turn(2) == (False, 1)
    finally:
        holder.kill()
        holder.wait()


def test_ready_board_ignores_and_removes_the_marker_of_a_killed_worker(tmp_path):
    holder = hold_marker(tmp_path, 1002)
    me = ReadyBoard(str(tmp_path), os.getpid())
    me.mark_ready()
    assert me.take_turn(3) == (False, 2)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "ready-1002").exists()  # left behind by SIGKILL
    assert me.take_turn(2) == (False, 1)
    assert not (tmp_path / "ready-1002").exists()
    me.leave()


def test_ready_board_lets_the_longest_due_go_first_once_the_newest_settled(tmp_path):
    me = ReadyBoard(str(tmp_path), os.getpid())
    me.mark_ready()
    holder = hold_marker(tmp_path, 1004, "due")  # due before this process asks
    try:
        assert me.take_turn(2) == (False, 2)  # the other has waited longer
        assert me.marked
    finally:
        holder.kill()
        holder.wait()
    # The holder's marker is stale now; a fresh one is newer than 60 s.
    holder = hold_marker(tmp_path, 1005)
    try:
        assert me.take_turn(2, settle=60) == (False, 2)
        assert me.take_turn(2, settle=0) == (True, 2)
    finally:
        holder.kill()
        holder.wait()


def test_ready_board_asks_for_a_surge_with_a_note_only_when_the_signal_went(tmp_path):
    from service.recycling import take_surge_request

    me = ReadyBoard(str(tmp_path), os.getpid())
    received = []
    previous = signal.signal(signal.SIGTTIN, lambda *_: received.append(True))
    try:
        me.ask_for_surge(os.getpid())
    finally:
        signal.signal(signal.SIGTTIN, previous)
    assert received == [True]
    assert take_surge_request(str(tmp_path)) == os.getpid()
    assert take_surge_request(str(tmp_path)) is None  # the note was taken
    with pytest.raises(ProcessLookupError):
        me.ask_for_surge(999_999_999)  # above any pid_max: the signal cannot go
    assert not list(tmp_path.glob("surge-*"))
    assert take_surge_request(str(tmp_path)) is None
