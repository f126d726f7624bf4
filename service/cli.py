"""The ``flask`` command: the app it loads, and the operator's commands.

``.flaskenv`` sets ``FLASK_APP=service.cli:create_cli_app``, so in the
checkout ``.venv/bin/flask routes`` (or ``shell``, ``users``, ``sessions``)
works with nothing exported: the settings come from ``.env``, and when
REDIS_URL is not set there, the app uses the private Redis that scripts/run
and scripts/stack keep under ``.state/redis`` (STATE_DIR). Commands that need
Redis while it is not running say in one line how to start it.

create_app registers the commands (register_accounts calls init_app), so
they exist for every app the factory builds, ``wsgi:app`` included.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup, NoAppException, ScriptInfo
from redis.exceptions import RedisError

from . import ConfigError, Settings, create_app, load_dotenv_file
from .config import redact_url

CHECKOUT = Path(__file__).resolve().parent.parent


def private_redis_dir() -> Path:
    """Where scripts/run and scripts/stack keep their private Redis (scripts/lib.sh)."""
    return Path(os.environ.get("STATE_DIR") or CHECKOUT / ".state") / "redis"


def create_cli_app():
    """The app for the ``flask`` command (FLASK_APP in .flaskenv)."""
    load_dotenv_file(os.environ.get("DOTENV_PATH") or CHECKOUT / ".env")
    environ = dict(os.environ)
    if not environ.get("REDIS_URL", "").strip():
        private = private_redis_dir()
        if not private.is_dir():
            raise NoAppException(
                "REDIS_URL is not set and there is no private Redis yet: "
                "run scripts/run once (or set REDIS_URL in .env)."
            )
        environ["REDIS_URL"] = f"unix://{private / 'redis.sock'}"
    try:
        return create_app(Settings.from_env(environ))
    except ConfigError as exc:
        raise NoAppException(str(exc)) from None


class RedisCommands(AppGroup):
    """Commands that talk to Redis: trouble there is one line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RedisError as exc:
            # The app context has ended with the subcommand; the app has not.
            app = ctx.ensure_object(ScriptInfo).load_app()
            url = redact_url(app.extensions["settings"].redis_url)
            raise click.ClickException(
                f"Redis at {url} is not answering ({type(exc).__name__}): start scripts/run "
                "or scripts/stack (they run the private Redis), or set REDIS_URL."
            ) from None


users = RedisCommands("users", help="Accounts: create and list them.")
sessions = RedisCommands("sessions", help="Users' live sessions: list and end them.")


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _user(username: str):
    from .accounts import accounts, normalize_username

    user = accounts().find(normalize_username(username))
    if user is None:
        raise click.ClickException(f"no user named {username!r}")
    return user


@users.command("create")
@click.argument("username")
@click.password_option(help="The password (asked twice when not given).")
def create_user(username: str, password: str) -> None:
    """Create the account USERNAME, as registering does."""
    from .accounts import UsernameTaken, ValidationFailed, register

    try:
        user = register(username, password)
    except ValidationFailed as exc:
        raise click.ClickException(f"not created: {exc}") from None
    except UsernameTaken:
        raise click.ClickException(f"not created: the username {username!r} is taken") from None
    click.echo(f"created {user.username} (uid {user.uid})")


@users.command("list")
def list_users() -> None:
    """Print every username, one a line, sorted."""
    client = current_app.extensions["redis"]
    names = sorted(key.decode().removeprefix("username:")
                   for key in client.scan_iter(match="username:*", count=500))
    for name in names:
        click.echo(name)


@sessions.command("list")
@click.argument("username")
def list_sessions(username: str) -> None:
    """Print USERNAME's live sessions: handle, created, last seen, address, browser."""
    from .accounts import describe_sessions

    for s in describe_sessions(_user(username)):
        click.echo("\t".join((s["handle"], _when(s["created"]), _when(s["last_seen"]),
                              s["ip"] or "-", s["user_agent"] or "-")))


@sessions.command("end")
@click.argument("username")
@click.argument("handle", required=False)
@click.option("--all", "end_all", is_flag=True, help="End every session of the user.")
def end_sessions(username: str, handle: str | None, end_all: bool) -> None:
    """End USERNAME's session HANDLE (from `sessions list`), or --all of them.
    The browser holding it is logged out on its next request. (Handles are
    hex; one of a session made before that may start with '-': put -- before
    it.)"""
    from .accounts import end_sessions as end

    if bool(handle) == end_all:
        raise click.UsageError("give either a HANDLE or --all")
    user = _user(username)
    count = end(user) if end_all else end(user, only={handle})
    if handle and not count:
        raise click.ClickException(f"{username} has no live session {handle!r}")
    click.echo(f"ended {count} session{'s' * (count != 1)} of {user.username}")


@sessions.command("purge-index")
def purge_index() -> None:
    """Remove index entries of sessions that ended (expired or deleted), for all users."""
    from .accounts import accounts

    click.echo(f"removed {accounts().prune_session_indexes()} index entries of ended sessions")


def init_app(app) -> None:
    app.cli.add_command(users)
    app.cli.add_command(sessions)

    @app.shell_context_processor
    def shell_context():
        return {"redis": app.extensions["redis"], "settings": app.extensions["settings"]}
