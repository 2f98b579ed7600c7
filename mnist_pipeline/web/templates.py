"""HTML of the Model Registry page (Jinja2, autoescaped): the overview, one version's page, one
run's decision.

The templates are files in `templates/` next to this module, shipped as package data.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = ["render"]

_TEMPLATE_DIR = Path(__file__).with_name("templates")
_FILES = {"overview": "overview.html", "version": "version.html", "run": "run.html"}


def render(template: str, **context: Any) -> str:
    """`template` is "overview", "version" or "run"."""
    try:
        name = _FILES[template]
    except KeyError:
        raise ValueError(f"unknown template {template!r}; expected one of {sorted(_FILES)}") from None
    return _environment().get_template(name).render(**context)


@functools.cache
def _environment() -> Any:
    # Imported here, not at module level, so importing the package stays cheap for DAG parsing.
    import jinja2

    # The folder next to this file: the same path in a source checkout, an editable install and a wheel.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
