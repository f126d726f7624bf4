"""gunicorn settings: gevent workers, binds, timeouts, hooks.

Every value comes from the environment (or .env), read and checked by
service.config: a bad value stops the start with one line naming it. Order
matters here: this file runs in the master *before* the workers patch the
standard library, so it imports nothing but the standard library and
service.config / service.bootguard, which are import-light on purpose
(python-dotenv and the limits parser, no client library), plus
prometheus_client's multiprocess module when METRICS_BIND is set. The app itself
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
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
recycling = importlib.import_module("service.recycling")  # standard library only

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
# Recycling: a worker restarts after MAX_REQUESTS (+ jitter) requests, one
# worker at a time and only while all others accept (the recycling hooks
# at the end of this file, service/worker.py).
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
# LOG_FORMAT=json: gunicorn's own lines are JSON objects too, in the app's
# format (service/logformat.py, standard library only).
if settings.log_format == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": settings.log_level, "handlers": []},
        "loggers": {"gunicorn.error": {"level": settings.log_level, "handlers": ["json_stderr"],
                                       "propagate": False}},
        "handlers": {"json_stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                     "stream": "ext://sys.stderr"}},
        "formatters": {"json": {"()": "service.logformat.JSONFormatter"}},
    }

# -- Control socket (gunicorn >= 25.1): off unless a path is given, so that
# several instances on one machine do not fight over ~/.gunicorn/gunicorn.ctl.
control_socket = settings.control_socket
if control_socket:
    control_socket_mode = 0o600
else:
    control_socket_disable = True


# -- Metrics (service/metrics.py), when METRICS_BIND is set. Every worker
# writes its values into PROMETHEUS_MULTIPROC_DIR, which must be set here,
# before any worker imports prometheus_client; a reload (HUP) keeps it. Without
# a directory given, each run gets a fresh one under the temp dir. The master
# starts service/metrics_exporter.py to serve them (metrics_* hooks below).
METRICS_TEMP_PREFIX = "service-metrics-"
if not settings.metrics_bind:
    # Off: workers keep their (unserved) counts in memory, never in files.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
else:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # On tmpfs when there is one, like worker_tmp_dir: the files are
        # memory-mapped and written constantly; a disk would write them back.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix=METRICS_TEMP_PREFIX, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    # Imported here, before fork and patching, on purpose: its value locks are
    # then plain thread locks, which cost a third of gevent's per increment
    # (bench/metrics.py). Safe: no greenlet switch can happen while one is held
    # (a memory write), and the watchdog's monitor thread never takes them.
    # prometheus_client holds no socket or ssl objects (service/bootguard.py).
    import prometheus_client.multiprocess


def metrics_dir():
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) if settings.metrics_bind else None


def metrics_on_starting(server):
    """Once per run (not on reload): start from an empty directory."""
    if directory := metrics_dir():
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()


def metrics_when_ready(server):
    if not settings.metrics_bind:
        return
    exporter = subprocess.Popen(
        [sys.executable, "-m", "service.metrics_exporter", settings.metrics_bind],
        cwd=Path(__file__).resolve().parent,
    )
    server.metrics_exporter = exporter  # the Arbiter outlives config reloads
    host, port = app_config.parse_bind(settings.metrics_bind)
    for _ in range(100):
        if exporter.poll() is not None:
            server.log.error("metrics exporter exited with %s", exporter.returncode)
            return
        try:
            socket.create_connection((host, port), timeout=0.1).close()
            server.log.info("Serving metrics on http://%s/metrics", settings.metrics_bind)
            return
        except OSError:
            time.sleep(0.05)
    server.log.error("metrics exporter does not answer on %s", settings.metrics_bind)


def metrics_child_exit(server, worker):
    # A dead worker's gauges (in flight, pool in use) must not be added up.
    if settings.metrics_bind:
        prometheus_client.multiprocess.mark_process_dead(worker.pid)


def metrics_worker_started(worker):
    if settings.metrics_bind:
        from service import metrics

        metrics.worker_starts.inc()


def metrics_worker_exit(worker):
    if settings.metrics_bind:
        from service import metrics

        metrics.publish()  # the last second's requests
        # service.worker keeps the limit in recycle_at (its max_requests is
        # lifted while it waits for its turn to recycle).
        limit = getattr(worker, "recycle_at", None) or worker.max_requests
        recycled = worker.nr >= limit
        metrics.worker_exits.labels("recycled" if recycled else "shutdown").inc()


def metrics_on_exit(server):
    exporter = getattr(server, "metrics_exporter", None)
    if exporter is not None and exporter.poll() is None:
        exporter.terminate()
        try:
            exporter.wait(5)
        except subprocess.TimeoutExpired:
            exporter.kill()
    directory = metrics_dir()
    if directory and directory.name.startswith(METRICS_TEMP_PREFIX):  # made above
        for item in directory.glob("*.db"):
            item.unlink()
        directory.rmdir()


# -- Hooks that several sections share call each section's function.


def on_starting(server):
    metrics_on_starting(server)
    recycling_on_starting(server)


def when_ready(server):
    metrics_when_ready(server)


def child_exit(server, worker):
    metrics_child_exit(server, worker)
    recycling_child_exit(server, worker)


def nworkers_changed(server, new_value, old_value):
    recycling_nworkers_changed(server, new_value, old_value)


def worker_exit(server, worker):
    metrics_worker_exit(worker)


def on_exit(server):
    metrics_on_exit(server)
    recycling_on_exit(server)


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
    pass_recycling_settings(server, worker)


def post_fork(server, worker):
    # Still before patching: note which client libraries the master imported.
    worker.imported_before_patch = bootguard.imported_clients()
    # Until the worker installs its own handlers (after gevent patched the
    # standard library), a signal would reach the master's handler copied
    # into this process, which queues it for a master loop that never runs
    # here: a SIGTERM sent to a booting worker (a reload while it boots)
    # was lost, and the master waited graceful_timeout for it. Remember it.
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(stop, lambda *_: setattr(worker, "alive", False))
    boot_at_low_priority(worker)


# A worker's boot (imports, create_app) costs about 0.4 s of CPU. It runs
# beside workers that serve: the one it replaces keeps serving until it
# accepts (recycling, below), so it need not be quick, only out of their way.
# It boots at this much lower priority and comes back before it accepts, when
# the process may raise its priority again: root with CAP_SYS_NICE, or an
# RLIMIT_NICE that allows it (LimitNICE= in deploy/systemd/flask-service.service).
BOOT_NICENESS = 10
CAP_SYS_NICE = 23


def may_raise_priority_to(nice: int) -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or 20 - soft <= nice:
        return True
    try:
        with open("/proc/self/status") as status:
            caps = next(line for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caps.split()[1], 16) >> CAP_SYS_NICE & 1)


def boot_at_low_priority(worker):
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if may_raise_priority_to(nice):
        os.setpriority(os.PRIO_PROCESS, 0, min(19, nice + BOOT_NICENESS))
        worker.serving_niceness = nice


def serve_at_normal_priority(worker):
    nice = getattr(worker, "serving_niceness", None)
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:  # checked before lowering it: not expected
            worker.log.warning("Worker serves at its boot priority: %s", exc)


def post_worker_init(worker):
    serve_at_normal_priority(worker)
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
    metrics_worker_started(worker)
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


# -- Recycling one worker at a time (service/worker.py, service/recycling.py).
# The master makes one directory per run, where each accepting worker holds a
# locked marker file. A worker past max_requests, when its turn comes (every
# worker accepting, the newest for a few seconds), leaves a note there and
# sends the master SIGTTIN: gunicorn forks one worker more, and the old one
# stops only once that replacement accepts. When it has exited, child_exit
# takes the extra worker back, so the master never forks a second
# replacement. Standard library only: these run in the master.


def recycling_on_starting(server):
    server.recycle_dir = tempfile.mkdtemp(prefix="gunicorn-workers-",
                                          dir=server.cfg.worker_tmp_dir)
    server.surges = set()  # pids of workers whose replacement is the extra worker


def recycling_nworkers_changed(server, new_value, old_value):
    """Every change of the master's worker count: SIGTTIN/TTOU, reloads."""
    surges = getattr(server, "surges", None)
    if surges is None or getattr(server, "taking_surge_back", False):
        return
    if old_value is not None and new_value == old_value + 1:
        pid = recycling.take_surge_request(server.recycle_dir)
        if pid in server.WORKERS:
            surges.add(pid)
        elif pid is not None:
            # Its worker is gone already (a reload stopped it before this
            # signal was handled): no replacement wanted, take it back.
            _take_one_back(server)
    elif new_value != old_value:
        # An operator's SIGTTOU, or a reload that set the configured count:
        # the extra workers are no longer counted on top of it.
        surges.clear()


def recycling_child_exit(server, worker):
    surges = getattr(server, "surges", set())
    if worker.pid in surges:
        surges.discard(worker.pid)
        _take_one_back(server)


def _take_one_back(server):
    server.taking_surge_back = True
    try:
        server.num_workers = max(1, server.num_workers - 1)
    finally:
        server.taking_surge_back = False


def pass_recycling_settings(server, worker):
    """Called by pre_fork: what the worker needs to take part."""
    worker.recycle_dir = getattr(server, "recycle_dir", None)
    # The configured count, not the extra workers of recycles in progress.
    worker.expected_workers = server.num_workers - len(getattr(server, "surges", ()))
    worker.keepalive_max_age = settings.keepalive_max_age


def recycling_on_exit(server):
    if getattr(server, "recycle_dir", None):
        shutil.rmtree(server.recycle_dir, ignore_errors=True)
