"""deploy/letsencrypt/expiry-check's decision on certificates of chosen
lifetimes and ages (made here with notBefore/notAfter in the past), run as
the real script with certbot's virtualenv against a real pebble as the CA
of record; the pure parts (ARI windows, which pebble 2.4 cannot serve, and the
pebble harness's version-dependent flags) in process."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.support.pebble import (
    LETSENCRYPT,
    Certbot,
    Pebble,
    challtestsrv_args,
    ensure_certbot,
    flags,
    help_text,
)
from tests.support.processes import free_port

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
SHORTLIVED = 160 * HOUR  # Let's Encrypt's shortlived profile

spec = importlib.util.spec_from_file_location("certstatus", LETSENCRYPT / "certstatus.py")
certstatus = sys.modules["certstatus"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(certstatus)


def make_cert(not_before: datetime, not_after: datetime, serial: int | None = None,
              aki: bytes | None = None) -> x509.Certificate:
    issuer_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.test")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")]))
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.AuthorityKeyIdentifier(aki or ski.digest, None, None), critical=False)
            .sign(issuer_key, hashes.SHA256()))


def aged(lifetime: timedelta, age: timedelta, now: datetime | None = None) -> x509.Certificate:
    not_before = (now or datetime.now(UTC)) - age
    return make_cert(not_before, not_before + lifetime)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """The CA of record in the renewal files: Debian's pebble 2.4 has no ARI,
    so expiry-check asks it and falls back to certbot's lifetime rule."""
    ensure_certbot(tmp_path_factory.mktemp("certbot-setup"))
    pebble = Pebble(tmp_path_factory.mktemp("pebble"), http_port=free_port()).start()
    try:
        yield pebble
    finally:
        pebble.stop()


@pytest.fixture
def certbot(ca, tmp_path):
    return Certbot(tmp_path / "certbot", ca, tmp_path / "webroot", metrics_dir=tmp_path / "metrics")


