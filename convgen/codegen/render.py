"""Jinja2 rendering of the boilerplate around emitted code (headers, includes,
signatures). Logic stays in Python; templates only lay text out."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

_PACKAGE = Path(__file__).resolve().parents[1]
# The repository's templates/ folder; a wheel installs the same files as convgen/templates/.
TEMPLATE_DIRS = [_PACKAGE / "templates", _PACKAGE.parent / "templates"]


@lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS if d.is_dir()]),
        undefined=jinja2.StrictUndefined,  # a missing value is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)
