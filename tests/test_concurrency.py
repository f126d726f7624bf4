"""One gevent worker serves many blocking requests at once; a sync worker does not."""

import time
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import pairwise

import requests

from tests.support.processes import base_env

N = 100


def fire(url: str, n: int, timeout: float):
    """Send n simultaneous GETs; return (finished results, elapsed seconds)."""
    session_per_thread = lambda: requests.get(url, timeout=timeout)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(session_per_thread) for _ in range(n)]
        done, _ = wait(futures, timeout=timeout)
        elapsed = time.monotonic() - started
        results = [f.result() for f in done if f.exception() is None]
    return results, elapsed


def test_one_gevent_worker_overlaps_100_blocking_requests(service):
    results, _ = fire(service.url + "/test/wait", N, timeout=20)

    assert len(results) == N
    assert all(r.status_code == 200 for r in results)
    spans = [r.json() for r in results]
    # Every request was waiting in BLPOP at the same moment: the last one to
    # start started before the first one finished.
    assert max(s["started"] for s in spans) < min(s["finished"] for s in spans)
    assert all(s["finished"] - s["started"] >= 0.45 for s in spans)


def test_one_sync_worker_serialises_the_same_requests(redis_server, make_gunicorn):
    env = base_env(redis_server.url, REDIS_MAX_CONNECTIONS=150)
    server = make_gunicorn(env, extra_args=("--worker-class", "sync", "--backlog", "256"))
    server.start()

    results, elapsed = fire(server.url + "/test/wait", N, timeout=4)

    # In 4 s a serial worker finishes about 8 of the 0.5 s requests, never all;
    # at least 3, so that their order below is checked.
    assert 3 <= len(results) < 12, f"{len(results)} finished in {elapsed:.1f}s"
    assert all(r.status_code == 200 for r in results), [r.status_code for r in results]
    spans = sorted((r.json() for r in results), key=lambda s: s["started"])
    for earlier, later in pairwise(spans):
        assert later["started"] >= earlier["finished"] - 0.01
    server.stop()
