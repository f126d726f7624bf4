"""nginx in front of gunicorn: TLS, HTTP/2, proxying, limits.

Real processes only: redis-server, gunicorn with a gevent worker on a unix
socket (APP_ENV=production), and nginx rendered by deploy/nginx/render with a
throwaway CA, all on loopback. Names like app.test are resolved by connecting
to 127.0.0.1 explicitly (SNI and Host still say app.test).
"""

from __future__ import annotations

import http.client
import json
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest

from service.security import API_HEADERS, HTML_HEADERS
from tests.support import h2frames
from tests.support.nginx import RENDER, Nginx, Response
from tests.support.processes import ROOT, Gunicorn, base_env, require_binary, wait_until
from tests.support.tls import LocalCA

HOST = "app.test"
NAMES = (HOST, "www.app.test")
MAX_BODY = 4096
HSTS = ("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
HEADER_TIMEOUT = 2  # seconds; production renders 5s
FINGERPRINTED = "app.0123abcd.css"


def write_env_file(path, env):
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return LocalCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def certs(ca):
    return [ca.issue(*NAMES), ca.issue(*NAMES, key_type="rsa")]


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, ca, certs):
    """gunicorn (production settings) on a unix socket behind nginx."""
    directory = tmp_path_factory.mktemp("stack")
    # ACCESS_LOG (off by default in production): the app's own line per request
    # shows which requests reached gunicorn.
    env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS=",".join(NAMES),
                   MAX_CONTENT_LENGTH=MAX_BODY, ACCESS_LOG="true")
    gunicorn = Gunicorn(directory / "gunicorn", env, bind=f"unix:{directory}/gunicorn.sock")
    gunicorn.start()
    # A static root like the app's, plus one fingerprinted asset.
    static = directory / "static"
    shutil.copytree(ROOT / "service" / "static", static)
    shutil.copy(static / "app.css", static / FINGERPRINTED)
    # The renderer takes MAX_CONTENT_LENGTH from the same environment the app reads.
    env_file = write_env_file(directory / "service.env", gunicorn.env)
    nginx = Nginx(
        directory / "nginx", upstream=gunicorn.bind, certs=certs, ca_file=ca.cert_path,
        server_names=NAMES, static_root=static,
        render_args=("--env-file", str(env_file),
                     "--client-header-timeout", f"{HEADER_TIMEOUT}s",
                     "--login-rate", "10r/m", "--login-burst", "3"),
    )
    try:
        nginx.start()
        yield nginx, gunicorn
    finally:
        nginx.stop()
        gunicorn.stop()


@pytest.fixture
def nginx(stack):
    return stack[0]


def assert_headers_once(response, profile, hsts=True):
    for name, value in profile:
        assert response.header_values(name) == [value], name
    assert response.header_values(HSTS[0]) == ([HSTS[1]] if hsts else [])


# -- rendering -------------------------------------------------------------------


