"""Render deploy/ templates (*.j2) with Jinja2: one environment for every renderer.

StrictUndefined makes a value a template names but nobody gave an error; nginx's
own `$variables` pass through untouched. Used by deploy/nginx/render (import) and
deploy/letsencrypt/install-schedule (command line, under the app's virtualenv):

    python deploy/render_template.py TEMPLATE OUTPUT [NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jinja2


def environment(directory: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False,
    )


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace PATH atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/render_template.py",
                                     description="Render one Jinja2 template into OUTPUT.")
    parser.add_argument("template", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("values", nargs="*", metavar="NAME=VALUE")
    opts = parser.parse_args(argv)
    if any("=" not in item for item in opts.values):
        parser.error("values are NAME=VALUE")
    values = dict(item.split("=", 1) for item in opts.values)
    try:
        text = environment(opts.template.parent).get_template(opts.template.name).render(values)
    except jinja2.TemplateError as exc:
        print(f"render_template: {opts.template}: {exc}", file=sys.stderr)
        return 1
    write(opts.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
