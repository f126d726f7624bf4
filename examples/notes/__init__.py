"""An example feature: notes kept in the session (README.md, "Extending it").

What it shows, one view each:

* a page with a form (Flask-WTF: the CSRF token is a hidden field);
* a JSON route for API clients (the token goes in the X-CSRF-Token header,
  fetched from GET /api/csrf);
* data in the server-side session (``session["notes"]``) and in the shared
  Redis client (``current_app.extensions["redis"]``: a counter for everyone);
* a rate limit (Flask-Limiter, counters in the same Redis);
* a webhook exempted from CSRF (another server calls it, not a browser),
  which authenticates its caller by an HMAC-SHA256 signature instead.

Copy it to service/notes/ and register it in create_app (service/__init__.py):

    from .notes import bp as notes_bp
    app.register_blueprint(notes_bp)
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, abort, current_app, redirect, render_template, request, session
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import InputRequired, Length

from service.extensions import csrf, limiter

bp = Blueprint("notes", __name__, url_prefix="/notes", template_folder="templates")

MAX_NOTES = 20
COUNTER = "notes:saved"  # one Redis key for all users and workers
INBOX = "notes:inbox"


class NoteForm(FlaskForm):
    text = StringField("Note", validators=[InputRequired(), Length(max=200)])


def _add(text: str) -> list[str]:
    # Assign a new list: the session store saves the keys a request set.
    notes = [*session.get("notes", []), text][-MAX_NOTES:]
    session["notes"] = notes
    current_app.extensions["redis"].incr(COUNTER)
    return notes


@bp.route("/", methods=["GET", "POST"])
@limiter.limit("30 per minute", methods=["POST"])
def page():
    form = NoteForm()
    if form.validate_on_submit():  # POST with a valid CSRF token
        _add(form.text.data)
        return redirect(request.path, code=303)
    saved = int(current_app.extensions["redis"].get(COUNTER) or 0)
    return render_template("notes/index.html", form=form, notes=session.get("notes", []),
                           saved=saved)


@bp.post("/api")
@limiter.limit("30 per minute")
def add_note():
    body = request.get_json()  # not JSON: 415; broken JSON: 400 (service/errors.py)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not 0 < len(text) <= 200:
        return {"error": "validation_failed", "message": "text: 1 to 200 characters"}, 422
    return {"notes": _add(text)}, 201


@bp.post("/webhook")
@csrf.exempt
def webhook():
    """Called by another server with ``X-Signature: sha256=<hex HMAC of the body>``."""
    secret = current_app.config["NOTES_WEBHOOK_SECRET"].encode()
    expected = "sha256=" + hmac.new(secret, request.get_data(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Signature", "")):
        abort(401)
    current_app.extensions["redis"].rpush(INBOX, request.get_data())
    return "", 204
