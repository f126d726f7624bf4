"""deploy/letsencrypt end to end: certbot (its own venv) against Debian's
pebble, challenges through the real nginx webroot, nginx in front of the real
app. Nothing is mocked; everything listens on free loopback ports."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import threading
import time

import pytest
from cryptography import x509

from tests.support.nginx import Nginx, _ResolvedHTTPS
from tests.support.pebble import (
    CERTBOT_VENV,
    LETSENCRYPT,
    Certbot,
    Pebble,
    certificate_serial,
    ensure_certbot,
    served_certificate,
)
from tests.support.processes import Gunicorn, base_env, require_binary, wait_until

NAME = "app.test"
WWW = "www.app.test"
DAY = 86400
# Let's Encrypt's profiles and lifetimes, as the stack's pebble offers them
# (pebble >= 2.7; Debian's 2.4 has no profiles and issues 90 days).
PROFILES = {"classic": 90 * DAY, "tlsserver": 45 * DAY, "shortlived": 160 * 3600}


class Stack:
    """nginx (started on a self-signed placeholder) + the app + pebble."""

    def __init__(self, tmp, redis_url):
        self.tls_cert = tmp / "tls" / "fullchain.pem"
        self.tls_key = tmp / "tls" / "privkey.pem"
        webroot = tmp / "acme"
        self.gunicorn = Gunicorn(tmp / "gunicorn", base_env(redis_url, ALLOWED_HOSTS=NAME),
                                 bind=f"unix:{tmp}/gunicorn.sock").start()
        self.nginx = Nginx(tmp / "nginx", upstream=f"unix:{tmp}/gunicorn.sock",
                           certs=[(self.tls_cert, self.tls_key)], server_names=(NAME, WWW),
                           acme_root=webroot)
        self.pebble = Pebble(tmp / "pebble", http_port=self.nginx.http_port, profiles=PROFILES)
        self.certbot = Certbot(tmp / "certbot", self.pebble, webroot, self.tls_cert,
                               self.tls_key, nginx_conf=self.nginx.conf_dir / "nginx.conf",
                               nginx_prefix=self.nginx.prefix, metrics_dir=tmp / "metrics")

    def start(self):
        placeholder = self.certbot.run("placeholder-cert", NAME)
        assert placeholder.returncode == 0, placeholder.stderr
        self.nginx.start()
        self.pebble.start()
        return self

    def stop(self):
        for process in (self.pebble, self.nginx, self.gunicorn):
            process.stop()

    def root(self) -> str:
        return self.pebble.root_pem()

    def served_serial(self, name: str = NAME) -> str:
        return served_certificate(self.nginx.https_port, name, self.root())["serialNumber"]

    def live_serial(self) -> str:
        return certificate_serial(self.certbot.config_dir / "live" / NAME / "cert.pem")

    def live_lifetime(self) -> int:
        return certificate_lifetime(self.certbot.config_dir / "live" / NAME / "cert.pem")

    def renewal_conf(self) -> str:
        return (self.certbot.config_dir / "renewal" / f"{NAME}.conf").read_text()

    def wait_served(self, serial: str, timeout: float = 10) -> None:
        wait_until(lambda: self.served_serial() == serial, timeout,
                   f"nginx to serve certificate {serial}")

    def ensure_issued(self) -> None:
        """The first issuance (the first test does it, checked; `issue` is
        idempotent, so running it again here is safe)."""
        if not (self.certbot.config_dir / "live" / NAME).exists():
            result = self.certbot.issue(NAME)
            assert result.returncode == 0, result.stdout + result.stderr
        self.wait_served(self.live_serial())


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    ensure_certbot(tmp_path_factory.mktemp("certbot-setup"))
    stack = Stack(tmp_path_factory.mktemp("letsencrypt"), redis_server.url)
    try:
        yield stack.start()
    finally:
        stack.stop()


def certificate_lifetime(path) -> int:
    """Seconds of validity: notAfter is inclusive (RFC 5280), so one more than the difference."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return round((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()) + 1


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def test_first_issuance_then_forced_renewal_reload_without_restart(stack):
    started = time.monotonic()
    master = stack.nginx.process.pid
    # Before issuance nginx runs on the self-signed placeholder.
    with pytest.raises(ssl.SSLCertVerificationError):
        stack.served_serial()

    issued = stack.certbot.issue(NAME)
    assert issued.returncode == 0, output(issued)
    assert "nginx reloaded" in issued.stdout
    assert stack.tls_cert.resolve() == (stack.certbot.config_dir / "live" / NAME / "fullchain.pem").resolve()
    first = stack.live_serial()
    stack.wait_served(first)  # verifies against pebble's root, for NAME
    issue_seconds = time.monotonic() - started

    renewed = stack.certbot.renew("--force-renewal")
    assert renewed.returncode == 0, output(renewed)
    second = stack.live_serial()
    assert second != first
    stack.wait_served(second)
    assert stack.nginx.process.poll() is None and stack.nginx.process.pid == master
    total = time.monotonic() - started
    print(f"\nissue {issue_seconds:.1f} s, issue + forced renewal {total:.1f} s "
          f"(serials {first} -> {second}, nginx master {master} throughout)")