def add_lineage(certbot: Certbot, name: str, cert: x509.Certificate) -> Path:
    """A certificate as certbot keeps it: live/NAME/cert.pem and renewal/NAME.conf."""
    live = certbot.config_dir / "live" / name
    live.mkdir(parents=True)
    (live / "cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    renewal = certbot.config_dir / "renewal"
    renewal.mkdir(exist_ok=True)
    (renewal / f"{name}.conf").write_text(
        f"version = 5.8.0\ncert = {live}/cert.pem\n\n[renewalparams]\n"
        f"authenticator = webroot\nserver = {certbot.pebble.directory_url}\n")
    return live / "cert.pem"


def states(stdout: str, stderr: str) -> dict[str, str]:
    lines = re.findall(r"^letsencrypt: (?:error: )?(\S+)\s+([\w.-]+): ", stdout + stderr, re.MULTILINE)
    return {name: state for state, name in lines}


# (name, lifetime, age, state). Renewal is due at 1/2 of a lifetime below 10
# days, else at 2/3; the alert comes max(6 h, lifetime / 20) later.
CASES = [
    ("short-fresh", SHORTLIVED, 10 * HOUR, "ok"),
    ("short-due", SHORTLIVED, 81 * HOUR, "ok"),           # due at 80 h, renewed at the next run
    ("short-margin", SHORTLIVED, 87 * HOUR, "ok"),        # margin 8 h: alert from 88 h
    ("short-overdue", SHORTLIVED, 89 * HOUR, "OVERDUE"),  # 71 h left
    ("short-expired", SHORTLIVED, 161 * HOUR, "EXPIRED"),
    ("tiny-margin", 4 * HOUR, 3 * HOUR, "ok"),            # 6 h margin reaches past expiry
    ("tls-ok", 45 * DAY, 32 * DAY, "ok"),                 # due 30 d, alert from 32.25 d
    ("tls-overdue", 45 * DAY, 33 * DAY, "OVERDUE"),
    ("classic-ok", 90 * DAY, 64 * DAY, "ok"),             # due 60 d, alert from 64.5 d
    ("classic-overdue", 90 * DAY, 65 * DAY, "OVERDUE"),
]


def test_alerts_only_past_the_renewal_point_by_a_margin(certbot):
    for name, lifetime, age, _ in CASES:
        add_lineage(certbot, name, aged(lifetime, age))
    result = certbot.run("expiry-check")
    assert result.returncode == 1, result.stdout + result.stderr  # some are overdue
    assert states(result.stdout, result.stderr) == {name: state for name, *_, state in CASES}
    # Each verdict names its basis: certbot's rule, as pebble 2.4 has no ARI
    # (and pebble >= 2.6 has none for certificates it did not issue).
    line = next(line for line in result.stderr.splitlines() if "short-overdue" in line)
    if "renewalInfo" in certbot.pebble.acme_directory():
        assert "certbot's lifetime rule; ARI unavailable: HTTPError: 400" in line  # unknown issuer
    else:
        assert "certbot's lifetime rule; the CA offers no ARI" in line
    assert "OVERDUE  short-overdue: 2.96 days left (71.0 h of 160 h" in line
    assert "see deploy/letsencrypt/README.md" in line

    metrics = (certbot.metrics_dir / "tls_certificates.prom").read_text()

    def metric(name: str, lineage: str) -> float:
        return float(re.search(rf'^tls_certificate_{name}{{name="{lineage}",[^}}]*}} (\S+)$',
                               metrics, re.MULTILINE)[1])

    for name, *_, state in CASES:
        assert metric("expiry_ok", name) == (state == "ok"), name
    assert metric("lifetime_seconds", "short-fresh") == SHORTLIVED.total_seconds()
    # The alert threshold of a 160 h certificate: 72 h left (not 1/5, 32 h).
    assert metric("expiry_threshold_seconds", "short-fresh") == 72 * 3600
    assert metric("expiry_threshold_seconds", "classic-ok") == 25.5 * 86400
    due = metric("renewal_due_timestamp_seconds", "short-fresh")
    not_after = metric("not_after_timestamp_seconds", "short-fresh")
    assert not_after - due == 80 * 3600


def test_only_healthy_certificates_pass(certbot):
    for name, lifetime, age, state in CASES:
        if state == "ok":
            add_lineage(certbot, name, aged(lifetime, age))
    result = certbot.run("expiry-check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(states(result.stdout, result.stderr).values()) == {"ok"}


def test_a_failed_last_renewal_alerts_until_a_run_succeeds(certbot):
    add_lineage(certbot, "app.test", aged(SHORTLIVED, 1 * HOUR))
    (certbot.directory / "work").mkdir(parents=True)
    record = certbot.directory / "work" / "last-renewal"
    record.write_text("result=failed\nfinished=1795000000\ndetail=deploy hook failed: nginx -t\n")
    failed = certbot.run("expiry-check")
    assert failed.returncode == 1
    assert "RENEWAL-FAILED app.test" in failed.stderr
    assert "the last renewal run (2026-11-18 " in failed.stderr and "deploy hook failed: nginx -t" in failed.stderr

    def expiry_ok() -> float:  # the value deploy/prometheus/alerts.yml alerts on (== 0)
        metrics = (certbot.metrics_dir / "tls_certificates.prom").read_text()
        found = re.findall(r'^tls_certificate_expiry_ok\{name="app\.test",[^}]*\} (\S+)$',
                           metrics, re.MULTILINE)
        assert len(found) == 1, metrics
        return float(found[0])

    assert expiry_ok() == 0
    record.write_text("result=ok\nfinished=1795000000\n")
    assert certbot.run("expiry-check").returncode == 0
    assert expiry_ok() == 1
    # A certificate certbot does not manage is judged by its dates alone.
    record.write_text("result=failed\nfinished=1795000000\n")
    other = certbot.directory / "other.pem"
    other.write_bytes((certbot.config_dir / "live" / "app.test" / "cert.pem").read_bytes())
    assert certbot.run("expiry-check", str(other)).returncode == 0


def test_min_days_replaces_the_rule_with_a_fixed_threshold(certbot):
    add_lineage(certbot, "app.test", aged(SHORTLIVED, 10 * HOUR))  # 150 h left
    assert certbot.run("expiry-check", "--min-days", "6").returncode == 0
    result = certbot.run("expiry-check", "--min-days", "7")
    assert result.returncode == 1
    assert "EXPIRING app.test: 6.25 days left" in result.stderr
    assert "alert below 7 days left (--min-days)" in result.stderr


# Pure decisions: an ARI window, which Debian's pebble 2.4 cannot serve.

def test_a_late_ari_window_is_not_an_alert_until_it_is_overdue():
    now = datetime.now(UTC)
    cert = aged(SHORTLIVED, 0 * HOUR, now)
    not_after = cert.not_valid_after_utc
    ari_end = not_after - timedelta(hours=29.3)  # pebble's window for a 160 h certificate

    def state(at: datetime, **kw) -> str:
        return certstatus.assess(cert, at, name="n", path="p", **kw).state

    # 31 h left: below the old "1/5 of the lifetime" (32 h), but the CA's
    # window is still open: certbot rightly has not renewed yet.
    assert state(not_after - 31 * HOUR, ari_end=ari_end) == "ok"
    assert state(ari_end + 7 * HOUR, ari_end=ari_end) == "ok"  # margin 8 h
    assert state(ari_end + 9 * HOUR, ari_end=ari_end) == "OVERDUE"
    # Without ARI, certbot's rule (due at 80 h left) decides.
    assert state(not_after - 73 * HOUR) == "ok"
    assert state(not_after - 71 * HOUR) == "OVERDUE"
    # A window the CA moved earlier (before a revocation) makes it overdue sooner.
    assert state(now + 10 * HOUR, ari_end=now + HOUR) == "OVERDUE"
    failed = certstatus.LastRenewal(True, now, "certbot renew failed")
    assert state(now + HOUR, ari_end=ari_end, last_renewal=failed) == "RENEWAL-FAILED"


def test_ari_id_and_renewal_file_as_certbot_writes_them(tmp_path):
    # RFC 9773, section 4.1's example: keyIdentifier 69:88:5B:6B:..., serial 0x0087654321.
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = make_cert(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC),
                     serial=0x87654321, aki=aki)
    assert certstatus.ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"

    conf = tmp_path / "app.test.conf"
    conf.write_text("version = 5.8.0\nserver = https://wrong.example/\n[renewalparams]\n"
                    "server = https://127.0.0.1:14000/dir\npreferred_profile = shortlived\n"
                    "[acme_renewal_info]\nari_retry_after = 2026-11-29T10:30:00\n")
    lineage = certstatus.Lineage.read(conf)
    assert lineage.server == "https://127.0.0.1:14000/dir"
    # certbot stores a naive local time: read as local, compared in UTC.
    assert lineage.ari_retry_after == datetime(2026, 11, 29, 10, 30).astimezone(UTC)


# The pebble harness: flags chosen from the binary's own flag list.

PEBBLE_2_4_HELP = """Usage of pebble-challtestsrv:
  -defaultIPv4 string
    \tDefault IPv4 address for mock DNS responses to A queries (default "127.0.0.1")
  -dns01 string
    \tComma separated bind addresses/ports for DNS-01 challenges and fake DNS data. (default ":8053")
  -http01 string
    \tComma separated bind addresses/ports for HTTP-01 challenges. (default ":5002")
  -management string
    \tBind address/port for management HTTP interface (default ":8055")
"""
PEBBLE_2_10_HELP = """Usage of pebble-challtestsrv:
  -defaultIPv6 string
    \tDefault IPv6 address for DNS responses to AAAA queries (default "::1")
  -dnsserver string
    \tComma separated bind addresses/ports for serving DNS queries. (default ":8053")
  -doh string
    \tComma separated bind addresses/ports for DoH queries. Set empty to disable. (default ":8443")
  -doh-cert string
    \tPath to certificate file for DoH server.
"""


def test_challtestsrv_flags_follow_the_binary():
    old = challtestsrv_args(PEBBLE_2_4_HELP, dns="127.0.0.1:1", management="127.0.0.1:2")
    assert old[:2] == ["-dns01", "127.0.0.1:1"] and "-doh" not in old and "-dnsserver" not in old
    new = challtestsrv_args(PEBBLE_2_10_HELP, dns="127.0.0.1:1", management="127.0.0.1:2")
    assert new[:2] == ["-dnsserver", "127.0.0.1:1"] and "-dns01" not in new
    assert new[new.index("-doh") + 1] == ""  # no DNS-over-HTTPS listener on :8443
    assert "-defaultIPv6" in new and new[new.index("-defaultIPv6") + 1] == ""
    with pytest.raises(AssertionError, match="neither -dnsserver nor -dns01"):
        challtestsrv_args("Usage:\n  -management string\n", dns="a", management="b")


def test_challtestsrv_flags_exist_in_the_installed_binary(tmp_path):
    """Debian's 2.4 in CI; whatever pebble-challtestsrv is first on PATH locally."""
    binary = Pebble(tmp_path, http_port=1).challtestsrv
    text = help_text(binary)
    args = challtestsrv_args(text, dns="127.0.0.1:1", management="127.0.0.1:2")
    assert {a.lstrip("-") for a in args if a.startswith("-")} <= flags(text)



def test_the_placeholder_certificate_takes_long_host_names(tmp_path):
    """A common name holds at most 64 characters; the placeholder's used to add
    41 to the first host name, so any name of 24 or more failed (silently)."""
    long_name = "service." + "a" * 50 + ".example.com"
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    done = subprocess.run(
        [str(LETSENCRYPT / "placeholder-cert"), long_name, "www.example.com"],
        env={"PATH": os.environ["PATH"], "LETSENCRYPT_ENV_FILE": str(tmp_path / "none.env"),
             "TLS_CERT": str(cert), "TLS_KEY": str(key)},
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [long_name, "www.example.com"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
