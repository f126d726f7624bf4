"""A throwaway certificate authority for tests, made by deploy/nginx/local-ca.

    ca = LocalCA(tmp_path / "ca")
    cert, key = ca.issue("app.test", "www.app.test")            # ECDSA P-256
    cert, key = ca.issue("app.test", key_type="rsa")            # RSA 2048
    ca.cert_path                                                 # trust this
    ca.client_context(alpn=["h2", "http/1.1"])                   # ssl.SSLContext

The same script makes the local stack's CA (scripts/stack), so the tests
exercise what developers trust in their browsers.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from tests.support.processes import ROOT, require_binary

LOCAL_CA = ROOT / "deploy" / "nginx" / "local-ca"


class LocalCA:
    def __init__(self, directory: Path):
        require_binary("openssl", "openssl")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._issued = 0

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    def issue(self, *names: str, key_type: str = "ec", days: int = 90) -> tuple[Path, Path]:
        """A server certificate for names; returns (certificate, key) paths."""
        self._issued += 1
        stem = f"{names[0]}-{key_type}-{self._issued}"
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        options = ["--rsa"] if key_type == "rsa" else []
        subprocess.run(
            [str(LOCAL_CA), *options, "--days", str(days), str(self.directory), str(cert),
             str(key), *names],
            check=True, capture_output=True, text=True,
        )
        return cert, key

    def client_context(self, alpn: list[str] | None = None, **versions) -> ssl.SSLContext:
        """A client context trusting only this CA (minimum_version=..., maximum_version=...)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        for name, value in versions.items():
            setattr(context, name, value)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context
