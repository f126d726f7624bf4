"""gunicorn's gevent worker: clean shutdown, recycling one worker at a time.

The stock worker stops accepting on TERM/HUP but leaves idle keep-alive
connections open until ``keepalive`` or ``graceful_timeout`` runs out, still
serving new requests that arrive on them. Behind nginx (which keeps upstream
connections open) every reload then lingers for ``graceful_timeout`` and ends
by force-killing whatever is running at that moment, and Ctrl-C in
development hangs while a browser holds a connection.

Here, once shutdown begins, a connection idle between requests gets
SHUTDOWN_GRACE seconds for a request that may already be on its way (it is
answered with Connection: close), then it is closed exactly as an expired
keep-alive timeout would close it. Requests in flight finish normally and
are answered with Connection: close.

Recycling (``max_requests``) is coordinated through service/recycling.py: a
worker past its limit waits for its turn (every worker accepting, the newest
for RECYCLE_SETTLE, no other due longer), serving meanwhile; then it asks the
master for one worker more (SIGTTIN) and stops accepting only once that
replacement accepts (or SURGE_TIMEOUT passed). So two workers never recycle
together and the service never has a worker fewer for a recycle. run() polls
every RUN_POLL, so a stopping worker exits sooner. The board's directory and
the worker count come from gunicorn.conf.py's hooks, which also take the
extra worker back; without them the worker recycles as gunicorn's does, alone.

Keep-alive connections stick to the worker that accepted them, so after a
killed worker the survivor keeps the connections the other dropped. When a
worker joins the board and the workers are back to their number, the others
close each of their connections after its next response (within
SHED_SPREAD), and the clients reconnect to whichever worker accepts first:
the idle newcomer wins most.
With ``keepalive_max_age`` set, a connection older than a random age between
half of it and all of it is closed the same way (nginx's ``keepalive_time``),
which bounds any other imbalance.

Loaded by the master before fork, so it imports nothing that gevent must
patch first (gunicorn's own gevent worker module is loaded there anyway).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from service.inline import direct
from service.recycling import ReadyBoard

SHUTDOWN_GRACE = 0.5
RECYCLE_POLL = 0.1
# Seconds the newest worker must have accepted before another one recycles: two
# workers past their limit would otherwise stop back to back, doubling the
# time with one worker fewer, and the load would not spread in between.
RECYCLE_SETTLE = 5.0
RUN_POLL = 0.1
SHED_SPREAD = 1.0
# A replacement that does not accept by then (it cannot boot, or the master
# missed the signal) no longer holds the recycle back.
SURGE_TIMEOUT = 30.0


class GeventWorker(_GeventWorker):
    # Set in the master by gunicorn.conf.py's pre_fork hook.
    recycle_dir: str | None = None  # the ReadyBoard's directory, one per master run
    expected_workers = 1  # how many workers the master runs
    keepalive_max_age = 0.0  # seconds; 0: keep-alive connections live until idle

    def init_process(self):
        # greenlet -> (the Timeout of its keep-alive wait, when the wait began)
        self.idle_waits: dict = {}
        # greenlet -> when its connection is to close (keepalive_max_age)
        self.close_after: dict = {}
        self.board = ReadyBoard(self.recycle_dir, self.pid) if self.recycle_dir else None
        # gunicorn stops the worker by itself once nr reaches max_requests;
        # with a board, _watch_board decides instead.
        self.recycle_at = self.max_requests
        if self.board is not None:
            self.max_requests = sys.maxsize
        super().init_process()

    def run(self):
        """gunicorn's GeventWorker.run, polling every RUN_POLL instead of 1 s.

        The master forks a replacement only once this process has exited, so
        every second spent between "stop accepting" and exit is a second
        with one worker fewer: stock gunicorn spends up to 1 s noticing the
        stop and then waits for in-flight requests in steps of 1 s.
        """
        gevent.spawn(self._on_shutdown)
        if self.board is not None:
            # Runs at the first switch to the hub: the servers accept by then.
            gevent.spawn(self._watch_board)
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for s in self.sockets:
            s.setblocking(1)
            server = StreamServer(s, handle=self._handler(s),
                                  spawn=Pool(self.worker_connections), **ssl_args)
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            servers.append(server)

        last_notified = 0.0
        while self.alive:
            if time.monotonic() - last_notified >= 1.0:
                self.notify()
                last_notified = time.monotonic()
            gevent.sleep(RUN_POLL)

        try:
            for server in servers:
                server.close()  # stop accepting
            # Finish the requests in flight, up to graceful_timeout.
            deadline = time.monotonic() + self.cfg.graceful_timeout
            while time.monotonic() <= deadline:
                if all(server.pool.free_count() == server.pool.size for server in servers):
                    return
                if time.monotonic() - last_notified >= 1.0:
                    self.notify()
                    last_notified = time.monotonic()
                gevent.sleep(RUN_POLL)
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            for server in servers:
                server.stop(timeout=1)
        except Exception:  # exiting either way, as in gunicorn's run
            self.log.debug("Error while stopping the servers", exc_info=True)

    def _handler(self, listener):
        # A closure, not functools.partial: a partial is called through C,
        # which starts a C-level interpreter frame every connection's
        # greenlet keeps while it waits (service.inline.direct).
        handle = self.handle

        def handle_connection(client, addr):
            return handle(listener, client, addr)

        return handle_connection

    def handle(self, listener, client, addr):
        age = self.keepalive_max_age * random.uniform(0.5, 1.0) or math.inf
        self.close_after[gevent.getcurrent()] = time.monotonic() + age
        try:
            super().handle(listener, client, addr)
        finally:
            self.close_after.pop(gevent.getcurrent(), None)

    def _must_close(self, status: str) -> bool:
        if not self.alive:
            return True
        # Not on a 101: an upgraded connection (WebSocket) serves no further
        # request, and its handshake must say Upgrade, not close.
        past_age = time.monotonic() >= self.close_after.get(gevent.getcurrent(), math.inf)
        return past_age and not status.startswith("101")

    def _shed_connections(self):
        """Close every connection after its next response, within SHED_SPREAD."""
        now = time.monotonic()
        for greenlet, close_after in list(self.close_after.items()):
            self.close_after[greenlet] = min(close_after, now + random.uniform(0, SHED_SPREAD))

    def timeout_ctx(self):
        return _IdleWait(self)

    def load_wsgi(self):
        super().load_wsgi()
        app = direct(self.wsgi)

        def closing_on_shutdown(environ, start_response):
            # gunicorn decides Connection: close before the app runs; a
            # request that was in flight when shutdown began must say close
            # too, or the client may send its next request into a closed
            # socket. So does the last response of a connection past its age.
            def start(status, headers, exc_info=None):
                response = getattr(start_response, "__self__", None)
                if self._must_close(status) and hasattr(response, "force_close"):
                    response.force_close()
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.wsgi = closing_on_shutdown

    def _watch_board(self):
        board = self.board
        if not self.alive:
            return  # stopped while it booted (gunicorn.conf.py, post_fork)
        # Said before the board counts it: once it does, a worker waiting for
        # this replacement may stop and say so, and the log must read in order.
        self.log.info("Worker accepting (pid:%s)", self.pid)
        try:
            board.mark_ready()
        except OSError as exc:
            self.log.warning("Recycling alone: cannot write to %s (%s)", board.directory, exc)
            self.max_requests = self.recycle_at
            return
        deferred = None  # how many accepted when this worker last said it waits
        surge_since = None  # when it asked the master for its replacement
        joined = False  # a worker joined the board since the last shedding check
        peers = board.peers()
        while self.alive:
            gevent.sleep(RECYCLE_POLL)
            if not self.alive:
                break
            # A worker joined after a crash (or any stretch with a worker
            # fewer): the clients that piled onto this one reconnect, and the
            # accept race spreads them over all workers again. Not when it is
            # the extra worker of a recycle: the clients of the worker it
            # replaces reconnect anyway, and the idle newcomer wins most.
            now = board.peers()
            joined = joined or bool(now - peers)
            peers = now
            if joined:
                with contextlib.suppress(OSError):
                    accepting = board.accepting()  # -1: busy, ask again next poll
                    if accepting >= 0:
                        joined = False
                        if accepting <= self.expected_workers:
                            self._shed_connections()
            if self.nr < self.recycle_at:
                continue
            if surge_since is None:
                try:
                    mine, accepting = board.take_turn(self.expected_workers, RECYCLE_SETTLE)
                except OSError as exc:
                    self.log.warning("Recycling without asking the others: %s", exc)
                    self._recycle("?")
                    return
                if mine:
                    surge_since = self._ask_for_replacement()
                    continue
                if accepting < 0:
                    continue  # another worker is checking right now
                if accepting != deferred:  # once per count, not every poll
                    deferred = accepting
                    self.log.info("Worker reached %s requests (pid:%s); restarting once all "
                                  "%s workers accept (now %s), the newest for %s s", self.nr,
                                  self.pid, self.expected_workers, accepting, RECYCLE_SETTLE)
                continue
            # Stop once the replacement accepts: one more than expected.
            try:
                accepting = board.accepting()
            except OSError:
                accepting = -1  # the timeout below still ends the wait
            if accepting > self.expected_workers:
                self._recycle(accepting)
                return
            if time.monotonic() - surge_since > SURGE_TIMEOUT:
                self.log.warning("No replacement accepted within %s s (pid:%s); "
                                 "restarting anyway", SURGE_TIMEOUT, self.pid)
                self._recycle(accepting)
                return

    def _ask_for_replacement(self) -> float:
        """The replacement boots while this worker serves (ReadyBoard.ask_for_surge)."""
        try:
            self.board.ask_for_surge(self.ppid)
        except OSError as exc:  # the note or the signal: the timeout recycles
            self.log.warning("Cannot ask the master for a replacement: %s", exc)
        self.log.info("Worker reached %s requests (pid:%s); its replacement is starting, "
                      "it stops once that one accepts", self.nr, self.pid)
        return time.monotonic()

    def _recycle(self, accepting) -> None:
        self.board.leave()
        self.log.info("Autorestarting worker after %s requests (pid:%s), %s workers were "
                      "accepting, %s expected", self.nr, self.pid, accepting,
                      self.expected_workers)
        self.alive = False

    def _on_shutdown(self):
        """Once shutdown begins (TERM, HUP, recycling): stop counting as
        accepting, close long-lived connections (service/shutdown.py:
        live-event WebSockets go away with 1001 instead of holding the worker
        until graceful_timeout), then close idle keep-alive connections."""
        while self.alive:
            gevent.sleep(0.1)
        if self.board is not None:
            self.board.leave()  # also on TERM/HUP: this worker accepts no more
        # Imported now, not with this module: the master forgets the app's
        # modules before it forks (gunicorn.conf.py), so the callbacks are in
        # the copy the app imported in this worker.
        from service import shutdown

        gevent.spawn(shutdown.run)
        gevent.sleep(SHUTDOWN_GRACE)
        cutoff = time.monotonic() - SHUTDOWN_GRACE
        for greenlet, (timeout, since) in list(self.idle_waits.items()):
            # Raising the wait's own Timeout is the keep-alive expiry path:
            # the with-block swallows it and the connection is closed. Waits
            # that began after shutdown expire on their own (SHUTDOWN_GRACE).
            if since <= cutoff:
                greenlet.kill(timeout, block=False)


class _IdleWait:
    """The keep-alive wait for a connection's next request."""

    def __init__(self, worker: GeventWorker):
        self.worker = worker
        seconds = worker.cfg.keepalive if worker.alive else SHUTDOWN_GRACE
        # exception=False: expiry silently leaves the with-block (no request).
        self.timeout = gevent.Timeout(seconds, False)

    def __enter__(self):
        self.timeout.__enter__()
        self.worker.idle_waits[gevent.getcurrent()] = (self.timeout, time.monotonic())
        return self.timeout

    def __exit__(self, *exc_info):
        self.worker.idle_waits.pop(gevent.getcurrent(), None)
        return self.timeout.__exit__(*exc_info)
