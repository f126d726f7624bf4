"""Every command under scripts/ and deploy/ is safe to poke: -h/--help prints its
usage and exits 0, an unknown option prints the usage and exits 2, and neither
creates, changes or deletes a file (deploy/usage.sh).

Each command runs with every path setting pointed into a scratch root, so a
command that went ahead anyway would write there; the system's own paths and
the repository tree are compared before and after too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

# Executables found by their #! line, plus the renderer module's command line.
COMMANDS = sorted(
    str(path.relative_to(ROOT)) for top in ("scripts", "deploy") for path in (ROOT / top).rglob("*")
    if path.is_file() and path.read_bytes()[:2] == b"#!"
) + ["deploy/render_template.py"]

# scripts/test passes every other argument to pytest, which owns those options.
OPTIONS_ARE_PYTESTS = {"scripts/test"}

SYSTEM_PATHS = ["/etc/letsencrypt", "/opt/certbot", "/var/lib/letsencrypt", "/var/log/letsencrypt",
                "/var/www/acme", "/etc/ssl/flask-service", "/etc/cron.d", "/etc/systemd/system",
                "/etc/nginx", "/var/lib/prometheus"]
SKIP_IN_REPO = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}


def snapshot(*tops) -> dict[str, tuple[int, int]]:
    """path -> (mtime_ns, size) of every file and directory under tops."""
    seen = {}
    for top in map(Path, tops):
        if not top.exists():
            continue
        for directory, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in SKIP_IN_REPO]
            for name in [*dirs, *files]:
                path = Path(directory, name)
                stat = path.lstat()
                seen[str(path)] = (stat.st_mtime_ns, stat.st_size)
            stat = Path(directory).lstat()
            seen[directory] = (stat.st_mtime_ns, stat.st_size)
    return seen


def scratch_env(root: Path) -> dict[str, str]:
    paths = {
        "HOME": "home", "STATE_DIR": "state", "DOTENV_PATH": "dotenv/.env", "VENV": "venv",
        "CERTBOT_VENV": "opt/certbot", "CERTBOT_CONFIG_DIR": "etc/letsencrypt",
        "CERTBOT_WORK_DIR": "var/lib/letsencrypt", "CERTBOT_LOGS_DIR": "var/log/letsencrypt",
        "ACME_WEBROOT": "var/www/acme", "TLS_CERT": "ssl/fullchain.pem", "TLS_KEY": "ssl/privkey.pem",
        "METRICS_DIR": "metrics", "LETSENCRYPT_ENV_FILE": "etc/letsencrypt/deploy.env",
        "NGINX_PREFIX": "nginx", "NGINX_CONF": "nginx/nginx.conf", "RENEWED_LINEAGE": "live/x",
    }
    env = {name: str(root / path) for name, path in paths.items()}
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **env}


def run(command: str, arg: str, root: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, command] if command.endswith(".py") else [str(ROOT / command)]
    return subprocess.run([*argv, arg], cwd=ROOT, env=scratch_env(root), capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def unchanged(tmp_path):
    """Asserts afterwards that nothing appeared, changed or vanished."""
    root = tmp_path / "root"
    root.mkdir()
    tops = [root, ROOT, *SYSTEM_PATHS]
    before = snapshot(*tops)
    yield root
    after = snapshot(*tops)
    assert sorted(set(after) - set(before)) == [], "created"
    assert sorted(set(before) - set(after)) == [], "deleted"
    assert sorted(p for p in before if p in after and before[p] != after[p]) == [], "changed"


def test_every_command_is_covered():
    assert "deploy/letsencrypt/setup" in COMMANDS and "scripts/run" in COMMANDS
    assert len(COMMANDS) >= 13, COMMANDS


@pytest.mark.parametrize("arg", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_usage_and_changes_nothing(command, arg, unchanged):
    result = run(command, arg, unchanged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(command).name in result.stdout, result.stdout  # the usage names the command
    assert result.stderr == ""


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in OPTIONS_ARE_PYTESTS])
def test_unknown_option_fails_with_usage_and_changes_nothing(command, unchanged):
    result = run(command, "--no-such-option", unchanged)
    assert result.returncode == 2, result.stdout + result.stderr
    assert Path(command).name in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) >= 2, result.stderr  # message and usage
