# Shared by scripts/run, scripts/test and scripts/stack: install what is
# missing (idempotently) and supervise the processes a script starts.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/deploy/usage.sh"
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
  local requirements=$1 stamp digest
  stamp="$VENV/.installed-$(basename "$requirements")"
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    ensure_commands "$PYTHON:python3" || true
    apt_install python3-venv
  fi
  [ -x "$VENV/bin/python" ] || { say "creating virtualenv $VENV"; "$PYTHON" -m venv "$VENV"; }
  digest=$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    say "installing Python packages from $(basename "$requirements")"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$digest" >"$stamp"
  fi
}

# ensure_node_modules DIR: npm ci in DIR when its package-lock.json changed.
# --ignore-scripts: install scripts may fetch from hosts other than the registry.
ensure_node_modules() {
  local dir=$1 stamp digest
  stamp="$dir/node_modules/.installed"
  digest=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    say "installing npm packages in ${dir#"$ROOT"/}"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --silent)
    echo "$digest" >"$stamp"
  fi
}

# The developer's .env (DOTENV_PATH moves it, as for service/config.py).
DOTENV=${DOTENV_PATH:-$ROOT/.env}

# dotenv_value NAME: the value of NAME in .env, read by python-dotenv's `dotenv`
# command from the virtualenv (ensure_venv first), so it means what it means to the
# app. Not exported wholesale, so empty lines do not override gunicorn's defaults.
dotenv_value() {
  [ -f "$DOTENV" ] || return 0
  local status=0
  "$VENV/bin/dotenv" -f "$DOTENV" get "$1" || status=$?
  # 1: the key is not there (or has no value), which is not an error.
  [ "$status" -le 1 ] || die "cannot read $DOTENV (python-dotenv exited $status)"
}

# ensure_dotenv: write .env from .env.example with a fresh SECRET_KEY, once.
ensure_dotenv() {
  [ ! -f "$DOTENV" ] || return 0
  local secret
  secret=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')
  # umask first: the secret is never readable by others, not even briefly.
  (umask 077 && sed "s|^SECRET_KEY=.*|SECRET_KEY=$secret|" "$ROOT/.env.example" >"$DOTENV")
  say "wrote $DOTENV with a new SECRET_KEY"
}

# Child processes: `spawn CMD...` starts one in the background; after
# `supervise_children`, all of them get TERM when the script exits, Ctrl-C
# included (background jobs of a script ignore SIGINT, so they need it).
CHILD_PIDS=()
spawn() {
  # setsid: Ctrl-C reaches only the script, which then stops every child
  # gracefully with TERM (a gevent worker hit by SIGINT dies noisily).
  setsid "$@" &
  CHILD_PIDS+=($!)
}
stop_children() {
  trap - EXIT INT TERM
  [ ${#CHILD_PIDS[@]} -gt 0 ] || return 0
  kill -TERM "${CHILD_PIDS[@]}" 2>/dev/null || true
  wait "${CHILD_PIDS[@]}" 2>/dev/null || true
  say "stopped"
}
supervise_children() {
  trap stop_children EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
# wait_any_child: return when the first child ends (its status), or on Ctrl-C.
wait_any_child() {
  local status=0
  wait -n "${CHILD_PIDS[@]}" || status=$?
  return "$status"
}

# start_private_redis DIR: a redis-server reachable only through DIR/redis.sock
# (no TCP port, socket mode 700), with the service's settings
# (deploy/redis/service.conf: AOF, fsync every second, noeviction) and its AOF in DIR;
# exports REDIS_URL. scripts/run and scripts/stack use the same DIR, so they
# share the data; when the other one already runs it, it is shared, not
# started twice (two servers must never write one AOF), and it stops with
# the script that started it.
start_private_redis() {
  local dir=$1 lock
  mkdir -p "$dir"
  chmod 700 "$dir"
  export REDIS_URL="unix://$dir/redis.sock"
  exec {lock}>"$dir/start.lock"
  flock "$lock"  # one script at a time past this point
  if [ -S "$dir/redis.sock" ] && redis_answers "$dir/redis.sock"; then
    say "sharing the private Redis at $REDIS_URL (it stops with the script that started it)"
  else
    rm -f "$dir/redis.sock"
    spawn redis-server "$ROOT/deploy/redis/service.conf" --port 0 \
      --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
      --dir "$dir" --save "" --logfile "$dir/redis.log"
    for _ in $(seq 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.05; done
    [ -S "$dir/redis.sock" ] || die "redis-server did not start; see $dir/redis.log"
    say "private Redis at $REDIS_URL"
  fi
  flock -u "$lock"
  exec {lock}>&-
}

# redis_answers SOCKET: a redis-server answers PING on that unix socket.
redis_answers() {
  "$VENV/bin/python" -c 'import sys, redis
redis.Redis(unix_socket_path=sys.argv[1], socket_timeout=1, socket_connect_timeout=1).ping()' \
    "$1" >/dev/null 2>&1
}
