"""The decision behind ./expiry-check: is a certificate past the point where
renewal should have happened, or did the last renewal fail?

Run by certbot's own virtualenv (cryptography and requests, the libraries
certbot uses). "Should have happened" is what certbot 5.8 itself renews by
(certbot/_internal/renewal.py, should_autorenew):
- the end of the CA's ARI window (RFC 9773) when the CA offers ARI: asked from
  the CA here, as certbot stores no window (only `ari_retry_after`);
- otherwise certbot's lifetime rule: renew once 2/3 of the lifetime has
  passed, 1/2 for certificates shorter than 10 days (80 h of a 160 h one).
A certificate still not renewed a margin later is OVERDUE. The margin is at
least certbot's 6 h ARI poll interval: after asking the CA, certbot does not
ask again for 6 h (the CA's Retry-After), so a window that ends in between is
acted on up to 6 h late by a healthy host; longer lifetimes get 1/20 of the
lifetime (4.5 days of 90) so a check by hand between two timer runs stays quiet.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

ARI_POLL = timedelta(hours=6)  # acme's default Retry-After for renewalInfo
SHORT_LIFETIME = timedelta(days=10)  # certbot: below this, renew at half the lifetime
LAST_RENEWAL_FILE = "last-renewal"  # in CERTBOT_WORK_DIR, written by ./renew


def certbot_renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """certbot's default renewal time (renewal.py, _default_renewal_time)."""
    lifetime = not_after - not_before
    if lifetime < SHORT_LIFETIME:
        return not_before + lifetime / 2
    return not_before + lifetime * 2 / 3


def renewal_margin(lifetime: timedelta) -> timedelta:
    """How long past the renewal time a healthy host may still hold the old certificate."""
    return max(ARI_POLL, lifetime / 20)


def ari_cert_id(cert: x509.Certificate) -> str:
    """The certificate's ARI identifier: base64url(AKI keyIdentifier) "." base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big", signed=True)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{b64(aki)}.{b64(serial)}"


def ari_window_end(server: str, cert: x509.Certificate, timeout: float = 10) -> datetime | None:
    """The end of the CA's suggested renewal window; None when the CA has no ARI."""
    import requests  # certbot's venv has it; only needed when a CA is asked

    directory = requests.get(server, timeout=timeout)
    directory.raise_for_status()
    base = directory.json().get("renewalInfo")
    if not base:
        return None
    info = requests.get(f"{base}/{ari_cert_id(cert)}", timeout=timeout)
    info.raise_for_status()
    return datetime.fromisoformat(info.json()["suggestedWindow"]["end"])


@dataclass
class Lineage:
    """What certbot keeps about a certificate it manages (renewal/NAME.conf)."""

    server: str | None
    ari_retry_after: datetime | None

    @classmethod
    def read(cls, conf: Path) -> Lineage:
        server = retry = None
        section = ""
        for line in conf.read_text().splitlines():
            if match := re.match(r"\s*\[+\s*([^\]]+?)\s*\]+\s*$", line):
                section = match[1]
            elif match := re.match(r"\s*(\w+)\s*=\s*(.*?)\s*$", line):
                key, value = match[1], match[2]
                if key == "server" and section == "renewalparams":
                    server = value
                elif key == "ari_retry_after" and section == "acme_renewal_info":
                    # certbot writes a naive local time (acme's datetime.now()).
                    retry = datetime.fromisoformat(value).astimezone(UTC)
        return cls(server, retry)


@dataclass
class LastRenewal:
    """The outcome of the last ./renew run (certbot renew and the deploy hook)."""

    failed: bool
    finished: datetime
    detail: str

    @classmethod
    def read(cls, path: Path) -> LastRenewal | None:
        if not path.is_file():
            return None
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return cls(fields.get("result") != "ok",
                   datetime.fromtimestamp(int(fields.get("finished", "0")), UTC),
                   fields.get("detail", ""))


