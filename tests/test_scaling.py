"""More than one machine, proven on real hosts in network namespaces
(tests/support/netns.py): Redis with Sentinel failover, app hosts sharing it.

The load comes from the bed's client host (tests/support/loadclient.py),
bounded in time and count. Measured numbers are printed (pytest -s) and
quoted in docs/scaling.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.netns import NetBed
from tests.support.processes import ROOT, base_env, wait_until
from tests.support.replicated import (
    APP_PORT,
    REDIS_PORT,
    SENTINEL_PORT,
    AppHost,
    BalancerHost,
    ReplicatedRedis,
)
from tests.support.tls import LocalCA
from tests.support.websockets import SESSION_ENDED

HOSTS = ["lb", "app1", "app2", "r1", "r2", "r3", "client"]
PASSWORD = "correct horse battery"
SITE = "app.test"  # the name nginx serves, resolved to the lb host inside the bed


@pytest.fixture
def bed(tmp_path):
    bed = NetBed.create(tmp_path / "bed", HOSTS, aliases={"lb": [SITE]})
    yield bed
    bed.destroy()


def start_apps(bed, redis, tmp_path, names=("app1", "app2"), **env):
    hosts = ",".join([SITE, *(bed[n].addr for n in names)])
    # Every load comes from one client address: limits that do not get in the way.
    settings = {"ALLOWED_HOSTS": hosts, "REDIS_SOCKET_TIMEOUT": 1, "REDIS_POOL_TIMEOUT": 2,
                "AUTH_RATE_LIMIT": "100000 per minute", "LOGIN_FAILURE_LIMIT": "1000 per minute"}
    settings.update(env)
    # One secret for all hosts: any host can serve any session's CSRF token.
    shared = base_env(redis.url, **settings)
    return [AppHost(bed[n], tmp_path / n, shared).start() for n in names]


def load(bed, tmp_path, plan: dict, name: str, background: bool = False, ca_file=None):
    """Run the load client in the client host; its result (or the process)."""
    plan = dict(plan, out=str(tmp_path / f"{name}.out.json"), cookie="session")
    path = tmp_path / f"{name}.plan.json"
    path.write_text(json.dumps(plan))
    argv = bed["client"].argv(sys.executable, "-m", "tests.support.loadclient", str(path))
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(ca_file)) if ca_file else None
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    process.out = plan["out"]
    return process if background else finish(process)


def finish(process, timeout=180) -> dict:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    with open(process.out) as f:
        return json.load(f)


def register(bed, tmp_path, url: str, count: int, ca_file=None) -> list[list[str]]:
    users = [[f"user-{n}-{time.monotonic_ns() % 10**8}", PASSWORD] for n in range(count)]
    result = load(bed, tmp_path, {"mode": "register", "targets": [url], "users": users},
                  "register", ca_file=ca_file)
    assert result["statuses"] == [201] * count
    return users


def under_load(bed, tmp_path, targets, users, disrupt, *, after: float, duration: float,
               ca_file=None) -> tuple[dict, float]:
    """Sessions load from the client host (tests/support/loadclient.py);
    disrupt() runs `after` seconds into it. The load's result and the wall
    time of the disruption."""
    plan = {"mode": "sessions", "targets": targets, "users": users,
            "duration": duration, "max_requests": 2000, "relogin_every": 6,
            "ready_file": str(tmp_path / "load.ready"), "verify_timeout": 60}
    client = load(bed, tmp_path, plan, "sessions", background=True, ca_file=ca_file)
    wait_until(lambda: (tmp_path / "load.ready").exists(), 30, "the load client")
    time.sleep(after)
    disrupted_at = time.time()
    disrupt()
    return finish(client), disrupted_at


def failure_window(records: list[dict], since: float) -> tuple[float, float, int]:
    """(first failure after `since`, last failure, count) in seconds from `since`."""
    failed = [r for r in records if r["status"] not in (200, 204)]
    if not failed:
        return 0.0, 0.0, 0
    return (min(r["t"] for r in failed) - since, max(r["end"] for r in failed) - since,
            len(failed))


def connections_from(redis, host, apps, port=REDIS_PORT, subscribed=False) -> dict[str, int]:
    """Connections each app host holds to a server (CLIENT LIST there);
    subscribed: only those subscribed to a channel."""
    clients = redis.cli(host, "CLIENT", "LIST", port=port).splitlines()
    if subscribed:
        clients = [line for line in clients if " sub=0 " not in line]
    peers = [line.split(" addr=")[1].split(":")[0] for line in clients]
    return {app.host.name: peers.count(app.host.addr) for app in apps}


def test_redis_primary_killed_under_load(bed, tmp_path):
    """SIGKILL of the primary: Sentinel promotes a replica; clients see 503
    with Retry-After only during the failover window, then 200 with the same
    sessions; no WAIT-acknowledged login or logout is lost."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    apps = start_apps(bed, redis, tmp_path, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT=0.5)
    users = register(bed, tmp_path, apps[0].url, 8)
    result, killed_at = under_load(
        bed, tmp_path, [a.url for a in apps], users,
        lambda: redis.servers["r1"].process.send_signal(signal.SIGKILL), after=4, duration=22)

    new_primary = redis.primary(bed["r2"])
    assert new_primary.name in ("r2", "r3")
    records = result["records"]
    first, last, count = failure_window(records, killed_at)
    print(f"\nprimary SIGKILL: failures from +{first:.2f} s to +{last:.2f} s after the kill "
          f"({count} of {len(records)} requests)")
    statuses = {r["status"] for r in records}
    assert statuses <= {200, 204, 503}, statuses  # never a 500, never a dropped request
    unavailable = [r for r in records if r["status"] == 503]
    assert unavailable, "the kill caused no 503 at all: was the primary really used?"
    assert all(r["retry_after"] for r in unavailable)
    assert first >= -0.5, "503s before the primary was killed"
    assert last < 15, f"503s for {last:.1f} s after the kill"
    after = [r for r in records if r["t"] > killed_at + last]
    assert after and all(r["status"] in (200, 204) for r in after)
    assert sum(r["kind"] == "me" for r in after) > 50
    # Acknowledged (WAIT 1) writes: every such login's session still works,
    # every such logout's session stays gone.
    assert result["lost"] == [] and result["resurrected"] == []
    assert result["live"] >= len(users) // 2 and result["logged_out"] > 20
    # The pools stayed bounded across the failover: per app host (one
    # worker) at most REDIS_MAX_CONNECTIONS (50) + 2 for /readyz.
    held = connections_from(redis, new_primary, apps)
    to_sentinels = connections_from(redis, bed["r2"], apps, port=SENTINEL_PORT)
    assert all(0 < n <= 52 for n in held.values()), held
    print(f"connections on the new primary per app host: {held}; on one sentinel: "
          f"{to_sentinels}")
    print(f"acknowledged sessions checked: "
          f"{result['live']} live, {result['logged_out']} logged out, 0 lost; "
          f"new primary {new_primary.name}")


