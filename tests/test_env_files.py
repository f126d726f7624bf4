"""Every reader of the env-file format gives the same answer (python-dotenv's).

The readers: the app (service.config.load_dotenv_file), scripts/lib.sh
(dotenv_value, for scripts/run and scripts/stack), deploy/letsencrypt/lib.sh
(load_settings) and deploy/nginx/render (--env-file). Each file below once
meant different things to different readers.
"""

from __future__ import annotations

import io
import json
import os
import runpy
import subprocess
import sys

import pytest
from dotenv import dotenv_values

from tests.support.nginx import RENDER
from tests.support.processes import ROOT

KEY = "NGINX_CONF"  # a setting deploy/letsencrypt reads; the other readers take any name
ABSENT = None

CASES = {
    "set twice": ("K=first\nK=second\n", "second"),
    "set twice, quoted then export": ("K='one'\nexport K=\"two\"\n", "two"),
    "double quotes": ('K="a value # not a comment"\n', "a value # not a comment"),
    "single quotes": ("K='single $HOME'\n", "single $HOME"),
    "escaped quote": ('K="say \\"hi\\""\n', 'say "hi"'),
    "export": ("export K=exported\n", "exported"),
    "comments": ("# K=commented\nK=real # a comment\n", "real"),
    "spaces": ("  K  =  spaced value  \n", "spaced value"),
    "empty": ("K=\n", ""),
    "no value": ("K=set\nK\n", ABSENT),
    "CRLF": ("K=crlf\r\nOTHER=1\r\n", "crlf"),
}


def clean_env(**extra) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return {**env, **extra}


def run(args, **env) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env=clean_env(**env), check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def read_by_app(path):
    code = ("import json, os; from service.config import load_dotenv_file; "
            f"load_dotenv_file({str(path)!r}); print(json.dumps(os.environ.get({KEY!r})))")
    return json.loads(run([sys.executable, "-c", code]))


def read_by_scripts_lib(path):
    # dotenv_value prints nothing for a key without a value: "" and absent look alike.
    return run(["bash", "-c", f'. scripts/lib.sh && dotenv_value {KEY}'], DOTENV_PATH=str(path))


def read_by_letsencrypt_lib(path):
    out = run(["bash", "-c", (f'. deploy/letsencrypt/lib.sh && load_settings && '
                             f'if [ -n "${{{KEY}+set}}" ]; then printf "=%s" "${KEY}"; fi')],
              LETSENCRYPT_ENV_FILE=str(path))
    return out[1:] if out.startswith("=") else ABSENT


def read_by_nginx_render(path):
    return runpy.run_path(str(RENDER), run_name="render")["read_env_file"](str(path)).get(KEY)


@pytest.mark.parametrize("name", CASES)
def test_every_reader_agrees(tmp_path, name):
    text, expected = CASES[name]
    text = text.replace("K", KEY)
    path = tmp_path / "settings.env"
    path.write_bytes(text.encode())
    assert dotenv_values(stream=io.StringIO(text)).get(KEY) == expected  # the reference
    assert read_by_app(path) == expected
    assert read_by_nginx_render(path) == expected
    assert read_by_letsencrypt_lib(path) == expected
    assert read_by_scripts_lib(path) == ("" if expected is None else expected + "\n")


def test_the_environment_wins_over_the_file(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text(f"{KEY}=from-file\n")
    out = run(["bash", "-c", f'. deploy/letsencrypt/lib.sh && load_settings && printf %s "${KEY}"'],
              LETSENCRYPT_ENV_FILE=str(path), **{KEY: "from-env"})
    assert out == "from-env"
    code = ("import os; from service.config import load_dotenv_file; "
            f"load_dotenv_file({str(path)!r}); print(os.environ[{KEY!r}], end='')")
    assert run([sys.executable, "-c", code], **{KEY: "from-env"}) == "from-env"
