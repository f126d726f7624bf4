"""A real ACME server on loopback (Debian's pebble + pebble-challtestsrv) and
the deploy/letsencrypt commands pointed at it."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import (
    ROOT,
    ManagedProcess,
    free_port,
    read_log,
    require_binary,
    wait_until,
)

LETSENCRYPT = ROOT / "deploy" / "letsencrypt"
LOCAL_CA = ROOT / "deploy" / "nginx" / "local-ca"
# Installed once per machine by deploy/letsencrypt/setup; reinstalled only
# when deploy/letsencrypt/requirements.txt changes.
CERTBOT_VENV = Path(os.environ.get("TEST_CERTBOT_VENV", ROOT / ".state" / "certbot-venv"))


# Let's Encrypt's certificate profiles (pebble >= 2.7 offers whichever its
# config lists; an order without a profile gets one of them at random).
LE_PROFILES = ("classic", "tlsserver", "shortlived")


def help_text(binary: str) -> str:
    """A Go program's flag list (`-h` prints it to stderr and exits 0 or 2)."""
    result = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    return result.stdout + result.stderr


def flags(help_output: str) -> set[str]:
    """The flag names in Go's `-h` output ("  -name type" lines)."""
    return set(re.findall(r"^\s+-([A-Za-z0-9][\w-]*)", help_output, re.MULTILINE))


def challtestsrv_args(help_output: str, dns: str, management: str) -> list[str]:
    """pebble-challtestsrv's arguments for a DNS-only server, from the flags it
    has rather than a version string (a source build reports "dev"): the DNS
    listener is `-dns01` up to pebble 2.9 and `-dnsserver` from 2.10; from 2.5
    a DNS-over-HTTPS listener opens on :8443 unless `-doh` is empty."""
    known = flags(help_output)
    if "dnsserver" in known:
        dns_flag = "-dnsserver"
    elif "dns01" in known:
        dns_flag = "-dns01"
    else:
        raise AssertionError(f"pebble-challtestsrv has neither -dnsserver nor -dns01:\n{help_output}")
    args = [dns_flag, dns, "-management", management,
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            # No AAAA answers: pebble would try ::1 first, where nginx does not listen.
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]
    if "doh" in known:
        args += ["-doh", ""]
    return args


def pebble_config(*, port: int, management_port: int, certificate: Path, private_key: Path,
                  http_port: int, validity_seconds: int, profiles: dict[str, int]) -> dict:
    """pebble's config for every version: up to 2.6 the lifetime is
    `certificateValidityPeriod`; from 2.7 it is each profile's `validityPeriod`
    (the old key is still parsed, and ignored). Each version ignores the key it
    does not use (Go's JSON decoding), so both are always written."""
    return {"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(certificate),
        "privateKey": str(private_key),
        "httpPort": http_port,
        "tlsPort": free_port(),  # unused: only HTTP-01 here
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "certificateValidityPeriod": validity_seconds,
        "profiles": {name: {"description": f"{name} ({seconds} s)", "validityPeriod": seconds}
                     for name, seconds in profiles.items()},
    }}


