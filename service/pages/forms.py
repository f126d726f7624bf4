from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired


class CredentialsForm(FlaskForm):
    username = StringField("Username", validators=[InputRequired()])
    password = PasswordField("Password", validators=[InputRequired()])


class PasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[InputRequired()])
    new_password = PasswordField("New password", validators=[InputRequired()])


class ConfirmForm(FlaskForm):
    """A button that changes state: only the CSRF token."""


class DeleteAccountForm(FlaskForm):
    password = PasswordField("Password", validators=[InputRequired()])
