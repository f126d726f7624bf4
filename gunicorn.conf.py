"""gunicorn settings: gevent workers, binds, timeouts, hooks.

Every value comes from the environment (or .env), read and checked by
service.config: a bad value stops the start with one line naming it. Order
matters here: this file runs in the master *before* the workers patch the
standard library, so it imports nothing but the standard library and
service.config / service.bootguard, which are import-light on purpose
(python-dotenv and the limits parser, no client library). The app itself
(wsgi:app) is imported in each worker after gevent patched it; keep
preload_app off, or ssl and client libraries load unpatched (gunicorn #2796).

A reload (HUP) runs the code on disk: gunicorn executes this file again, and
the master forgets the application's modules it imported (the settings, the
boot guard, the worker class) before importing them again and before every
fork, so no worker reuses an old version. What a HUP does not reload:
deploy/README.md, "6. Deploying a new version without downtime".
"""

import gc
import importlib
import os
import sys

APP_PACKAGE = "service"
# Allocations minus deallocations before a young-generation collection
# (Python's default: 700); see post_worker_init.
GC_YOUNG_THRESHOLD = 20_000


def forget_app_modules():
    """Drop the application's modules from sys.modules (never libraries)."""
    for name in [n for n in sys.modules if n.partition(".")[0] == APP_PACKAGE]:
        del sys.modules[name]


# gunicorn runs this file again on HUP, where `import` would return whatever
# the master imported since its last fork (pre_fork forgets the rest).
forget_app_modules()
bootguard = importlib.import_module("service.bootguard")
app_config = importlib.import_module("service.config")

app_config.load_dotenv_file()
try:
    settings = app_config.Settings.from_env().require_valid()
except app_config.ConfigError as exc:
    sys.exit(str(exc))


# -- Server socket
bind = list(settings.bind)
backlog = settings.backlog
# A unix socket is created with this umask (gunicorn's default, 0, makes it
# srwxrwxrwx): owner and group only, since peers on it are trusted for
# X-Forwarded-For. nginx gets in through the group (deploy/README.md).
umask = 0o007

# -- Workers
# gevent: each worker serves many requests at once, one greenlet each, so
# one worker per core is enough. service.worker.GeventWorker is gunicorn's
# gevent worker that also closes idle keep-alive connections on shutdown, so
# reloads and Ctrl-C do not wait out graceful_timeout.
worker_class = settings.worker_class
workers = settings.workers
worker_connections = settings.worker_connections
preload_app = False
max_requests = settings.max_requests
max_requests_jitter = settings.max_requests_jitter
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# -- Timeouts (seconds). For gevent workers `timeout` is a heartbeat: a
# worker whose hub is blocked that long is killed and replaced.
timeout = settings.worker_timeout
graceful_timeout = settings.graceful_timeout
# Longer than nginx's upstream keepalive_timeout, so nginx closes first.
keepalive = settings.keepalive

# -- Proxy trust: the same list the app uses (service.middleware.TrustedProxy).
# Peers on a unix socket are always trusted by gunicorn.
forwarded_allow_ips = ",".join(settings.forwarded_allow_ips) if settings.proxy_hops else ""

# -- Logging: gunicorn's own messages to stderr; the app writes one access
# line per request to stdout, so gunicorn's access log is off.
accesslog = None
errorlog = "-"
loglevel = settings.log_level.lower()
proc_name = settings.proc_name

# -- Control socket (gunicorn >= 25.1): off unless a path is given, so that
# several instances on one machine do not fight over ~/.gunicorn/gunicorn.ctl.
control_socket = settings.control_socket
if control_socket:
    control_socket_mode = 0o600
else:
    control_socket_disable = True


def _is_gevent(worker):
    return any(
        cls.__module__ == "gunicorn.workers.ggevent" and cls.__name__ == "GeventWorker"
        for cls in type(worker).__mro__
    )


def pre_fork(server, worker):
    # Runs in the master, the worker class loaded (gunicorn loads it after
    # this file): forget it and the settings modules, so that every worker,
    # also one replacing a crashed or recycled worker without a HUP, imports
    # the whole app from disk, never half of it from the master's memory.
    # (With preload_app the app object itself comes from the master: leave it.)
    if not server.cfg.preload_app:
        forget_app_modules()


def post_fork(server, worker):
    # Still before patching: note which client libraries the master imported.
    worker.imported_before_patch = bootguard.imported_clients()


def post_worker_init(worker):
    # The app is loaded. Its modules, app object and clients live as long as
    # the worker: freeze them out of the cyclic collector's scans, and let
    # the youngest generation grow larger before a collection. With 1,000
    # requests in flight the collector took 15 % of a worker's CPU on /io
    # (3 % in bare Flask); frozen and at 20,000: 2 % (perf samples, bench/README.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    # Headers and body in one send, Date formatted once a second.
    importlib.import_module("service.gunicorn_response").install()
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
    # others wait (p99 of seconds: bench/workers.py, bench/README.md);
    # gevent.idle() lets every ready socket in first.
    if getattr(worker, "is_gevent", False):
        import gevent

        gevent.idle()
