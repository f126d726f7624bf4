"""Deploying a new version behind nginx: gunicorn's graceful reload (HUP)
while clients keep requesting pages through nginx fails no request."""

from __future__ import annotations

import json
import ssl
import threading
import time

from tests.support.nginx import _ResolvedHTTPS

HOST = "app.test"


def test_gunicorn_hup_behind_nginx_under_load_fails_no_request(nginx_front):
    nginx, gunicorn = nginx_front(WEB_CONCURRENCY=2)
    context = ssl.create_default_context(cafile=str(nginx.ca_file))
    counts = {"ok": 0}
    failures: list[str] = []
    stop = threading.Event()

    def client():
        # A browser-like client: one keep-alive HTTPS connection, reopened
        # only when the server closes it.
        conn = None
        while not stop.is_set():
            try:
                conn = conn or _ResolvedHTTPS(HOST, nginx.https_port, timeout=10, context=context)
                conn.request("GET", "/", headers={"Host": HOST})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    counts["ok"] += 1
                else:
                    failures.append(f"status {response.status}")
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(repr(exc))
                conn = None
        if conn:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    gunicorn.reload()  # SIGHUP, the documented deploy step
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(15)

    assert failures == []
    assert counts["ok"] > 100  # the load really ran across the reload
    assert "Worker graceful timeout" not in gunicorn.stderr()
    entries = [json.loads(line) for line in nginx.access_log().splitlines() if line]
    assert len(entries) >= counts["ok"]
    assert {entry["status"] for entry in entries} == {200}
    retried = [e for e in entries if "," in e["upstream_status"]]
    print(f"\n{counts['ok']} requests through the reload, 0 failed; "
          f"nginx retried {len(retried)} on a fresh upstream connection")
