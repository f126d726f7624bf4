"""Abuse limits on login and registration (Flask-Limiter, counters in Redis).

* ``auth_per_ip``: every login and registration attempt counts against the
  client address (AUTH_RATE_LIMIT).
* ``failures_per_account``: failed logins (401) count against the pair
  (account, client address) (LOGIN_FAILURE_LIMIT). Keying on the pair means
  an attacker failing logins for a victim's account from elsewhere exhausts
  only their own budget: the victim, from their own address, can still log in.

Over the limit: 429 with Retry-After.
"""

from __future__ import annotations

from flask import current_app, request, session
from flask_limiter.util import get_remote_address

from .accounts.store import normalize_username
from .extensions import limiter


def _settings():
    return current_app.extensions["settings"]


def _account_and_address() -> str:
    body = request.get_json(silent=True) if request.is_json else request.form
    username = body.get("username") if hasattr(body, "get") else None
    account = normalize_username(username) or session.get("uid", "")
    return f"{account}|{get_remote_address()}"


def _failed(response) -> bool:
    return response.status_code == 401


# Only attempts count: showing a login form (GET) does not.
ATTEMPTS = ["POST", "DELETE"]

auth_per_ip = limiter.shared_limit(
    lambda: _settings().auth_rate_limit, scope="auth-per-ip", methods=ATTEMPTS
)
failures_per_account = limiter.limit(
    lambda: _settings().login_failure_limit,
    key_func=_account_and_address,
    deduct_when=_failed,
    methods=ATTEMPTS,
)
