"""The JSON API: accounts, login/logout and session management.

State-changing requests need the token from ``GET /api/csrf`` in the
``X-CSRF-Token`` header. Errors are ``{"error": "<code>", "message": "..."}``.
"""

from __future__ import annotations

from flask import Blueprint, abort, request
from flask_wtf.csrf import generate_csrf

from .. import accounts
from ..accounts import UsernameTaken, ValidationFailed, WrongPassword
from ..ratelimit import auth_per_ip, failures_per_account, failures_per_user
from .errors import api_error

bp = Blueprint("api", __name__, url_prefix="/api")


def json_object() -> dict:
    body = request.get_json()
    if not isinstance(body, dict):
        abort(api_error(400, "bad_request", "The request body must be a JSON object."))
    return body


def not_logged_in():
    return api_error(401, "unauthorized", "Log in first.")


login_required = accounts.login_required(not_logged_in)


@bp.get("/csrf")
def csrf_token():
    return {"csrf_token": generate_csrf()}, 200, {"Cache-Control": "no-store"}


@bp.post("/auth/register")
@auth_per_ip
def register():
    body = json_object()
    try:
        user = accounts.register(body.get("username"), body.get("password"))
    except ValidationFailed as exc:
        return api_error(422, "validation_failed", "Some fields are not valid.", fields=exc.fields)
    except UsernameTaken:
        return api_error(409, "username_taken", "That username is taken.")
    return {"username": user.username}, 201


@bp.post("/auth/login")
@auth_per_ip
@failures_per_account
def login():
    body = json_object()
    user = accounts.authenticate(body.get("username"), body.get("password"))
    if user is None:
        return api_error(401, "invalid_credentials", "Invalid username or password.")
    accounts.start_session(user)
    # The CSRF secret was renewed with the session id: hand out a new token.
    return {"username": user.username, "csrf_token": generate_csrf()}


@bp.post("/auth/logout")
def logout():
    accounts.end_session()
    return "", 204, {"Clear-Site-Data": accounts.CLEAR_SITE_DATA}


@bp.get("/me")
@login_required
def me(user):
    return {"username": user.username, "account_number": user.account_number}


@bp.post("/auth/password")
@login_required
@auth_per_ip
@failures_per_user
def change_password(user):
    body = json_object()
    try:
        accounts.change_password(user, body.get("current_password"), body.get("new_password"))
    except ValidationFailed as exc:
        return api_error(422, "validation_failed", "Some fields are not valid.", fields=exc.fields)
    except WrongPassword:
        return api_error(401, "invalid_credentials", "The current password is wrong.")
    except accounts.AccountGone:
        return not_logged_in()
    return "", 204


@bp.delete("/account")
@login_required
@auth_per_ip
@failures_per_user
def delete_account(user):
    body = json_object()
    try:
        accounts.delete_account(user, body.get("password"))
    except WrongPassword:
        return api_error(401, "invalid_credentials", "The password is wrong.")
    return "", 204, {"Clear-Site-Data": accounts.CLEAR_SITE_DATA}


@bp.get("/sessions")
@login_required
def sessions(user):
    return {"sessions": accounts.list_sessions(user)}


@bp.delete("/sessions/<handle>")
@login_required
def revoke(user, handle):
    if not accounts.revoke_session(user, handle):
        return api_error(404, "not_found", "No such session.")
    return "", 204


@bp.post("/sessions/revoke-others")
@login_required
def revoke_others(user):
    accounts.revoke_other_sessions(user)
    return "", 204
