# Shared by the letsencrypt commands: settings, certbot invocation, loud errors.
# shellcheck shell=bash

LE_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
LE_REPO=$(cd "$LE_DIR/../.." && pwd)
. "$LE_REPO/deploy/usage.sh"

# The app's virtualenv provides python-dotenv (the settings file is read as the
# app reads its .env) and Jinja2 (install-schedule): APP_VENV from the
# environment, else the checkout's .venv (scripts/test, scripts/stack), else
# ../venv beside the checkout (deploy/README.md: /srv/flask-service/{app,venv}).
app_venv() {
  local dir
  for dir in ${APP_VENV:+"$APP_VENV"} "$LE_REPO/.venv" "$LE_REPO/../venv"; do
    if [ -x "$dir/bin/python" ]; then (cd "$dir" && pwd); return 0; fi
    [ -z "${APP_VENV:-}" ] || break
  done
  le_error "no app virtualenv at ${APP_VENV:-$LE_REPO/.venv or $LE_REPO/../venv}: set APP_VENV to the one deploy/README.md installs"
  return 1
}

# The settings below, in the environment or in LETSENCRYPT_ENV_FILE (the environment
# wins). The file is read by python-dotenv's `dotenv` command, the parser the app
# uses for its .env: quotes, `export`, comments and a key set twice (the last one
# counts) mean the same everywhere. One file serves the timer, cron, the hook that
# certbot runs, and an operator's shell alike.
LE_SETTINGS=(CERTBOT_VENV CERTBOT_CONFIG_DIR CERTBOT_WORK_DIR CERTBOT_LOGS_DIR ACME_SERVER
  ACME_WEBROOT TLS_CERT TLS_KEY NGINX_BIN NGINX_CONF NGINX_PREFIX CERT_PROFILE CERT_MIN_DAYS METRICS_DIR
  PYTHON)

load_settings() {
  local file=${LETSENCRYPT_ENV_FILE:-/etc/letsencrypt/deploy.env} venv line key listed
  if [ -f "$file" ]; then
    venv=$(app_venv) || return 1
    # `list` prints KEY=value lines (values unquoted, one line each).
    listed=$("$venv/bin/dotenv" -f "$file" list) || { le_error "cannot read $file"; return 1; }
    while IFS= read -r line; do
      key=${line%%=*}
      [[ " ${LE_SETTINGS[*]} " == *" $key "* ]] || continue
      [ -n "${!key+set}" ] || export "$key=${line#*=}"
    done <<<"$listed"
  fi
  export CERTBOT_VENV=${CERTBOT_VENV:-/opt/certbot}
  export CERTBOT_CONFIG_DIR=${CERTBOT_CONFIG_DIR:-/etc/letsencrypt}
  export CERTBOT_WORK_DIR=${CERTBOT_WORK_DIR:-/var/lib/letsencrypt}
  export CERTBOT_LOGS_DIR=${CERTBOT_LOGS_DIR:-/var/log/letsencrypt}
  export ACME_WEBROOT=${ACME_WEBROOT:-/var/www/acme}
  export NGINX_BIN=${NGINX_BIN:-nginx}
}

# Errors go to stderr (certbot, systemd's journal and cron mail pick that up)
# and to syslog/journal under the tag "letsencrypt", where one is listening.
le_error() {
  printf 'letsencrypt: error: %s\n' "$*" >&2
  if command -v logger >/dev/null 2>&1; then
    logger -t letsencrypt -p daemon.err -- "$*" 2>/dev/null || true
  fi
}

le_info() { printf 'letsencrypt: %s\n' "$*"; }

# certbot from its own virtualenv, with the configured directories.
certbot_run() {
  local certbot=$CERTBOT_VENV/bin/certbot
  [ -x "$certbot" ] || { le_error "no certbot at $certbot: run $LE_DIR/setup"; return 1; }
  "$certbot" "$1" --non-interactive --config-dir "$CERTBOT_CONFIG_DIR" \
    --work-dir "$CERTBOT_WORK_DIR" --logs-dir "$CERTBOT_LOGS_DIR" "${@:2}"
}

# nginx with the configured binary, prefix and config file.
nginx_run() {
  local args=()
  [ -z "${NGINX_PREFIX:-}" ] || args+=(-p "$NGINX_PREFIX")
  [ -z "${NGINX_CONF:-}" ] || args+=(-c "$NGINX_CONF")
  "$NGINX_BIN" "${args[@]}" "$@"
}

# The deploy hook lives in this repository; certbot finds it through a link in
# its renewal-hooks/deploy/ directory, so a manual `certbot renew` runs it too.
install_hook() {
  local dir=$CERTBOT_CONFIG_DIR/renewal-hooks/deploy
  mkdir -p "$dir"
  ln -sfn "$LE_DIR/renewal-hooks/deploy/reload-nginx" "$dir/50-reload-nginx"
}

# Replace PATH with a symlink to TARGET atomically (nginx never sees a gap).
link_atomically() {
  local target=$1 path=$2
  mkdir -p "$(dirname "$path")"
  ln -sfn "$target" "$path.new.$$"
  mv -Tf "$path.new.$$" "$path"
}
