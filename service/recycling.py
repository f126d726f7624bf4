"""Which workers of one gunicorn master are accepting: one locked file each.

gunicorn recycles a worker (``max_requests``) by letting it stop and then
forking a replacement, which accepts only once it has imported the app. Each
worker decides alone, so two workers that reach their limit close together
both stop and nothing accepts until a replacement has booted (gunicorn #2297
and #3227 describe related stalls). ``ReadyBoard`` lets a worker recycle only
while every worker is accepting, one at a time:

- a worker that accepts holds an exclusive ``flock`` on ``ready-<pid>`` in a
  directory made per master run (gunicorn.conf.py's ``on_starting``);
- a worker that wants to stop takes the board's lock, counts the markers
  whose lock is still held, and removes its own marker (the others now count
  one fewer) only if all were there.

The kernel drops a process's locks when it dies, even by SIGKILL and before
the master reaps it, so a marker whose lock can be taken is stale. Standard
library only: the master imports this module before gevent patches anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

LOCK_NAME = "lock"
PREFIX = "ready-"


class ReadyBoard:
    def __init__(self, directory: str, pid: int):
        self.directory = directory
        self.pid = pid
        self.marker = os.path.join(directory, f"{PREFIX}{pid}")
        self._fd: int | None = None

    @property
    def marked(self) -> bool:
        return self._fd is not None

    def mark_ready(self) -> None:
        """Announce that this process accepts connections."""
        if self._fd is not None:
            return
        temporary = os.path.join(self.directory, f".{PREFIX}{self.pid}")
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Locked before it has its name, so nobody sees it unlocked (stale).
            os.rename(temporary, self.marker)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

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

    def _count(self) -> int:
        """How many processes accept now (this one included); stale markers go.

        Only under the board's lock, so no marker is being renamed into place.
        """
        count = 0
        for name in os.listdir(self.directory):
            if not name.startswith(PREFIX):
                continue
            path = os.path.join(self.directory, name)
            if path == self.marker:
                count += self._fd is not None
            elif _held(path):
                count += 1
        return count

    def try_leave(self, needed: int) -> tuple[bool, int]:
        """Stop accepting if ``needed`` processes (this one included) accept.

        Returns (left, how many accepted). Never blocks: when another process
        is checking at this very moment, the answer is (False, -1).
        """
        with self._locked() as locked:
            if not locked:
                return False, -1
            count = self._count()
            if self._fd is not None and count >= needed:
                self.leave()
                return True, count
            return False, count

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.directory, LOCK_NAME),
                     os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)  # also releases the lock


def _held(path: str) -> bool:
    """Whether a live process holds the lock of the marker at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        # Its owner is gone (exited or killed; its locks went with it).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)

