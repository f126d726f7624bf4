# The `flask` command (Flask reads this file; .env wins): the app with the
# maintenance commands, and the private Redis of scripts/run (service/cli.py).
FLASK_APP=service.cli:create_cli_app
