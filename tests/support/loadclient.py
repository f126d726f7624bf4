"""Bounded load from a client host of a NetBed: ``python -m tests.support.loadclient PLAN``.

PLAN is a JSON file; the result (JSON) goes to plan["out"]. Modes:

``sessions``: one thread per user, each on targets[i % len(targets)], for
plan["duration"] seconds at most and plan["max_requests"] requests per
thread. A thread logs in, then reads GET /api/me; every plan["relogin_every"]
requests it logs out and logs in again with a fresh cookie jar. Every
request is recorded (wall time, kind, status, Retry-After, target). A
login answered 200 and a logout answered 204 were acknowledged: afterwards
(once /readyz answers 200 everywhere) each acknowledged login's session must
still work ("lost" otherwise) and each acknowledged logout's session must
stay gone ("resurrected" otherwise).

``register``: register plan["users"] on targets[0]; the statuses.

``login_attempts``: plan["attempts"] wrong-password logins, alternating
over targets, each claiming another address in X-Forwarded-For; the statuses
in order.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import requests

from tests.support.api import ApiClient


def _call(records, lock, target, kind, action):
    started = time.time()
    try:
        response = action()
        status, retry_after = response.status_code, response.headers.get("Retry-After")
    except (requests.RequestException, ValueError, KeyError) as exc:
        response, status, retry_after = None, f"error:{type(exc).__name__}", None
    with lock:
        records.append({"t": started, "end": time.time(), "kind": kind, "status": status,
                        "retry_after": retry_after, "target": target})
    return response, status


def run_sessions(plan: dict) -> dict:
    records, lock = [], threading.Lock()
    live, logged_out, unknown = [], [], []
    deadline = time.time() + plan["duration"]

    def login(target, username, password):
        client = ApiClient(target)
        response, status = _call(records, lock, target, "csrf",
                                 lambda: client.http.get(target + "/api/csrf", timeout=10))
        if status == 200:
            client.csrf = response.json()["csrf_token"]
            _, status = _call(records, lock, target, "login",
                              lambda: client.login(username, password))
        if status == 200:
            return client
        client.close()
        return None

    def worker(index, username, password):
        target = plan["targets"][index % len(plan["targets"])]
        client = None
        for n in range(plan["max_requests"]):
            if time.time() >= deadline:
                break
            if client is None:
                client = login(target, username, password)
                if client is not None:
                    with lock:
                        live.append((target, client.sid))
            elif n % plan["relogin_every"] == 0:
                sid = client.sid
                _, status = _call(records, lock, target, "logout", client.logout)
                with lock:
                    live.remove((target, sid))
                    (logged_out if status == 204 else unknown).append((target, sid))
                client.close()
                client = None
                continue
            else:
                _call(records, lock, target, "me", lambda c=client: c.get("/api/me"))
            time.sleep(plan.get("pause", 0.01))
        if client is not None:
            client.close()

    threads = [threading.Thread(target=worker, args=(i, u, p))
               for i, (u, p) in enumerate(plan["users"])]
    for thread in threads:
        thread.start()
    if plan.get("ready_file"):
        open(plan["ready_file"], "w").close()
    for thread in threads:
        thread.join()
    load_ended = time.time()

    # Verification, once every target is ready again.
    verify_deadline = time.time() + plan.get("verify_timeout", 60)
    for target in plan["targets"]:
        while time.time() < verify_deadline:
            try:
                if requests.get(target + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
    lost, resurrected = [], []
    with requests.Session() as http:
        for expected, sessions, bad in ((200, live, lost), (401, logged_out, resurrected)):
            for target, sid in sessions:
                response = http.get(target + "/api/me", cookies={plan["cookie"]: sid}, timeout=10)
                if response.status_code != expected:
                    bad.append([sid[:8], response.status_code])
    return {"records": records, "load_ended": load_ended, "live": len(live),
            "logged_out": len(logged_out), "unknown": len(unknown),
            "lost": lost, "resurrected": resurrected}


def run_login_attempts(plan: dict) -> dict:
    statuses = []
    for n in range(plan["attempts"]):
        target = plan["targets"][n % len(plan["targets"])]
        # A forged X-Forwarded-For must not buy a fresh budget.
        client = ApiClient(target, forwarded_for=f"198.51.100.{n + 1}")
        statuses.append([target, client.login(plan["username"], "wrong password").status_code])
        client.close()
    return {"statuses": statuses}


def run_register(plan: dict) -> dict:
    statuses = []
    for username, password in plan["users"]:
        client = ApiClient(plan["targets"][0])
        statuses.append(client.register(username, password).status_code)
        client.close()
    return {"statuses": statuses}


def main(path: str) -> None:
    with open(path) as f:
        plan = json.load(f)
    result = {"sessions": run_sessions, "login_attempts": run_login_attempts,
              "register": run_register}[plan["mode"]](plan)
    with open(plan["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