def test_issue_again_is_a_no_op(stack):
    stack.ensure_issued()
    serial = stack.live_serial()
    again = stack.certbot.issue(NAME)
    assert again.returncode == 0, output(again)
    assert "Certificate not yet due for renewal; no action taken" in again.stdout, output(again)
    assert stack.live_serial() == serial


def test_issue_always_asks_for_the_configured_profile(stack):
    """Without --profile the CA would choose (pebble >= 2.7 at random): issue
    names CERT_PROFILE, by default classic. Debian's pebble 2.4 lists no
    profiles, so certbot asks for none and the CA's default (90 days) comes
    back; the preference is still stored for every renewal."""
    stack.ensure_issued()
    offered = stack.pebble.offered_profiles()
    assert offered in (set(), set(PROFILES))  # the harness configures all three or none exist
    assert "preferred_profile = classic" in stack.renewal_conf()
    assert stack.live_lifetime() == PROFILES["classic"]

    short = stack.certbot.issue(NAME, CERT_PROFILE="shortlived")
    assert short.returncode == 0, output(short)
    assert "differs (CA, key type or profile): replacing it" in short.stdout
    assert "preferred_profile = shortlived" in stack.renewal_conf()
    # With profiles the CA honours the choice; without, the order carried none.
    assert stack.live_lifetime() == (PROFILES["shortlived"] if offered else 90 * DAY)
    assert ("Var preferred_profile=shortlived" in stack.certbot.log())

    back = stack.certbot.issue(NAME)  # the default again: replaced at once
    assert back.returncode == 0 and "replacing it" in back.stdout, output(back)
    assert "preferred_profile = classic" in stack.renewal_conf()
    assert stack.live_lifetime() == PROFILES["classic"]
    stack.wait_served(stack.live_serial())


def test_adding_a_name_replaces_the_certificate(stack):
    stack.ensure_issued()
    with pytest.raises(ssl.SSLCertVerificationError):
        stack.served_serial(WWW)  # not in the certificate yet
    result = stack.certbot.issue(NAME, WWW)
    assert result.returncode == 0, output(result)
    serial = stack.live_serial()
    stack.wait_served(serial)
    # Old nginx workers may still accept for a moment after the reload.
    wait_until(lambda: stack.served_serial(WWW) == serial, 10, f"nginx to serve {serial} for {WWW}")
    # Renewals keep both names (and their webroot).
    assert f"{WWW} = " in (stack.certbot.config_dir / "renewal" / f"{NAME}.conf").read_text()