class Pebble:
    """pebble (the ACME server) with pebble-challtestsrv as its DNS, which
    answers 127.0.0.1 for every name. `http_port` is where pebble's validator
    fetches HTTP-01 challenges: the plain-HTTP port of the nginx under test."""

    def __init__(self, directory: Path, http_port: int, validity_seconds: int = 90 * 86400,
                 profiles: dict[str, int] | None = None):
        self.pebble = require_binary("pebble", "pebble")
        self.challtestsrv = require_binary("pebble-challtestsrv", "pebble")
        require_binary("openssl", "openssl")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.validity_seconds = validity_seconds
        # Let's Encrypt's profile names, each with this CA's lifetime unless given.
        self.profiles = profiles or dict.fromkeys(LE_PROFILES, validity_seconds)
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.dns_management_port = free_port()
        self.processes: list[ManagedProcess] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def api_ca(self) -> Path:
        """The CA of pebble's own HTTPS certificate (for REQUESTS_CA_BUNDLE)."""
        return self.directory / "api-ca" / "ca.crt"

    def start(self) -> Pebble:
        d = self.directory
        subprocess.run([str(LOCAL_CA), "--days", "2", str(d / "api-ca"), str(d / "api.crt"),
                        str(d / "api.key"), "localhost", "127.0.0.1"], check=True, capture_output=True)
        (d / "pebble.json").write_text(json.dumps(pebble_config(
            port=self.port, management_port=self.management_port, certificate=d / "api.crt",
            private_key=d / "api.key", http_port=self.http_port,
            validity_seconds=self.validity_seconds, profiles=self.profiles)))
        self._launch("challtestsrv", [self.challtestsrv, *challtestsrv_args(
            help_text(self.challtestsrv), dns=f"127.0.0.1:{self.dns_port}",
            management=f"127.0.0.1:{self.dns_management_port}")], {})
        wait_until(lambda: self._management("GET", self.dns_management_port, "/", tls=False)
                   is not None, 10, "pebble-challtestsrv")
        # No random validation sleeps, no rejected nonces, and no reuse of
        # earlier authorizations: every order really fetches its challenge.
        self._launch("pebble", [self.pebble, "-config", str(d / "pebble.json"),
                                "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                     {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                      "PEBBLE_AUTHZREUSE": "0"})
        wait_until(self.root_pem, 10, f"pebble on port {self.port}")
        return self

    def _launch(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        process = ManagedProcess(name, self.directory / f"{name}.log")
        process.spawn(argv, stdout=process.log_path, env=dict(os.environ, **env),
                      cwd=self.directory)
        self.processes.append(process)
        time.sleep(0.05)
        if process.process.poll() is not None:
            raise AssertionError(f"{name} exited at once:\n{process.log()}")

    def _management(self, method: str, port: int, path: str, body: dict | None = None,
                    tls: bool = True) -> bytes | None:
        scheme = "https" if tls else "http"
        context = ssl.create_default_context(cafile=str(self.api_ca)) if tls else None
        request = urllib.request.Request(
            f"{scheme}://127.0.0.1:{port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return response.read()
        except urllib.error.HTTPError as exc:  # challtestsrv answers 404 on /
            exc.close()
            return b"" if exc.code == 404 else None

    def acme_directory(self) -> dict:
        return json.loads(self._management("GET", self.port, "/dir"))

    def offered_profiles(self) -> set[str]:
        """The profiles the directory lists: none on pebble < 2.7 (Debian's 2.4)."""
        return set(self.acme_directory().get("meta", {}).get("profiles", {}))

    def set_renewal_window(self, certificate_pem: str, start: float, end: float) -> None:
        """Move a certificate's ARI window (pebble >= 2.10's management API)."""
        def rfc3339(t: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        window = {"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}
        self._management("POST", self.management_port, "/set-renewal-info/",
                         {"Certificate": certificate_pem, "ARIResponse": json.dumps(window)})

    def root_pem(self) -> str:
        """The issuing root: new on every pebble start, so fetched, never stored."""
        return self._management("GET", self.management_port, "/roots/0").decode()

    def set_address(self, host: str, address: str) -> None:
        """Make pebble's DNS answer `address` for `host` (a moved or wrong A record)."""
        self._management("POST", self.dns_management_port, "/add-a",
                         {"host": host, "addresses": [address]}, tls=False)

    def clear_address(self, host: str) -> None:
        self._management("POST", self.dns_management_port, "/clear-a", {"host": host}, tls=False)

    def log(self, name: str = "pebble") -> str:
        return read_log(self.directory / f"{name}.log")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


@dataclass
class Certbot:
    """The deploy/letsencrypt commands with certbot's state in a temp dir and
    the ACME server, webroot, nginx and certificate paths of one test setup."""

    directory: Path
    pebble: Pebble
    webroot: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    nginx_conf: Path | None = None
    nginx_prefix: Path | None = None
    metrics_dir: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.directory / "config"

    def env(self, **extra) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory),
            "LANG": "C.UTF-8",
            "LETSENCRYPT_ENV_FILE": os.devnull,
            "CERTBOT_VENV": str(CERTBOT_VENV),
            "CERTBOT_CONFIG_DIR": str(self.config_dir),
            "CERTBOT_WORK_DIR": str(self.directory / "work"),
            "CERTBOT_LOGS_DIR": str(self.directory / "logs"),
            "ACME_SERVER": self.pebble.directory_url,
            "ACME_WEBROOT": str(self.webroot),
            "REQUESTS_CA_BUNDLE": str(self.pebble.api_ca),
        }
        optional = {"TLS_CERT": self.tls_cert, "TLS_KEY": self.tls_key,
                    "NGINX_CONF": self.nginx_conf, "NGINX_PREFIX": self.nginx_prefix,
                    "METRICS_DIR": self.metrics_dir}
        env.update({k: str(v) for k, v in optional.items() if v is not None})
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, command: str, *args: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        return subprocess.run([str(LETSENCRYPT / command), *args], env=self.env(**env),
                              check=False, capture_output=True, text=True, timeout=timeout)

    def issue(self, *names: str, **env) -> subprocess.CompletedProcess:
        args = [a for name in names for a in ("-d", name)]
        return self.run("issue", *args, "-m", "ops@example.test", **env)

    def renew(self, *args: str, **env) -> subprocess.CompletedProcess:
        return self.run("renew", *args, **env)

    def log(self) -> str:
        return read_log(self.directory / "logs" / "letsencrypt.log")


def ensure_certbot(scratch: Path) -> Path:
    """deploy/letsencrypt/setup into the cached venv (a no-op when current)."""
    result = subprocess.run(
        [str(LETSENCRYPT / "setup")], check=False, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, LETSENCRYPT_ENV_FILE=os.devnull, CERTBOT_VENV=str(CERTBOT_VENV),
                 CERTBOT_CONFIG_DIR=str(scratch / "config"), CERTBOT_WORK_DIR=str(scratch / "work"),
                 CERTBOT_LOGS_DIR=str(scratch / "logs"), ACME_WEBROOT=str(scratch / "webroot")))
    assert result.returncode == 0, f"deploy/letsencrypt/setup failed:\n{result.stdout}{result.stderr}"
    return CERTBOT_VENV / "bin" / "certbot"


def certificate_serial(path: Path) -> str:
    """The serial of a PEM certificate file, as ssl's getpeercert() spells it."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().removeprefix("serial=")


def served_certificate(port: int, server_name: str, root_pem: str) -> dict:
    """Handshake with nginx for `server_name` and verify the chain against
    `root_pem` and the name; returns the peer certificate (serialNumber...)."""
    context = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        return tls.getpeercert()
