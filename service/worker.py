"""gunicorn's gevent worker, closing idle keep-alive connections on shutdown.

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

Loaded by the master before fork, so it imports nothing that gevent must
patch first (gunicorn's own gevent worker module is loaded there anyway).
"""

from __future__ import annotations

import time

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

SHUTDOWN_GRACE = 0.5


class GeventWorker(_GeventWorker):
    def init_process(self):
        # greenlet -> (the Timeout of its keep-alive wait, when the wait began)
        self.idle_waits: dict = {}
        super().init_process()

    def run(self):
        gevent.spawn(self._close_idle_on_shutdown)
        gevent.spawn(self._run_shutdown_callbacks)
        super().run()

    def timeout_ctx(self):
        return _IdleWait(self)

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi

        def closing_on_shutdown(environ, start_response):
            # gunicorn decides Connection: close before the app runs; a
            # request that was in flight when shutdown began must say close
            # too, or the client may send its next request into a closed socket.
            def start(status, headers, exc_info=None):
                response = getattr(start_response, "__self__", None)
                if not self.alive and hasattr(response, "force_close"):
                    response.force_close()
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.wsgi = closing_on_shutdown

    def _close_idle_on_shutdown(self):
        while self.alive:
            gevent.sleep(0.1)
        gevent.sleep(SHUTDOWN_GRACE)
        cutoff = time.monotonic() - SHUTDOWN_GRACE
        for greenlet, (timeout, since) in list(self.idle_waits.items()):
            # Raising the wait's own Timeout is the keep-alive expiry path:
            # the with-block swallows it and the connection is closed. Waits
            # that began after shutdown expire on their own (SHUTDOWN_GRACE).
            if since <= cutoff:
                greenlet.kill(timeout, block=False)

    # -- Long-lived connections (service/shutdown.py): live-event WebSockets
    # close with 1001 "going away" as soon as shutdown begins, instead of
    # holding the worker until graceful_timeout.
    def _run_shutdown_callbacks(self):
        while self.alive:
            gevent.sleep(0.1)
        # Imported now, not with this module: the master forgets the app's
        # modules before it forks (gunicorn.conf.py), so the callbacks are in
        # the copy the app imported in this worker.
        from service import shutdown

        shutdown.run()


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