def test_issue_replaces_a_certificate_with_another_profile_at_once(stack):
    stack.ensure_issued()
    names = ["-d", NAME, "-d", WWW, "-m", "ops@example.test"]
    same = stack.certbot.run("issue", *names)  # whatever ran before: now both names
    assert same.returncode == 0, output(same)
    before = stack.live_serial()
    changed = stack.certbot.run("issue", *names, "--profile", "tlsserver")
    assert changed.returncode == 0, output(changed)
    assert "differs (CA, key type or profile): replacing it" in changed.stdout
    after = stack.live_serial()
    assert after != before  # not kept until due: replaced now
    stack.wait_served(after)
    renewal_conf = (stack.certbot.config_dir / "renewal" / f"{NAME}.conf").read_text()
    assert "preferred_profile = tlsserver" in renewal_conf
    again = stack.certbot.run("issue", *names, "--profile", "tlsserver")
    assert again.returncode == 0 and stack.live_serial() == after, output(again)
    # Back to the default profile for the tests that follow.
    default = stack.certbot.run("issue", *names)
    assert default.returncode == 0 and "preferred_profile = classic" in stack.renewal_conf(), output(default)
    stack.wait_served(stack.live_serial())


def test_renewal_under_load_drops_no_request(stack):
    stack.ensure_issued()
    old = stack.live_serial()
    root = stack.root()
    stop = threading.Event()
    counts = {"requests": 0, "failed": 0}
    serials, errors = set(), []
    lock = threading.Lock()

    def load(deadline: float, limit: int) -> None:
        context = ssl.create_default_context(cadata=root)
        while not stop.is_set() and time.monotonic() < deadline:
            # A new connection and TLS handshake per request: each one sees
            # whatever certificate nginx serves at that moment.
            conn = _ResolvedHTTPS(NAME, stack.nginx.https_port, timeout=5, context=context)
            try:
                conn.request("GET", "/", headers={"Host": NAME})
                response = conn.getresponse()
                response.read()
                ok, detail = response.status == 200, f"status {response.status}"
                serial = conn.sock.getpeercert()["serialNumber"] if conn.sock else None
            except (OSError, http.client.HTTPException) as exc:
                ok, detail, serial = False, repr(exc), None
            finally:
                conn.close()
            with lock:
                counts["requests"] += 1
                counts["failed"] += not ok
                if serial:
                    serials.add(serial)
                if not ok:
                    errors.append(detail)
                if counts["requests"] >= limit:
                    stop.set()

    started = time.monotonic()
    threads = [threading.Thread(target=load, args=(started + 60, 20000)) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        renewed = stack.certbot.renew("--force-renewal")
        new = stack.live_serial()
        stack.wait_served(new)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    duration = time.monotonic() - started
    print(f"\nload during renewal: {counts['requests']} requests, {counts['failed']} failed, "
          f"{duration:.1f} s, serials seen {sorted(serials)}")
    assert renewed.returncode == 0, output(renewed)
    assert counts["failed"] == 0, errors[:5]
    assert counts["requests"] > 50
    assert {old, new} <= serials, "the load did not span the switch of certificates"


def test_unreachable_challenge_fails_clearly_and_keeps_the_old_certificate(stack):
    stack.ensure_issued()
    served = stack.served_serial()
    # DNS now points the name where nothing listens on the HTTP port.
    stack.pebble.set_address(NAME, "127.0.0.2")
    try:
        result = stack.certbot.renew("--force-renewal")
    finally:
        stack.pebble.clear_address(NAME)
    assert result.returncode != 0, output(result)
    # The CA's reason, the name and the address, as certbot reports them.
    assert re.search(r"Identifier: app\.test\n.*\n.*127\.0\.0\.2:\d+: connect: connection refused",
                     result.stdout), output(result)
    assert "certbot renew failed" in result.stderr
    assert stack.live_serial() == served
    assert stack.served_serial() == served
    # The certificate itself is fresh, but the failed run is what is wrong.
    assert f"RENEWAL-FAILED {NAME}" in result.stderr, output(result)
    assert "certbot renew failed, see" in result.stderr
    metrics = (stack.certbot.metrics_dir / "tls_certificates.prom").read_text()
    assert re.search(rf'tls_certificate_expiry_ok{{name="{NAME}",[^}}]*}} 0', metrics)
    check = stack.certbot.run("expiry-check")
    assert check.returncode == 1 and f"RENEWAL-FAILED {NAME}" in check.stderr, output(check)
    # The next run that succeeds (nothing due) clears it.
    fixed = stack.certbot.renew()
    assert fixed.returncode == 0 and "RENEWAL-FAILED" not in fixed.stderr, output(fixed)
    assert stack.certbot.run("expiry-check").returncode == 0


def test_broken_nginx_config_blocks_the_reload_and_fails_loudly(stack):
    stack.ensure_issued()
    master = stack.nginx.process.pid
    served = stack.served_serial()
    site = stack.nginx.conf_dir / "site.conf"
    good = site.read_text()
    site.write_text(good + "\nthis is not an nginx directive;\n")
    try:
        result = stack.certbot.renew("--force-renewal")
        assert result.returncode != 0, output(result)
        assert "nginx -t failed, nginx was not reloaded" in result.stderr, output(result)
        assert "deploy hook failed" in result.stderr
        metrics = stack.certbot.metrics_dir / "certbot_renew.prom"
        assert "certbot_renew_success 0" in metrics.read_text()  # what alerts fire on
        # certbot's own log keeps the hook's error, whoever ran certbot.
        assert "nginx -t failed" in stack.certbot.log()
        assert stack.live_serial() != served  # certbot did get a new certificate
        time.sleep(1)
        assert stack.served_serial() == served  # ... but nginx still serves the old one
        assert stack.nginx.process.pid == master and stack.nginx.process.poll() is None
    finally:
        site.write_text(good)
    # The runbook's recovery: fix the config, then check and reload.
    hook = subprocess.run([str(LETSENCRYPT / "renewal-hooks/deploy/reload-nginx")],
                          env=stack.certbot.env(RENEWED_LINEAGE=stack.certbot.config_dir / "live" / NAME),
                          check=False, capture_output=True, text=True)
    assert hook.returncode == 0, output(hook)
    stack.wait_served(stack.live_serial())
    assert f"RENEWAL-FAILED {NAME}" in stack.certbot.run("expiry-check").stderr
    # ... then one renew run (nothing is due) records success and clears the alert.
    rerun = stack.certbot.renew()
    assert rerun.returncode == 0, output(rerun)
    assert stack.certbot.run("expiry-check").returncode == 0


def test_expiry_watch_flags_short_lived_certificate_and_renewal_follows_lifetime(stack, tmp_path):
    stack.ensure_issued()
    # A second CA issuing 20-second certificates, validating through the same nginx.
    short = Pebble(tmp_path / "pebble", http_port=stack.nginx.http_port, validity_seconds=20).start()
    try:
        certbot = Certbot(tmp_path / "certbot", short, stack.certbot.webroot,
                          nginx_conf=stack.certbot.nginx_conf, nginx_prefix=stack.certbot.nginx_prefix,
                          metrics_dir=tmp_path / "metrics")
        issued = certbot.run("issue", "-d", NAME, "-m", "ops@example.test",
                             "--key-type", "rsa", "--profile", "shortlived")
        assert issued.returncode == 0, output(issued)
        renewal_conf = (certbot.config_dir / "renewal" / f"{NAME}.conf").read_text()
        assert "preferred_profile = shortlived" in renewal_conf  # kept for every renewal
        assert "key_type = rsa" in renewal_conf
        assert "renew_before_expiry" not in renewal_conf  # no fixed "30 days before"
        cert = certbot.config_dir / "live" / NAME / "cert.pem"
        text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(cert)],
                              capture_output=True, text=True, check=True).stdout
        assert "rsaEncryption" in text

        # An operator's absolute threshold ("alert below 7 days") flags it ...
        check = certbot.run("expiry-check", "--min-days", "7")
        assert check.returncode == 1, output(check)
        assert f"EXPIRING {NAME}: 0.00 days left" in check.stderr
        metrics = (tmp_path / "metrics" / "tls_certificates.prom").read_text()
        assert re.search(rf'tls_certificate_expiry_ok{{name="{NAME}",path="{cert}"}} 0', metrics)
        left = int(re.search(r"tls_certificate_expiry_seconds\{[^}]*\} (-?\d+)", metrics)[1])
        assert 0 < left <= 20
        # ... the default (renewal overdue, or failed) does not while it is fresh.
        check = certbot.run("expiry-check")
        assert check.returncode == 0, output(check)
        assert "tls_certificate_expiry_threshold_seconds" in (tmp_path / "metrics" / "tls_certificates.prom").read_text()

        # The long-lived certificate nginx serves is fine, with an absolute threshold too.
        assert stack.certbot.run("expiry-check").returncode == 0
        assert stack.certbot.run("expiry-check", "--min-days", "89").returncode == 0
        assert stack.certbot.run("expiry-check", "--min-days", "91").returncode == 1

        # Renewal timing follows the lifetime (pebble 2.4 has no ARI): a fixed
        # "30 days before expiry" would renew now; certbot waits for half of
        # a short certificate's lifetime.
        serial = certificate_serial(cert)
        early = certbot.renew()
        assert "not yet due" in early.stdout + early.stderr, output(early)
        assert certificate_serial(cert) == serial
        time.sleep(max(0, 11 - (time.time() - cert.stat().st_mtime)))
        due = certbot.renew()
        assert due.returncode == 0, output(due)
        assert certificate_serial(cert) != serial
        assert certbot.run("expiry-check").returncode == 0
        assert "certbot_renew_success 1" in (tmp_path / "metrics" / "certbot_renew.prom").read_text()
    finally:
        short.stop()


