"""gunicorn settings: gevent workers, binds, timeouts, hooks.

Every value can be set from the environment (or .env). Order matters here:
this file runs in the master *before* the workers patch the standard library,
so it imports nothing but the standard library and service.config /
service.bootguard, which are import-light on purpose. The app itself
(wsgi:app) is imported in each worker after gevent patched it; keep
preload_app off, or ssl and client libraries load unpatched (gunicorn #2796).
"""

import os
import sys

from service import bootguard
from service.config import ConfigError, Settings, load_dotenv_file

load_dotenv_file()
try:
    settings = Settings.from_env().require_valid()
except ConfigError as exc:
    sys.exit(str(exc))


def env(name, default):
    return os.environ.get(name) or default


# -- Server socket
bind = env("BIND", "127.0.0.1:8000").split(",")
backlog = int(env("BACKLOG", 2048))
# A unix socket is created with this umask (gunicorn's default, 0, makes it
# srwxrwxrwx): owner and group only, since peers on it are trusted for
# X-Forwarded-For. nginx gets in through the group (deploy/README.md).
umask = 0o007

# -- Workers
# gevent: each worker serves many requests at once, one greenlet each, so
# one worker per core is enough. service.worker.GeventWorker is gunicorn's
# gevent worker that also closes idle keep-alive connections on shutdown, so
# reloads and Ctrl-C do not wait out graceful_timeout.
worker_class = env("WORKER_CLASS", "service.worker.GeventWorker")
workers = int(env("WEB_CONCURRENCY", os.cpu_count() or 1))
worker_connections = int(env("WORKER_CONNECTIONS", 1000))
preload_app = False
max_requests = int(env("MAX_REQUESTS", 10000))
max_requests_jitter = int(env("MAX_REQUESTS_JITTER", 1000))
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# -- Timeouts (seconds). For gevent workers `timeout` is a heartbeat: a
# worker whose hub is blocked that long is killed and replaced.
timeout = int(env("GUNICORN_TIMEOUT", 30))
graceful_timeout = int(env("GRACEFUL_TIMEOUT", 30))
# Longer than nginx's upstream keepalive_timeout, so nginx closes first.
keepalive = int(env("KEEPALIVE", 75))

# -- Proxy trust: the same list the app uses (service.middleware.TrustedProxy).
# Peers on a unix socket are always trusted by gunicorn.
forwarded_allow_ips = ",".join(settings.forwarded_allow_ips) if settings.proxy_hops else ""

# -- Logging: gunicorn's own messages to stderr; the app writes one access
# line per request to stdout, so gunicorn's access log is off.
accesslog = None
errorlog = "-"
loglevel = settings.log_level.lower()
proc_name = env("PROC_NAME", "service")

# -- Control socket (gunicorn >= 25.1): off unless a path is given, so that
# several instances on one machine do not fight over ~/.gunicorn/gunicorn.ctl.
control_socket = env("GUNICORN_CONTROL_SOCKET", "")
if control_socket:
    control_socket_mode = 0o600
else:
    control_socket_disable = True


def _is_gevent(worker):
    return any(
        cls.__module__ == "gunicorn.workers.ggevent" and cls.__name__ == "GeventWorker"
        for cls in type(worker).__mro__
    )


def post_fork(server, worker):
    # Still before patching: note which client libraries the master imported.
    worker.imported_before_patch = bootguard.imported_clients()


def post_worker_init(worker):
    worker.is_gevent = _is_gevent(worker)  # once, not per request
    if not worker.is_gevent:
        return
    problems = bootguard.problems(worker.imported_before_patch)
    if problems:
        worker.log.error(
            "Refusing to boot a gevent worker:\n  - %s", "\n  - ".join(problems)
        )
        sys.exit(3)  # WORKER_BOOT_ERROR: the master stops instead of respawning


def post_request(worker, req, environ, resp):
    # Yield to the hub once per request. Without it a keep-alive connection
    # whose next request is already buffered is served back to back while
    # others wait (p99 of seconds, measured: shared/FIELD-NOTES.md);
    # gevent.idle() lets every ready socket in first.
    if getattr(worker, "is_gevent", False):
        import gevent

        gevent.idle()