def test_isolated_primary_refuses_writes_and_rejoins_as_replica(bed):
    """Link of the primary down: after min-replicas-max-lag it refuses writes
    (NOREPLICAS), none of its writes is acknowledged by WAIT, Sentinel
    promotes a replica; healed, the old primary rejoins as a replica and what
    it took while isolated is gone."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    r1, r2 = bed["r1"], bed["r2"]
    bed.cut("r1")
    cut_at = time.monotonic()
    # A client on the isolated side (r1 itself) keeps writing, each write
    # followed by WAIT 1 on the same connection.
    accepted, refused, acknowledged, last_accepted = [], 0, 0, 0.0
    n = 0
    while time.monotonic() - cut_at < 7:
        n += 1
        reply = r1.run("sh", "-c", f"printf 'SET isolated:{n} x\\nWAIT 1 200\\n' | "
                       f"redis-cli -h {r1.addr} -p {REDIS_PORT}").split("\n")
        if reply[0] == "OK":
            accepted.append(f"isolated:{n}")
            acknowledged += reply[1].strip() != "0"
            last_accepted = time.monotonic() - cut_at
        else:
            assert reply[0].startswith("NOREPLICAS"), reply
            refused += 1
        time.sleep(0.1)
    # It took writes until it noticed (so that their loss below is checked),
    # none acknowledged.
    assert accepted and acknowledged == 0
    # min-replicas-max-lag 2: replicas acknowledge every second.
    assert last_accepted < 4, f"the isolated primary accepted writes for {last_accepted:.1f} s"
    assert refused >= 5
    late = r1.run("sh", "-c", f"redis-cli -h {r1.addr} -p {REDIS_PORT} SET late x")
    assert late.startswith("NOREPLICAS")

    wait_until(lambda: redis.primary(r2).name in ("r2", "r3"), 20, "a new primary", 0.2)
    new_primary = redis.primary(r2)
    redis.cli(new_primary, "SET", "written-on-new-primary", "1")
    bed.heal("r1")

    def rejoined():
        info = redis.info(r1)
        return (info.get("role") == "slave" and info.get("master_host") == new_primary.addr
                and info.get("master_link_status") == "up")

    wait_until(rejoined, 30, "the old primary to rejoin as a replica", 0.2)
    assert redis.cli(r1, "GET", "written-on-new-primary") == "1"
    for key in accepted + ["late"]:
        assert redis.cli(r1, "EXISTS", key) == "0"
        assert redis.cli(new_primary, "EXISTS", key) == "0"
    print(f"\nisolated primary: {len(accepted)} writes accepted until +{last_accepted:.1f} s "
          f"(none acknowledged by WAIT, all gone after the heal), {refused} refused "
          "with NOREPLICAS")


def test_app_follows_a_switched_primary_without_errors(bed, tmp_path):
    """A graceful switch (SENTINEL FAILOVER) leaves the old primary running
    as a replica: kept connections to it would read stale data and get
    READONLY on writes (redis-py #435). Under load, requests keep working
    (at most 503, never 500) and soon every write goes to the new primary.

    The old primary keeps taking writes until Sentinel demotes it, with one
    replica still attached: a write WAITed for one replica can be lost
    (measured: 2-5 acknowledged logouts undone per run with
    REDIS_WAIT_REPLICAS=1). Waiting for every replica (2) loses none."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    apps = start_apps(bed, redis, tmp_path, REDIS_WAIT_REPLICAS=2, REDIS_WAIT_TIMEOUT=0.5)
    users = register(bed, tmp_path, apps[0].url, 6)
    result, switched_at = under_load(
        bed, tmp_path, [a.url for a in apps], users,
        lambda: redis.cli(bed["r2"], "SENTINEL", "FAILOVER", "mymaster", port=SENTINEL_PORT),
        after=3, duration=22)

    new_primary = redis.primary(bed["r2"])
    assert new_primary.name in ("r2", "r3")
    assert redis.info(bed["r1"])["role"] == "slave"
    records = result["records"]
    assert {r["status"] for r in records} <= {200, 204, 503}
    first, last, count = failure_window(records, switched_at)
    reads = [r for r in records if r["kind"] in ("me", "csrf")]
    _, reads_last, reads_failed = failure_window(reads, switched_at)
    print(f"\nSENTINEL FAILOVER: {count} of {len(records)} requests failed (503), "
          f"from +{first:.2f} s to +{last:.2f} s; reads and new sessions: {reads_failed} "
          f"of {len(reads)} until +{reads_last:.2f} s")
    # Until the old primary has resynced as a replica, WAIT for 2 replicas
    # cannot succeed: logins and logouts get 503 that long, others not.
    assert reads_last < 5, f"reads failed until {reads_last:.1f} s after the switch"
    assert last < 20, f"errors until {last:.1f} s after the switch"
    assert result["lost"] == [] and result["resurrected"] == []
    # Every app connection now points at the new primary: none to r1.
    clients = redis.cli(bed["r1"], "CLIENT", "LIST")
    app_addrs = {a.host.addr for a in apps}
    stale = [line for line in clients.splitlines()
             if "name=service-" in line and line.split("addr=")[1].split(":")[0] in app_addrs]
    assert stale == [], stale


def test_events_cross_app_hosts_and_the_subscriptions_follow_a_switched_primary(bed, tmp_path):
    """Two sessions of one user on different app hosts: revoking one from a
    request the other host serves closes its WebSocket within 1 s with the
    reason; only Redis pub/sub links the hosts. After a switch of the primary
    (SENTINEL FAILOVER: the old one stays up as a replica) each host's one
    subscription moves to the new primary, and events cross hosts again."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    apps = start_apps(bed, redis, tmp_path)
    (user,) = register(bed, tmp_path, apps[0].url, 1)

    def events_cross(name: str) -> list[float]:
        plan = {"mode": "events", "targets": [a.url for a in apps], "username": user[0],
                "password": user[1], "rounds": 4}
        rounds = load(bed, tmp_path, plan, name)["rounds"]
        assert {r["victim"] for r in rounds} == {a.url for a in apps}  # both directions
        for r in rounds:
            assert r["status"] == 204
            assert (r["messages"], r["code"]) == (
                [{"type": "session_ended", "reason": "revoked"}], SESSION_ENDED), r
            assert r["seconds"] < 1.0, r
        return [round(r["seconds"], 3) for r in rounds]

    before = events_cross("events-before")
    old = bed["r1"]
    assert connections_from(redis, old, apps, subscribed=True) == {"app1": 1, "app2": 1}

    redis.cli(bed["r2"], "SENTINEL", "FAILOVER", "mymaster", port=SENTINEL_PORT)
    wait_until(lambda: redis.primary(bed["r2"]) is not old, 20, "a new primary", 0.2)
    new_primary = redis.primary(bed["r2"])
    switched_at = time.monotonic()

    def moved():
        on_new = connections_from(redis, new_primary, apps, subscribed=True)
        on_old = connections_from(redis, old, apps, subscribed=True)
        return on_new == {"app1": 1, "app2": 1} and on_old == {"app1": 0, "app2": 0}

    # Sentinel demotes the old primary only at its next INFO (up to 10 s):
    # the subscriptions must not wait for that.
    wait_until(moved, 4, "the subscriptions on the new primary", 0.1)
    moved_after = time.monotonic() - switched_at
    after = events_cross("events-after")
    print(f"\nevents across hosts: revocation to close {before} s; after SENTINEL FAILOVER "
          f"the subscriptions moved within {moved_after:.1f} s, then {after} s")


def test_login_limit_per_address_holds_across_app_hosts(bed, tmp_path):
    """The per-address limit is counted in Redis, shared by both hosts; the
    hosts trust X-Forwarded-For only from the load balancer, so a client
    talking to them directly cannot claim other addresses."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    apps = start_apps(bed, redis, tmp_path, AUTH_RATE_LIMIT="4 per minute",
                      FORWARDED_ALLOW_IPS=bed["lb"].addr)
    users = register(bed, tmp_path, apps[0].url, 1)  # counts as one attempt, on app1
    result = load(bed, tmp_path, {"mode": "login_attempts", "targets": [a.url for a in apps],
                                  "username": users[0][0], "attempts": 8}, "attempts")
    statuses = [status for _, status in result["statuses"]]
    assert statuses == [401, 401, 401, 429, 429, 429, 429, 429]
    assert {target for target, status in result["statuses"] if status == 429} == {
        a.url for a in apps}