def test_expiry_check_follows_the_cas_renewal_window(stack):
    """Renewal is due at the end of the CA's ARI window where the CA offers ARI
    (pebble >= 2.6), else by certbot's lifetime rule (Debian's pebble 2.4)."""
    stack.ensure_issued()
    cert = stack.certbot.config_dir / "live" / NAME / "cert.pem"
    first = stack.certbot.renew()  # nothing due; certbot now waits 6 h before asking for ARI again
    assert first.returncode == 0, output(first)
    check = stack.certbot.run("expiry-check")
    assert check.returncode == 0, output(check)
    if "renewalInfo" not in stack.pebble.acme_directory():
        assert "(certbot's lifetime rule; the CA offers no ARI)" in check.stdout, output(check)
        return

    # pebble's window: 2/3 of the lifetime +- 24 h, so it ends 6 days after
    # certbot's lifetime rule would have renewed (60 days into 90).
    assert "(end of the CA's ARI window)" in check.stdout, output(check)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    metrics = (stack.certbot.metrics_dir / "tls_certificates.prom").read_text()
    due = float(re.search(r"tls_certificate_renewal_due_timestamp_seconds\{[^}]*\} (\S+)", metrics)[1])
    window_end = parsed.not_valid_after_utc.timestamp() + 1 - PROFILES["classic"] / 3 + DAY
    assert abs(due - window_end) < 2
    assert "certbot asks the CA for ARI again after" in check.stdout

    # The CA moves the window into the past (as before a mass revocation):
    # expiry-check, asking the CA itself, sees it at once ...
    now = time.time()
    stack.pebble.set_renewal_window(cert.read_text(), now - 6 * DAY, now - 5 * DAY)
    overdue = stack.certbot.run("expiry-check")
    assert overdue.returncode == 1 and f"OVERDUE  {NAME}" in overdue.stderr, output(overdue)
    # ... certbot not before its stored ari_retry_after: this run keeps the certificate.
    serial = stack.live_serial()
    waiting = stack.certbot.renew()
    assert waiting.returncode == 1 and stack.live_serial() == serial, output(waiting)
    assert "certbot asks the CA for ARI again after" in waiting.stderr
    # The runbook's answer: renew now.
    forced = stack.certbot.renew("--force-renewal")
    assert forced.returncode == 0, output(forced)
    assert stack.live_serial() != serial
    stack.wait_served(stack.live_serial())