def test_rendered_config_passes_nginx_t(nginx):
    result = subprocess.run(
        [nginx.binary, "-t", "-p", str(nginx.prefix), "-c", str(nginx.conf_dir / "nginx.conf")],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    site = (nginx.conf_dir / "site.conf").read_text()
    # nginx's variables survived rendering; no template syntax is left anywhere.
    assert "return 308 https://$host:" in site and "$request_uri;" in site
    for path in nginx.conf_dir.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not any(mark in text for mark in ("@@", "{{", "{%", "{#")), path
    assert f"client_max_body_size {MAX_BODY};" in (nginx.conf_dir / "snippets/limits.conf").read_text()


def render_only(tmp_path, *args):
    out = tmp_path / "out"
    command = [sys.executable, str(RENDER), "--out", str(out), "--server-name", HOST,
               "--upstream", "unix:/run/service/gunicorn.sock", "--app-python", sys.executable,
               *args]
    return subprocess.run(command, capture_output=True, text=True, check=False), out


def test_both_http2_syntaxes_by_version(tmp_path, certs):
    cert = ["--cert", str(certs[0][0]), "--key", str(certs[0][1])]
    old, old_out = render_only(tmp_path / "old", *cert)  # installed nginx 1.22: tested
    assert old.returncode == 0, old.stderr
    old_site = (old_out / "site.conf").read_text()
    assert "listen 443 ssl http2;" in old_site and "listen [::]:443 ssl http2 default_server;" in old_site
    assert "http2 on;" not in old_site
    assert "ssl_session_tickets off;" in (old_out / "snippets/tls.conf").read_text()

    new, new_out = render_only(tmp_path / "new", *cert, "--nginx-version", "1.26.3", "--no-test")
    assert new.returncode == 0, new.stderr
    new_site = (new_out / "site.conf").read_text()
    assert "listen 443 ssl;" in new_site and "listen [::]:443 ssl default_server;" in new_site
    assert new_site.count("http2 on;") == 2  # the site and the default server
    assert " http2" not in "".join(line for line in new_site.splitlines() if "listen" in line)
    assert "ssl_session_tickets off;" not in (new_out / "snippets/tls.conf").read_text()


def test_renderer_refuses_a_config_nginx_rejects(tmp_path, certs):
    good = ["--cert", str(certs[0][0]), "--key", str(certs[0][1])]
    first, out = render_only(tmp_path, *good)
    assert first.returncode == 0, first.stderr
    before = (out / "site.conf").read_text()

    bad = ["--cert", str(tmp_path / "missing.crt"), "--key", str(certs[0][1]),
           "--client-header-timeout", "3s"]
    result, _ = render_only(tmp_path, *bad)
    assert result.returncode == 1
    assert "nginx -t failed; nothing was installed" in result.stderr
    assert "missing.crt" in result.stderr
    assert (out / "site.conf").read_text() == before  # the installed version is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_renderer_takes_names_socket_and_body_limit_from_the_env_file(tmp_path, certs):
    env_file = write_env_file(tmp_path / "service.env", {
        "ALLOWED_HOSTS": "example.test,.example.test", "BIND": "unix:/run/app/g.sock",
        "MAX_CONTENT_LENGTH": "2097152"})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(RENDER), "--out", str(out), "--env-file", str(env_file),
         "--cert", str(certs[0][0]), "--key", str(certs[0][1]), "--app-python", sys.executable],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    site = (out / "site.conf").read_text()
    assert "server_name example.test .example.test;" in site
    assert "server unix:/run/app/g.sock max_fails=0;" in site
    assert "client_max_body_size 2097152;" in (out / "snippets/limits.conf").read_text()


# -- port 80 -----------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/login?next=/account"), ("POST", "/api/auth/login"),
    ("GET", "/static/app.css"), ("GET", "/.well-known/other"), ("HEAD", "/healthz"),
])
def test_http_redirects_to_https_with_308(nginx, method, path):
    response = nginx.request(method, path, https=False, body=b"{}" if method == "POST" else None)
    assert response.status == 308
    assert response.header("Location") == f"https://{HOST}:{nginx.https_port}{path}"


def test_acme_challenge_is_served_over_http(nginx):
    challenge = nginx.acme_root / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "tok3n_-X").write_text("tok3n_-X.thumbprint")
    response = nginx.request("GET", "/.well-known/acme-challenge/tok3n_-X", https=False)
    assert response.status == 200
    assert response.body == b"tok3n_-X.thumbprint"
    assert response.header("Content-Type") == "text/plain"
    assert nginx.request("GET", "/.well-known/acme-challenge/unknown", https=False).status == 404


# -- TLS ----------------------------------------------------------------------------


def tls_handshake(nginx, context, server_hostname=HOST):
    with (socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname=server_hostname) as tls):
        return tls.version(), tls.cipher()[0], tls.selected_alpn_protocol()


def test_alpn_negotiates_h2(nginx, ca):
    _, _, alpn = tls_handshake(nginx, ca.client_context(alpn=["h2", "http/1.1"]))
    assert alpn == "h2"
    curl = nginx.curl("-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}", nginx.url("/"))
    assert curl.stdout == "2", curl.stderr


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_old_tls_versions_are_refused(nginx, flag):
    # openssl s_client, because Python's ssl refuses to offer them at all. The
    # client lowers its own security level, so the refusal is the server's:
    # alert 70, protocol_version.
    openssl = require_binary("openssl", "openssl")
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{nginx.https_port}", "-servername", HOST,
         flag, "-cipher", "DEFAULT:@SECLEVEL=0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode != 0
    assert "alert protocol version" in result.stderr, result.stderr


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_work(nginx, ca, version):
    context = ca.client_context(minimum_version=version, maximum_version=version)
    negotiated, _, _ = tls_handshake(nginx, context)
    assert negotiated == version.name.replace("_", ".")


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"])
def test_ecdsa_and_rsa_certificates_are_both_served(nginx, ca, cipher):
    # A TLS 1.2 client offering only ECDSA (or only RSA) suites gets a matching certificate.
    context = ca.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(cipher)
    _, negotiated, _ = tls_handshake(nginx, context)
    assert negotiated == cipher


