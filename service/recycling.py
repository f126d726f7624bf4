"""Which workers of one gunicorn master are accepting: one locked file each.

gunicorn recycles a worker (``max_requests``) by letting it stop and then
forking a replacement, which accepts only once it has imported the app. Each
worker decides alone, so two workers that reach their limit close together
both stop and nothing accepts until a replacement has booted (gunicorn #2297
and #3227 describe related stalls). ``ReadyBoard`` gives one worker at a time
the turn to recycle, while every worker is accepting:

- a worker that accepts holds an exclusive ``flock`` on ``ready-<pid>`` in a
  directory made per master run (gunicorn.conf.py's ``on_starting``);
- a worker past its limit takes the board's lock and counts the markers whose
  lock is still held: its turn comes when all are there, the newest for a few
  seconds (the load spreads over a replacement before the next recycle), and
  no other has waited longer;
- on its turn it leaves a ``surge-<pid>`` note and sends the master SIGTTIN
  (service/worker.py): the master forks one worker more, its replacement,
  and takes it back once the old worker has exited (gunicorn.conf.py). The
  old worker stops accepting once the board counts one worker more than
  expected.

The kernel drops a process's locks when it dies, even by SIGKILL and before
the master reaps it, so a marker whose lock can be taken is stale. Standard
library only: the master imports this module before gevent patches anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time

LOCK_NAME = "lock"
PREFIX = "ready-"
SURGE_PREFIX = "surge-"


class ReadyBoard:
    def __init__(self, directory: str, pid: int):
        self.directory = directory
        self.pid = pid
        self.marker = os.path.join(directory, f"{PREFIX}{pid}")
        self._fd: int | None = None
        self._since = 0.0  # when this process began to accept
        self._due: float | None = None  # when it first asked to leave

    @property
    def marked(self) -> bool:
        return self._fd is not None

    def mark_ready(self) -> None:
        """Announce that this process accepts connections."""
        if self._fd is not None:
            return
        temporary = os.path.join(self.directory, f".{PREFIX}{self.pid}")
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd, self._since, self._due = fd, time.time(), None
            self._write()
            # Locked and written before it has its name, so nobody sees it
            # unlocked (stale) or empty.
            os.rename(temporary, self.marker)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def leave(self) -> None:
        """This process no longer accepts (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.marker)
        os.close(self._fd)
        self._fd = None

    def peers(self) -> set[str]:
        """Names of the other markers (some may be stale)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        own = os.path.basename(self.marker)
        return {n for n in names if n.startswith(PREFIX) and n != own}

    def _live(self) -> list[tuple[float, float | None]]:
        """(accepting since, due since) of each live marker, this process's included.

        Only under the board's lock: markers are written and renamed under it.
        """
        live = []
        for name in os.listdir(self.directory):
            if not name.startswith(PREFIX):
                continue
            path = os.path.join(self.directory, name)
            if path != self.marker:
                state = _read_if_held(path)
                if state is not None:
                    live.append(state)
            elif self._fd is not None:
                live.append((self._since, self._due))
        return live

    def take_turn(self, needed: int, settle: float = 0.0) -> tuple[bool, int]:
        """Whether it is this process's turn to recycle: ``needed`` processes
        (this one included) accept, the newest of them for ``settle`` seconds
        or more, and no other has been due longer than this one (so none
        waits forever). Asking makes this process due, if it was not.

        Returns (its turn, how many accept). Never blocks: when another
        process is checking at this very moment, the answer is (False, -1).
        """
        with self._locked() as locked:
            if not locked:
                return False, -1
            live = self._live()
            if self._fd is None:
                return False, len(live)
            if self._due is None:
                self._due = time.time()
                self._write()
                live = self._live()
            newest = max(since for since, _ in live)
            first_due = min(due for _, due in live if due is not None)
            mine = (len(live) >= needed and time.time() - newest >= settle
                    and self._due <= first_due)
            return mine, len(live)

    def accepting(self) -> int:
        """How many processes accept (this one included); -1 while another
        process holds the board."""
        with self._locked() as locked:
            return len(self._live()) if locked else -1

    def ask_for_surge(self, master: int) -> None:
        """Ask the master for one worker more (SIGTTIN), with a note saying
        the signal is this process's: gunicorn.conf.py then counts the
        extra worker as its replacement and takes it back once this process
        has exited (take_surge_request)."""
        path = os.path.join(self.directory, f"{SURGE_PREFIX}{self.pid}")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        try:
            os.kill(master, signal.SIGTTIN)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # no signal, no note: an operator's TTIN stays theirs
            raise

    def _write(self) -> None:
        data = f"{self._since!r} {self._due!r}".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.directory, LOCK_NAME),
                     os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            yield _try_lock(fd)
        finally:
            os.close(fd)  # also releases the lock


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _read_if_held(path: str) -> tuple[float, float | None] | None:
    """(accepting since, due since) of a marker a live process holds, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _try_lock(fd):
            since, due = os.pread(fd, 100, 0).decode().split()
            return float(since), None if due == "None" else float(due)
        # Its owner is gone (exited or killed; its locks went with it).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return None
    finally:
        os.close(fd)


def take_surge_request(directory: str) -> int | None:
    """In the master, on SIGTTIN: the pid of the worker that asked for a
    surge (ReadyBoard.ask_for_surge), its note removed; None when the signal
    came from someone else (an operator adding a worker)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return None
    for name in names:
        pid = name[len(SURGE_PREFIX):]
        if name.startswith(SURGE_PREFIX) and pid.isdigit():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
            return int(pid)
    return None