def test_app_host_killed_under_load(bed, tmp_path):
    """nginx on the lb host in front of two app hosts. app1's gunicorn (master
    and workers, as when its host dies) is SIGKILLed under load: only requests
    in flight on it fail, and only POSTs (GETs are retried on app2, a POST is
    never sent twice); logged-in clients stay logged in."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    lb = bed["lb"]
    apps = start_apps(bed, redis, tmp_path, FORWARDED_ALLOW_IPS=lb.addr, PROXY_HOPS=1)
    ca = LocalCA(tmp_path / "ca")
    nginx = BalancerHost(lb, tmp_path / "nginx", upstream=[a.bind for a in apps],
                         certs=[ca.issue(SITE)], ca_file=ca.cert_path, server_names=(SITE,),
                         render_args=("--max-fails", "1", "--fail-timeout", "10s",
                                      "--login-rate", "100r/s", "--login-burst", "1000",
                                      "--app-rate", "1000r/s"))
    nginx.start()
    assert [a.bind for a in apps] == [f"{bed[n].addr}:{APP_PORT}" for n in ("app1", "app2")]
    users = register(bed, tmp_path, nginx.base_url(), 8, ca_file=ca.cert_path)
    result, killed_at = under_load(
        bed, tmp_path, [nginx.base_url()], users,
        lambda: os.killpg(apps[0].process.pid, signal.SIGKILL), after=4, duration=12,
        ca_file=ca.cert_path)

    records = result["records"]
    failed = [r for r in records if r["status"] not in (200, 204)]
    in_flight = [r for r in records if r["t"] <= killed_at <= r["end"]]
    print(f"\napp host SIGKILL: {len(failed)} of {len(records)} requests failed "
          f"({[(r['kind'], r['status']) for r in failed]}), {len(in_flight)} were in flight "
          f"at the kill; {result['live']} live and {result['logged_out']} logged-out "
          f"sessions checked, {len(result['lost'])} lost")
    # Only what was in flight can fail, and only requests nginx must not resend.
    assert all(r["t"] <= killed_at + 0.05 for r in failed), failed
    assert all(r["kind"] in ("login", "logout") for r in failed), failed
    assert len(failed) <= len(users)
    after = [r for r in records if r["t"] > killed_at + 0.05]
    assert len(after) > 200 and all(r["status"] in (200, 204) for r in after)
    # The same sessions on the surviving host: nobody had to log in again.
    assert result["lost"] == [] and result["resurrected"] == []
    served_by_app2 = apps[1].stdout().count("GET /api/me")
    assert served_by_app2 > len(after) // 2


def test_check_reads_the_eviction_policy_through_the_sentinels(bed, tmp_path):
    """`python -m service check` asks the primary the sentinels name."""
    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()
    env = base_env(redis.url, APP_ENV="test")

    def check() -> str:
        result = subprocess.run(bed["client"].argv(sys.executable, "-m", "service", "check"),
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        return result.stderr

    assert "maxmemory-policy" not in check().replace("no maxmemory", "")
    redis.cli(bed["r1"], "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    assert "Redis has maxmemory-policy allkeys-lru" in check()
