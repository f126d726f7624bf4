"""Server-rendered pages: the same flows as the API, with forms.

No inline scripts or styles anywhere, so the strict CSP holds; every form
carries a CSRF token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for

from .. import accounts
from ..accounts import UsernameTaken, ValidationFailed, WrongPassword
from ..ratelimit import auth_per_ip, failures_per_account, failures_per_user
from .forms import ConfirmForm, CredentialsForm, DeleteAccountForm, PasswordForm

bp = Blueprint("pages", __name__)

# Why a page was sent to the login page (service/static/events.js): fixed
# texts by code, so the query string cannot put words on the page.
LOGGED_OUT = {
    "logout": "You logged out in another tab or window.",
    "revoked": "This session was ended from another session.",
    "password": "Your password was changed; log in with the new one.",
    "deleted": "The account was deleted.",
    "expired": "Your session expired. Log in again.",
    "ended": "Your session has ended. Log in again.",
}


def safe_next(target: str | None, default: str = "/account") -> str:
    """Only same-origin paths: no scheme, no host, no '//' or '\\' tricks."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 32 for c in target) or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


@bp.app_template_filter("datetime")
def format_timestamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def to_login():
    return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))


login_required = accounts.login_required(to_login)


@bp.get("/")
def index():
    return render_template("index.html", user=accounts.current_user())


@bp.route("/register", methods=["GET", "POST"])
@auth_per_ip
def register():
    form = CredentialsForm()
    status = 200
    if form.validate_on_submit():
        try:
            accounts.register(form.username.data, form.password.data)
        except ValidationFailed as exc:
            for name, message in exc.fields.items():
                getattr(form, name).errors.append(message)
            status = 422
        except UsernameTaken:
            form.username.errors.append("That username is taken.")
            status = 409
        else:
            return redirect(url_for("pages.login", registered=1))
    elif form.is_submitted():
        status = 422
    return render_template("register.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
@auth_per_ip
@failures_per_account
def login():
    form = CredentialsForm()
    target = safe_next(request.args.get("next"))
    status = 200
    if form.validate_on_submit():
        user = accounts.authenticate(form.username.data, form.password.data)
        if user is not None:
            accounts.start_session(user)
            return redirect(target)
        form.password.errors.append("Invalid username or password.")
        status = 401
    elif form.is_submitted():
        status = 422
    return render_template("login.html", form=form, next=target,
                           registered="registered" in request.args,
                           reason=LOGGED_OUT.get(request.args.get("reason", ""))), status


@bp.post("/logout")
def logout():
    form = ConfirmForm()
    if form.validate_on_submit():
        accounts.end_session()
    response = redirect(url_for("pages.index"))
    response.headers["Clear-Site-Data"] = accounts.CLEAR_SITE_DATA
    return response


def account_page(user, password_form=None, delete_form=None, status=200):
    """The account page; a form given here shows its data and errors."""
    if password_form is None:
        password_form = PasswordForm()
    if delete_form is None:
        delete_form = DeleteAccountForm()
    return render_template("account.html", user=user, password_form=password_form,
                           delete_form=delete_form), status


@bp.get("/account")
@login_required
def account(user):
    return account_page(user)


@bp.post("/account/password")
@login_required
@auth_per_ip
@failures_per_user
def change_password(user):
    form = PasswordForm()
    status = 422
    if form.validate_on_submit():
        try:
            accounts.change_password(user, form.current_password.data, form.new_password.data)
        except ValidationFailed as exc:
            form.new_password.errors.extend(exc.fields.values())
        except WrongPassword:
            form.current_password.errors.append("The current password is wrong.")
            status = 401
        except accounts.AccountGone:
            return to_login()
        else:
            flash("Password changed. Every other session was logged out.")
            return redirect(url_for("pages.account"))
    return account_page(user, password_form=form, status=status)


@bp.post("/account/delete")
@login_required
@auth_per_ip
@failures_per_user
def delete_account(user):
    form = DeleteAccountForm()
    if form.validate_on_submit():
        try:
            accounts.delete_account(user, form.password.data)
        except WrongPassword:
            form.password.errors.append("The password is wrong.")
            return account_page(user, delete_form=form, status=401)
        headers = {"Clear-Site-Data": accounts.CLEAR_SITE_DATA}
        return render_template("deleted.html"), 200, headers
    return account_page(user, delete_form=form, status=422)


@bp.get("/sessions")
@login_required
def sessions(user):
    return render_template("sessions.html", user=user, sessions=accounts.list_sessions(user),
                           form=ConfirmForm())


@bp.post("/sessions/<handle>/revoke")
@login_required
def revoke(user, handle):
    if ConfirmForm().validate_on_submit():
        accounts.revoke_session(user, handle)
    if accounts.current_user() is None:  # revoked the current session
        return redirect(url_for("pages.index"))
    return redirect(url_for("pages.sessions"))


@bp.post("/sessions/revoke-others")
@login_required
def revoke_others(user):
    if ConfirmForm().validate_on_submit():
        count = accounts.revoke_other_sessions(user)
        flash(f"Logged out {count} other session(s).")
    return redirect(url_for("pages.sessions"))
