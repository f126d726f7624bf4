"""A real nginx for tests, rendered by deploy/nginx/render --standalone.

Interface (kept stable; tests/test_nginx.py and the Let's Encrypt tests use it):

    nginx = Nginx(
        directory,                        # its own dir: conf/ (rendered), prefix/ (logs, pid, tmp)
        upstream="unix:/path/gunicorn.sock",   # or a list of app hosts' address:port
        certs=[(cert, key), ...],         # [] is fine with render_args=("--http-only",)
        ca_file=ca.cert_path,             # what clients trust (curl --cacert, request())
        server_names=("app.test",),       # resolved to 127.0.0.1 by the helpers below
        acme_root=None,                   # default: directory/acme (created)
        static_root=None,                 # default: the app's service/static
        render_args=(),                   # extra renderer flags, e.g. "--client-header-timeout", "2s"
    ).start()
    nginx.http_port, nginx.https_port     # free loopback ports, fixed for the object's life
    nginx.url("/x"), nginx.url("/x", https=False, host="www.app.test")
    nginx.request("GET", "/x", headers={}, body=None, https=True, host=None) -> Response
    nginx.curl("-sS", "-o", "/dev/null", "-w", "%{http_version}", nginx.url("/"))
    nginx.render()                        # re-render after changing certs / render_args ...
    nginx.reload()                        # ... then reload gracefully (waits for new workers)
    nginx.stop()
    nginx.error_log(), nginx.access_log() # text of the logs under prefix/logs/

Listens on 127.0.0.1 only. Started as root, the rendered standalone config
runs the workers as the same user (see deploy/nginx/render --user): pytest's
temp directories are 0700, so `nobody` could not reach the socket or files.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT, ManagedProcess, free_port, require_binary, wait_until

RENDER = ROOT / "deploy" / "nginx" / "render"


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value sent for a header (duplicates included)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class _ResolvedHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 while SNI, certificate check and Host use the name."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout,
                                        self.source_address)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Nginx(ManagedProcess):
    def __init__(self, directory: Path, *, upstream: str | list[str], certs=(), ca_file=None,
                 server_names=("app.test",), acme_root=None, static_root=None,
                 render_args=(), listen: str = "127.0.0.1"):
        self.binary = require_binary("nginx", "nginx")
        self.directory = Path(directory)
        self.conf_dir = self.directory / "conf"
        self.prefix = self.directory / "prefix"
        self.upstreams = [upstream] if isinstance(upstream, str) else list(upstream)
        self.listen = listen
        self.certs = list(certs)
        self.ca_file = ca_file
        self.server_names = tuple(server_names)
        self.acme_root = Path(acme_root) if acme_root else self.directory / "acme"
        self.static_root = Path(static_root) if static_root else ROOT / "service" / "static"
        self.render_args = tuple(render_args)
        self.http_port = free_port()
        self.https_port = free_port()
        self.acme_root.mkdir(parents=True, exist_ok=True)
        super().__init__("nginx", self.prefix / "logs" / "error.log")

    # -- lifecycle --------------------------------------------------------------

    def render_command(self) -> list[str]:
        command = [
            sys.executable, str(RENDER), "--standalone", "--out", str(self.conf_dir),
            "--prefix", str(self.prefix), "--listen", self.listen, "--http-port", str(self.http_port),
            "--https-port", str(self.https_port), "--acme-root", str(self.acme_root),
            "--static-root", str(self.static_root), "--nginx", self.binary,
            "--app-python", sys.executable,
        ]
        for upstream in self.upstreams:
            command += ["--upstream", upstream]
        for name in self.server_names:
            command += ["--server-name", name]
        for cert, key in self.certs:
            command += ["--cert", str(cert), "--key", str(key)]
        return command + list(self.render_args)

    def render(self) -> subprocess.CompletedProcess:
        result = subprocess.run(self.render_command(), check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"deploy/nginx/render failed:\n{result.stderr}")
        return result

    def start(self, timeout: float = 10) -> Nginx:
        self.render()
        self.spawn([self.binary, "-p", str(self.prefix), "-c", str(self.conf_dir / "nginx.conf"),
                    "-e", str(self.log_path), "-g", "daemon off;"])
        ports = [self.http_port] + ([] if "--http-only" in self.render_args else [self.https_port])

        def up():
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        self.wait_ready(up, timeout, f"nginx on ports {ports}")
        return self

    def reload(self, timeout: float = 10) -> None:
        """Graceful reload (SIGHUP); returns once new workers run the new config."""
        marker = "start worker process"
        before = self.error_log().count(marker)
        log_size = len(self.error_log())
        self.process.send_signal(signal.SIGHUP)

        def reloaded():
            new = self.error_log()[log_size:]
            if "[emerg]" in new:
                raise AssertionError(f"nginx rejected the new configuration:\n{new}")
            return self.error_log().count(marker) > before

        wait_until(reloaded, timeout, "nginx reload")

    # -- clients ------------------------------------------------------------------

    def url(self, path: str = "/", https: bool = True, host: str | None = None) -> str:
        host = host or self.server_names[0]
        if https:
            return f"https://{host}:{self.https_port}{path}"
        return f"http://{host}:{self.http_port}{path}"

    def request(self, method: str, path: str, headers: dict | None = None, body=None,
                https: bool = True, host: str | None = None, timeout: float = 10,
                context=None, source: str | None = None) -> Response:
        """One HTTP/1.1 request to 127.0.0.1 as `host` (SNI and Host header),
        optionally from another loopback address (source="127.0.0.2")."""
        host = host or self.server_names[0]
        if https:
            if context is None:
                import ssl
                context = ssl.create_default_context(cafile=str(self.ca_file))
            conn = _ResolvedHTTPS(host, self.https_port, timeout=timeout, context=context,
                                  source_address=(source, 0) if source else None)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout,
                                              source_address=(source, 0) if source else None)
        headers = {"Host": host, **(headers or {})}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return Response(response.status, response.getheaders(), response.read())
        finally:
            conn.close()

    def curl(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """curl resolving every server name to 127.0.0.1, trusting ca_file."""
        command = [require_binary("curl", "curl"), "--max-time", "10"]
        for name in self.server_names:
            for port in (self.http_port, self.https_port):
                command += ["--resolve", f"{name}:{port}:127.0.0.1"]
        if self.ca_file:
            command += ["--cacert", str(self.ca_file)]
        return subprocess.run(command + list(args), check=False, capture_output=True, text=True,
                              timeout=timeout)

    # -- logs -----------------------------------------------------------------------

    def error_log(self) -> str:
        return self.log()

    def access_log(self) -> str:
        return self.log(self.prefix / "logs" / "access.log")
