"""Command 3 (scripts/stack): the whole production shape locally, and Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import subprocess

from tests.support.processes import ROOT, ManagedProcess, free_port, require_binary, wait_until
from tests.support.scripts import alive, command_line, descendants


def test_stack_serves_https_h2_redirects_http_and_stops_on_ctrl_c(tmp_path):
    for binary, package in (("nginx", "nginx"), ("redis-server", "redis-server"),
                            ("openssl", "openssl"), ("curl", "curl")):
        require_binary(binary, package)
    https_port, http_port = free_port(), free_port()
    state = tmp_path / "state"
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
        "STATE_DIR": str(state), "DOTENV_PATH": str(tmp_path / ".env"),
        "STACK_HTTPS_PORT": str(https_port), "STACK_HTTP_PORT": str(http_port),
        # The app reads this from the environment; nginx's socket timeout must follow.
        "EVENTS_PING_INTERVAL": "40",
    }
    (tmp_path / ".env").write_text(
        (ROOT / ".env.example").read_text().replace("SECRET_KEY=", "SECRET_KEY=" + secrets.token_urlsafe(48), 1)
        + "\nEVENTS_MAX_PER_ADDRESS=7\n")
    log = tmp_path / "stack.log"
    script = ManagedProcess("scripts/stack", log)
    stack = script.spawn([str(ROOT / "scripts" / "stack")], stdout=log, cwd=ROOT, env=env)
    started: dict[int, list[str]] = {}
    try:
        wait_until(lambda: stack.poll() is None and "==> serving" in log.read_text(), 60,
                   "scripts/stack to serve")
        # Peers on gunicorn's socket are trusted for X-Forwarded-For: only this
        # user (nginx's here) may reach it, through a 0700 directory.
        socket_path = state / "stack" / "gunicorn.sock"
        assert socket_path.is_socket()
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o770
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        ca = state / "local-ca" / "ca.crt"
        assert f"curl --cacert {ca}" in log.read_text()  # how to trust the CA

        def curl(*args):
            return subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", str(ca),
                 "--resolve", f"localhost:{https_port}:127.0.0.1",
                 "--resolve", f"localhost:{http_port}:127.0.0.1", *args],
                check=False, capture_output=True, text=True, timeout=20)

        home = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{response_code}",
                    f"https://localhost:{https_port}/")
        assert home.stdout == "2 200", home.stderr
        redirect = curl("-o", "/dev/null", "-w", "%{response_code} %{redirect_url}",
                        f"http://localhost:{http_port}/x?y=1")
        assert redirect.stdout == f"308 https://localhost:{https_port}/x?y=1"
        # HSTS is sent, with max-age=0 so browsers do not pin every localhost port to https.
        headers = curl("-D", "-", "-o", "/dev/null", f"https://localhost:{https_port}/")
        hsts = [line for line in headers.stdout.lower().splitlines()
                if line.startswith("strict-transport-security:")]
        assert hsts == ["strict-transport-security: max-age=0; includesubdomains"], headers.stdout

        # nginx's WebSocket location follows the app's settings: the ping from
        # the environment, the per-address limit from .env (written above).
        websocket = (state / "stack" / "nginx" / "conf" / "snippets" / "websocket.conf").read_text()
        assert "proxy_read_timeout 90s;" in websocket, websocket
        assert "limit_conn service_events_addr 7;" in websocket, websocket

        # Its children run in sessions of their own (setsid), so not in its
        # process group: they are found as its descendants.
        started.update((pid, command_line(pid)) for pid in descendants(stack.pid))
        commands = " ".join(" ".join(argv) for argv in started.values())
        for name in ("redis-server", "nginx: master", "gunicorn", "nginx: worker"):
            assert name in commands, commands

        # Ctrl-C reaches the script (its children ignore SIGINT as background jobs).
        stack.send_signal(signal.SIGINT)
        assert stack.wait(30) == 130
        # Nothing it started is left, and nothing listens on its ports any more.
        wait_until(lambda: not any(alive(pid) for pid in started), 15,
                   "the stack's processes to exit")
        for port in (https_port, http_port):
            assert refuses(port), f"port {port} still accepts connections"
    finally:
        # After a failure: TERM, so its trap stops the children it started in
        # sessions of their own (SIGKILL would leave them running); then
        # whatever it left behind, so that it does not outlive the test.
        script.stop(30)
        for pid, argv in started.items():
            if alive(pid) and command_line(pid) == argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not (state / "stack" / "gunicorn.sock").exists()


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_local_ca_is_made_on_a_host_with_a_long_name(tmp_path):
    """The CA's common name carries the host name; cut to the 64 characters a
    common name may hold, or openssl refuses and scripts/stack cannot start."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "hostname").write_text("#!/bin/sh\necho " + "h" * 60 + ".example.internal\n")
    (fake / "hostname").chmod(0o755)
    ca_dir, cert, key = tmp_path / "ca", tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(
        [str(ROOT / "deploy" / "nginx" / "local-ca"), str(ca_dir), str(cert), str(key),
         "localhost"],
        env={"PATH": f"{fake}:{os.environ['PATH']}"}, capture_output=True, text=True,
        timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    subject = subprocess.run(["openssl", "x509", "-in", str(ca_dir / "ca.crt"), "-noout",
                              "-subject"], capture_output=True, text=True, check=True).stdout
    assert "Local development CA hhhh" in subject
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"), str(cert)],
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
