"""The systemd unit for gunicorn parses cleanly (systemd-analyze verify)."""

import subprocess

from tests.support.processes import ROOT, VENV_BIN, require_binary

UNIT = ROOT / "deploy" / "systemd" / "flask-service.service"


def test_gunicorn_unit_verifies_without_warnings(tmp_path):
    analyze = require_binary("systemd-analyze", "systemd")
    # verify checks that ExecStart(Pre) exists: point it at this checkout's venv.
    text = UNIT.read_text()
    assert "ExecStart=/srv/flask-service/venv/bin/python -m service serve wsgi:app" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/srv/flask-service/venv/bin/", f"{VENV_BIN}/"))
    result = subprocess.run([analyze, "verify", str(unit)], check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Unknown or malformed settings are only warnings (exit 0): none allowed.
    assert result.stdout + result.stderr == ""
    for setting in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                    "RuntimeDirectory=flask-service", "ExecReload=/bin/kill -s HUP $MAINPID",
                    "ExecStartPre=/srv/flask-service/venv/bin/python -m service check --quiet",
                    "ExecReload=/srv/flask-service/venv/bin/python -m service check --quiet"):
        assert setting in text