def test_settings_come_from_the_env_file_and_the_environment_wins(stack, tmp_path):
    stack.ensure_issued()
    env_file = tmp_path / "deploy.env"
    env_file.write_text(f'# as in deploy.env.example\nCERTBOT_CONFIG_DIR="{stack.certbot.config_dir}"\n'
                        f"CERTBOT_VENV={CERTBOT_VENV}\n"
                        f"CERT_MIN_DAYS=91\nMETRICS_DIR={tmp_path}/metrics\nSECRET_KEY=not-ours\n")
    env = {"PATH": "/usr/bin:/bin", "LETSENCRYPT_ENV_FILE": str(env_file)}
    check = subprocess.run([str(LETSENCRYPT / "expiry-check")], env=env, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 1 and f"EXPIRING {NAME}" in check.stderr, output(check)
    assert (tmp_path / "metrics" / "tls_certificates.prom").exists()
    check = subprocess.run([str(LETSENCRYPT / "expiry-check")], env={**env, "CERT_MIN_DAYS": "30"},
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, output(check)


def test_timer_and_cron_run_the_same_renew_command(tmp_path):
    analyze = require_binary("systemd-analyze", "systemd")
    renew = LETSENCRYPT / "renew"
    for kind in ([], ["--cron"]):
        result = subprocess.run([str(LETSENCRYPT / "install-schedule"), *kind, "--dest", str(tmp_path)],
                                check=False, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, output(result)
    service = (tmp_path / "letsencrypt-renew.service").read_text()
    timer = (tmp_path / "letsencrypt-renew.timer").read_text()
    verify = subprocess.run([analyze, "verify", str(tmp_path / "letsencrypt-renew.service"),
                             str(tmp_path / "letsencrypt-renew.timer")],
                            check=False, capture_output=True, text=True, cwd=tmp_path)
    assert verify.returncode == 0 and not verify.stderr.strip(), output(verify)
    assert re.search(rf"^ExecStart={re.escape(str(renew))}$", service, re.MULTILINE)
    assert "Type=oneshot" in service
    assert "RandomizedDelaySec=12h" in timer and "Persistent=true" in timer
    calendar = re.search(r"^OnCalendar=(.+)$", timer, re.MULTILINE)[1]
    shown = subprocess.run([analyze, "calendar", "--iterations", "3", calendar],
                           check=False, capture_output=True, text=True)
    assert shown.returncode == 0, output(shown)
    assert len(re.findall(r"\b(00|12):00:00\b", shown.stdout)) >= 3  # twice a day

    cron = (tmp_path / "letsencrypt-renew").read_text()
    jobs = [line for line in cron.splitlines() if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 1
    minute, hour, dom, month, dow, user, command = jobs[0].split(None, 6)
    assert (minute, hour, dom, month, dow, user) == ("0", "0,12", "*", "*", "*", "root")
    assert f"out=$({renew} 2>&1)" in command
    # The tests above run exactly this file; a cron line must be valid shell.
    assert subprocess.run(["bash", "-n", "-c", command], check=False).returncode == 0


def test_install_schedule_refuses_a_path_a_unit_file_cannot_take(tmp_path):
    """A path with a space would split in ExecStart=, Environment= and the
    cron line: one line naming it, and nothing written."""
    spaced = tmp_path / "my dir" / "deploy.env"
    result = subprocess.run([str(LETSENCRYPT / "install-schedule"), "--dest", str(tmp_path / "out")],
                            check=False, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "LETSENCRYPT_ENV_FILE": str(spaced)})
    assert result.returncode == 2, output(result)
    assert f"{spaced}: paths here may not contain whitespace" in result.stderr
    assert not (tmp_path / "out").exists()