@dataclass
class Status:
    name: str
    path: str
    state: str  # ok, EXPIRED, OVERDUE, EXPIRING (--min-days), RENEWAL-FAILED
    not_after: datetime
    lifetime: timedelta
    left: timedelta
    renew_by: datetime  # when renewal should have happened (or --min-days' point)
    alert_at: datetime
    message: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def assess(cert: x509.Certificate, now: datetime, *, name: str, path: str,
           min_days: float | None = None, ari_end: datetime | None = None,
           ari_note: str = "", lineage: Lineage | None = None,
           last_renewal: LastRenewal | None = None) -> Status:
    """The verdict for one certificate at `now` (pure: every input given)."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime, left = not_after - not_before, not_after - now
    if min_days is not None:
        renew_by = alert_at = not_after - timedelta(days=min_days)
        basis = f"alert below {min_days:g} days left (--min-days)"
    else:
        if ari_end is not None:
            renew_by, source = ari_end, "end of the CA's ARI window"
        else:
            renew_by, source = certbot_renewal_time(not_before, not_after), "certbot's lifetime rule"
        alert_at = min(renew_by + renewal_margin(lifetime), not_after)
        basis = f"renewal due by {when(renew_by)} ({source}{ari_note}), alert from {when(alert_at)}"
    if ari_end and lineage and lineage.ari_retry_after and lineage.ari_retry_after > now:
        basis += f"; certbot asks the CA for ARI again after {when(lineage.ari_retry_after)}"

    if left <= timedelta(0):
        state = "EXPIRED"
    elif last_renewal and last_renewal.failed:
        state = "RENEWAL-FAILED"
        basis += f"; the last renewal run ({when(last_renewal.finished)}) failed: {last_renewal.detail}"
    elif now >= alert_at:
        state = "EXPIRING" if min_days is not None else "OVERDUE"
    else:
        state = "ok"
    message = (f"{state:<8} {name}: {left.total_seconds() / 86400:.2f} days left "
               f"({left.total_seconds() / 3600:.1f} h of {lifetime.total_seconds() / 3600:.0f} h; "
               f"expires {when(not_after)}); {basis}")
    return Status(name, path, state, not_after, lifetime, left, renew_by, alert_at, message)


def check(path: Path, now: datetime, config_dir: Path, work_dir: Path,
          min_days: float | None) -> Status:
    """assess() with what certbot keeps and, for its certificates, the CA's ARI window."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    name = path.parent.name
    conf = config_dir / "renewal" / f"{name}.conf"
    managed = path.parent.parent == config_dir / "live" and conf.is_file()
    lineage = Lineage.read(conf) if managed else None
    ari_end, ari_note = None, ""
    if lineage and lineage.server and min_days is None:
        try:
            ari_end = ari_window_end(lineage.server, cert)
            ari_note = "" if ari_end else "; the CA offers no ARI"
        except Exception as exc:  # noqa: BLE001 - certbot too falls back to its lifetime rule
            ari_note = f"; ARI unavailable: {type(exc).__name__}: {exc}"
    last = LastRenewal.read(work_dir / LAST_RENEWAL_FILE) if managed else None
    return assess(cert, now, name=name, path=str(path), min_days=min_days, ari_end=ari_end,
                  ari_note=ari_note, lineage=lineage, last_renewal=last)


METRICS = (
    ("expiry_seconds", "Seconds until the certificate expires (negative once expired).",
     lambda s: s.left.total_seconds()),
    ("not_after_timestamp_seconds", "When the certificate expires.",
     lambda s: s.not_after.timestamp()),
    ("lifetime_seconds", "notAfter - notBefore.", lambda s: s.lifetime.total_seconds()),
    ("renewal_due_timestamp_seconds",
     "When renewal should have happened (ARI window end, else certbot's lifetime rule).",
     lambda s: s.renew_by.timestamp()),
    ("expiry_threshold_seconds", "Seconds left below which the check alerts.",
     lambda s: (s.not_after - s.alert_at).total_seconds()),
    ("expiry_ok", "1 unless expired, overdue for renewal or the last renewal failed.",
     lambda s: int(s.ok)),
)


def write_metrics(directory: Path, statuses: list[Status], now: datetime) -> None:
    """node_exporter's textfile collector format, replaced atomically."""
    lines = []
    for metric, help_text, value in METRICS:
        lines += [f"# HELP tls_certificate_{metric} {help_text}",
                  f"# TYPE tls_certificate_{metric} gauge"]
        lines += [f'tls_certificate_{metric}{{name="{s.name}",path="{s.path}"}} {value(s):.0f}'
                  for s in statuses]
    lines += ["# HELP tls_certificate_check_timestamp_seconds When the expiry check last ran.",
              "# TYPE tls_certificate_check_timestamp_seconds gauge",
              f"tls_certificate_check_timestamp_seconds {now.timestamp():.0f}"]
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "tls_certificates.prom"
    tmp = out.with_name(f"{out.name}.{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)  # the collector never reads half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--min-days", type=float)
    parser.add_argument("--metrics-dir", type=Path)
    parser.add_argument("certs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    now = datetime.now(UTC)
    statuses, status = [], 0
    for path in args.certs:
        try:
            statuses.append(result := check(path, now, args.config_dir, args.work_dir, args.min_days))
        except (OSError, ValueError) as exc:
            print(f"ERROR {path}: cannot read the certificate: {exc}")
            status = 1
            continue
        print(f"{'ok' if result.ok else 'ERROR'} {result.message}")
        status |= not result.ok
    if args.metrics_dir:
        write_metrics(args.metrics_dir, statuses, now)
    return status


if __name__ == "__main__":
    sys.exit(main())
