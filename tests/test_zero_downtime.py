"""Deploying a new version behind nginx: gunicorn's graceful reload (HUP)
while clients keep requesting pages through nginx fails no request."""

from __future__ import annotations

import json
import time

from tests.support.load import KeepAliveLoad
from tests.support.processes import wait_until

HOST = "app.test"


def test_gunicorn_hup_behind_nginx_under_load_fails_no_request(nginx_front):
    nginx, gunicorn = nginx_front(WEB_CONCURRENCY=2)
    with KeepAliveLoad(nginx, HOST) as load:
        time.sleep(1)
        gunicorn.reload()  # SIGHUP, the documented deploy step
        time.sleep(1)

    assert load.failures == []
    assert load.ok > 100  # the load really ran across the reload
    assert "Worker graceful timeout" not in gunicorn.stderr()

    def logged():
        # nginx writes a request's log line after sending its response; the
        # client may have read the last response before that line is written.
        entries = [json.loads(line) for line in nginx.access_log().splitlines() if line]
        return entries if len(entries) >= load.ok else None

    entries = wait_until(logged, 5, "nginx to log every request the clients saw answered")
    assert {entry["status"] for entry in entries} == {200}
    retried = [e for e in entries if "," in e["upstream_status"]]
    print(f"\n{load.ok} requests through the reload, 0 failed; "
          f"nginx retried {len(retried)} on a fresh upstream connection")
