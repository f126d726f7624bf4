# Shared by scripts/run and scripts/test: install what is missing, idempotently.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_commands CMD:PACKAGE ... installs the Debian packages of missing commands.
ensure_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}"
}

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      die "missing system packages; install them with:
    sudo apt-get update && sudo apt-get install -y $*"
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get here; install these packages: $*"
  say "installing system packages: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_venv REQUIREMENTS_FILE: create the virtualenv and install into it
# when the requirements changed since the last install.
ensure_venv() {
  local requirements=$1 stamp="$VENV/.installed" digest
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    ensure_commands "$PYTHON:python3" || true
    apt_install python3-venv
  fi
  [ -x "$VENV/bin/python" ] || { say "creating virtualenv $VENV"; "$PYTHON" -m venv "$VENV"; }
  digest=$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)-$(basename "$requirements")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    say "installing Python packages from $(basename "$requirements")"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$digest" >"$stamp"
  fi
}

# dotenv_value NAME: the value of NAME in .env (not exported wholesale, so
# empty lines do not override gunicorn's own defaults).
dotenv_value() {
  [ -f "$ROOT/.env" ] || return 0
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ROOT/.env" | tail -n1 | sed 's/^["'\'']//; s/["'\'']$//'
}