def test_sslyze_mozilla_intermediate_compliant(nginx, ca):
    sslyze = require_binary("sslyze", "sslyze (pip, requirements-dev.txt)")
    # --certinfo_ca_file makes the throwaway CA the trust store, so even the
    # certificate checks (path validation, hostname, lifespan <= 366 days) run.
    result = subprocess.run(
        [sslyze, "--mozilla_config=intermediate", "--certinfo_ca_file", str(ca.cert_path),
         f"{HOST}:{nginx.https_port}{{127.0.0.1}}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOST}:{nginx.https_port}: OK - Compliant." in result.stdout
    assert "Rejected curves:" in result.stdout and "X448" in result.stdout.split("Rejected curves:")[1]


# -- headers ------------------------------------------------------------------------


def test_app_page_has_each_security_header_once(nginx):
    response = nginx.request("GET", "/")
    assert response.status == 200
    assert response.header("Content-Type").startswith("text/html")
    assert_headers_once(response, HTML_HEADERS)
    assert response.header("Server") == "nginx"  # no version, no gunicorn


def test_json_response_has_each_security_header_once(nginx):
    response = nginx.request("POST", "/test/echo", body=json.dumps({"a": 1}),
                             headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert json.loads(response.body) == {"received": {"a": 1}}
    assert_headers_once(response, API_HEADERS)


def test_static_file_has_security_headers_and_cache_policy(nginx):
    response = nginx.request("GET", "/static/app.css")
    assert response.status == 200
    assert response.header("Content-Type") == "text/css"
    assert_headers_once(response, API_HEADERS)
    assert response.header_values("Cache-Control") == ["no-cache"]
    assert response.header("X-Request-ID") is None  # served by nginx alone

    fingerprinted = nginx.request("GET", f"/static/{FINGERPRINTED}")
    assert fingerprinted.status == 200
    assert_headers_once(fingerprinted, API_HEADERS)
    assert fingerprinted.header_values("Cache-Control") == ["public, max-age=31536000, immutable"]

    missing = nginx.request("GET", "/static/nope.css")
    assert missing.status == 404
    assert b'id="nginx-error"' in missing.body
    assert_headers_once(missing, HTML_HEADERS)


def test_static_text_is_gzipped_but_app_responses_are_not(nginx):
    css = nginx.request("GET", "/static/app.css", headers={"Accept-Encoding": "gzip"})
    assert css.header("Content-Encoding") == "gzip"
    assert css.header("Vary") == "Accept-Encoding"
    # App pages carry CSRF tokens and account data: never compressed (BREACH).
    page = nginx.request("GET", "/login", headers={"Accept-Encoding": "gzip"})
    assert page.status == 200 and b"csrf_token" in page.body
    assert page.header("Content-Encoding") is None


def test_nginx_502_page_has_security_headers_and_a_helpful_message(
        redis_server, make_gunicorn, tmp_path, ca, certs):
    gunicorn = make_gunicorn(
        base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS=HOST),
        bind=f"unix:{tmp_path}/down.sock")
    gunicorn.start()
    nginx = Nginx(tmp_path / "nginx", upstream=gunicorn.bind, certs=certs, ca_file=ca.cert_path)
    try:
        nginx.start()
        assert nginx.request("GET", "/").status == 200
        gunicorn.stop()

        response = nginx.request("GET", "/")
        assert response.status == 502
        assert b'id="nginx-error"' in response.body
        assert b"not answering right now" in response.body
        request_id = response.header("X-Request-ID")
        assert request_id and request_id.encode() in response.body  # quoted on the page
        assert_headers_once(response, HTML_HEADERS)
        assert response.header_values("Cache-Control") == ["no-store"]
    finally:
        nginx.stop()


# -- the app behind nginx ----------------------------------------------------------------


def test_session_cookie_through_nginx_is_host_prefixed_and_locked_down(nginx):
    response = nginx.request("POST", "/test/session", body=json.dumps({"user": "ada"}),
                             headers={"Content-Type": "application/json"})
    assert response.status == 200
    [cookie] = response.header_values("Set-Cookie")
    name, _, rest = cookie.partition("=")
    attributes = [part.strip().lower() for part in rest.split(";")[1:]]
    assert name == "__Host-session"
    assert "secure" in attributes and "httponly" in attributes
    assert "samesite=lax" in attributes and "path=/" in attributes
    assert not any(a.startswith("domain") for a in attributes)


def test_app_sees_the_real_client_and_https_despite_forged_headers(nginx):
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http",
              "X-Real-IP": "203.0.113.8", "Forwarded": "for=203.0.113.9;proto=http",
              "X-Request-ID": "chosen-by-client"}
    response = nginx.request("GET", "/test/client", headers=forged, source="127.0.0.2")
    assert response.status == 200
    seen = json.loads(response.body)
    assert seen["remote_addr"] == "127.0.0.2"
    assert seen["scheme"] == "https"
    # The request id is nginx's own, the same in the app, the response and nginx's log.
    request_id = seen["request_id"]
    assert request_id != "chosen-by-client" and len(request_id) == 32
    assert response.header("X-Request-ID") == request_id
    # nginx writes its log line after sending the response: wait for it.
    def logged():
        entries = [json.loads(line) for line in nginx.access_log().splitlines()]
        return [e for e in entries if e["request_id"] == request_id]

    [entry] = wait_until(logged, 5, "the access log line")
    assert entry["remote_addr"] == "127.0.0.2" and entry["status"] == 200


CLOSED = (http.client.RemoteDisconnected, ConnectionResetError)


def test_unknown_host_is_rejected(nginx, ca):
    # Port 80: the connection is closed without an answer (444; reset, since
    # reset_timedout_connection also applies to 444).
    with pytest.raises(CLOSED):
        nginx.request("GET", "/", https=False, host="evil.test")
    # 443 with an unknown SNI name: the handshake is refused, no certificate shown.
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_handshake(nginx, ca.client_context(), server_hostname="evil.test")
    # 443, our SNI name but another Host: closed without an answer.
    with pytest.raises(CLOSED):
        nginx.request("GET", "/", headers={"Host": "evil.test"})
    # A known name still works on the same listener.
    assert nginx.request("GET", "/healthz", host="www.app.test").status == 200


def test_oversized_body_gets_413_from_nginx(stack):
    nginx, gunicorn = stack
    headers = {"Content-Type": "application/json"}
    payload = '{"pad": "%s"}'
    fits = payload % ("x" * (MAX_BODY - len(payload % "")))
    assert len(fits) == MAX_BODY
    before = nginx.request("POST", "/test/echo", body=fits, headers=headers)
    assert before.status == 200

    response = nginx.request("POST", "/test/echo", body=fits + " ", headers=headers)
    assert response.status == 413
    assert b'id="nginx-error"' in response.body
    assert_headers_once(response, HTML_HEADERS)
    after = nginx.request("POST", "/test/echo", body=fits, headers=headers)
    assert after.status == 200
    # gunicorn never saw it: its access log has the lines of the requests
    # before and after it, and none with its request id.
    seen = [before.header("X-Request-ID"), after.header("X-Request-ID")]
    wait_until(lambda: all(id_ in gunicorn.stdout() for id_ in seen), 5,
               "the app's access lines of the requests that fit")
    assert response.header("X-Request-ID") not in gunicorn.stdout()


def test_login_posts_are_rate_limited(nginx):
    # 10r/m with a burst of 3: 4 attempts pass at once, then 429 from nginx.
    statuses = [nginx.request("POST", "/api/auth/login", body="{}", source="127.0.0.3",
                              headers={"Content-Type": "application/json"}).status
                for _ in range(7)]
    assert 429 not in statuses[:4], statuses
    assert statuses[4:] == [429, 429, 429], statuses
    limited = nginx.request("POST", "/login", body="x", source="127.0.0.3")
    assert limited.status == 429
    assert b'id="nginx-error"' in limited.body
    assert_headers_once(limited, HTML_HEADERS)
    # Other clients and GETs of the forms are not limited.
    assert nginx.request("POST", "/api/auth/login", body="{}", source="127.0.0.4").status != 429
    assert all(nginx.request("GET", "/login", source="127.0.0.3").status != 429 for _ in range(3))


def test_slow_loris_headers_are_cut_off(nginx, ca):
    """A client sending its request header one byte per second is disconnected."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: slow\r\n\r\n".encode()
    context = ca.client_context()
    with (socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname=HOST) as tls):
        tls.setblocking(False)
        started = time.monotonic()
        sent, closed = 0, False
        while sent < len(request) and time.monotonic() - started < 15:
            try:
                tls.sendall(request[sent:sent + 1])
            except OSError:
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([tls], [], [], 1.0)
            if readable:
                try:
                    tls.recv(1024)  # EOF or an error response: cut off either way
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue  # only a TLS 1.3 session ticket
                except OSError:
                    pass
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, f"still connected after {elapsed:.1f}s and {sent} bytes"
    assert sent < len(request)
    assert HEADER_TIMEOUT - 0.5 <= elapsed < HEADER_TIMEOUT + 3, elapsed


# -- nginx's own answers -------------------------------------------------------------


def test_access_log_lines_parse_for_streams_reset_before_a_status(nginx, ca):
    """A stream reset while its header block is incomplete has status 000."""

    def reset_logged():
        entries = [json.loads(line) for line in nginx.access_log().splitlines()]  # all parse
        return [e for e in entries if e["status"] is None]

    earlier = len(reset_logged())  # other tests' resets share this log
    with h2frames.connect(nginx.https_port, HOST, ca.client_context()) as tls:
        block = h2frames.header_block((":method", "GET"), (":scheme", "https"),
                                      (":path", "/reset-early"), (":authority", HOST))
        tls.sendall(h2frames.frame(h2frames.HEADERS, 0, 1, block)  # no END_HEADERS
                    + h2frames.frame(h2frames.RST_STREAM, 0, 1, struct.pack(">I", h2frames.CANCEL)))
        try:
            tls.recv(65536)  # nginx answers with GOAWAY and closes
        except OSError:
            pass

    wait_until(lambda: len(reset_logged()) > earlier, 5, "a log line for the reset stream")
    assert '"status":000' not in nginx.access_log()


def test_nginx_429_on_the_api_is_the_apps_json_error_with_retry_after(nginx):
    statuses = [nginx.request("POST", "/api/auth/register", body="{}", source="127.0.0.5",
                              headers={"Content-Type": "application/json"}) for _ in range(5)]
    limited = statuses[-1]
    assert limited.status == 429
    assert limited.header("Content-Type") == "application/json"
    assert json.loads(limited.body) == {
        "error": "rate_limited",  # as the app names it (service/errors.py)
        "message": "Too many attempts from your address in a short time. "
                   "Wait a minute, then try again."}
    assert limited.header("Retry-After") == "6"  # 10r/m: the next attempt passes in 6 s
    assert_headers_once(limited, API_HEADERS)
    assert limited.header_values("Cache-Control") == ["no-store"]
    assert limited.header("X-Request-ID")
    # The HTML forms get the HTML page, with Retry-After too.
    page = nginx.request("POST", "/register", body="x", source="127.0.0.5")
    assert page.status == 429 and b'id="nginx-error"' in page.body
    assert page.header("Retry-After") == "6"
    assert_headers_once(page, HTML_HEADERS)


def test_nginx_413_on_the_api_is_json_without_retry_after(nginx):
    response = nginx.request("POST", "/api/auth/login", body="x" * (MAX_BODY + 1),
                             headers={"Content-Type": "application/json"}, source="127.0.0.6")
    assert response.status == 413
    assert json.loads(response.body)["error"] == "payload_too_large"
    assert response.header("Retry-After") is None
    assert_headers_once(response, API_HEADERS)


@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.1\r\nHost: app.test\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nCookie: " + b"a" * 20000 + b"\r\n\r\n",  # 494 -> 400
    b"BREW\r\n\r\n",
])
def test_requests_rejected_before_any_location_get_security_headers(nginx, ca, request_head):
    context = ca.client_context()
    with (socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname=HOST) as tls):
        tls.sendall(request_head)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 400 "), status_line
    response = Response(400, [tuple(part.strip() for part in line.split(":", 1)) for line in lines],
                        body)
    assert b'id="nginx-error"' in body
    assert_headers_once(response, HTML_HEADERS)
