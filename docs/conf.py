"""Sphinx configuration of jaxscale's docs: the Markdown pages of this folder (MyST) and an
API reference generated from the docstrings (autodoc + autosummary). Build: `make docs`."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")

project = "jaxscale"
author = "the jaxscale developers"
copyright = "the jaxscale developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_autosummary/*.tmp"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: autodoc documents the members themselves
autodoc_typehints_format = "fully-qualified"
# `typing.Iterator` in a signature also names jaxscale.generator's Iterator class; the
# ambiguity is harmless, and the one warning of this kind.
suppress_warnings = ["ref.python"]
# Docstrings write `name` for code, as Markdown does.
default_role = "code"

html_theme = "sphinx_book_theme"
html_title = "jaxscale"


_LONE_ASTERISK = re.compile(r"(?<![\\*])\*(?!\*)")


def _plain_asterisks(app, what, name, obj, options, lines):
    """Docstrings write shapes as plain text (`float32[*S]`, `H*W*C`): escape a lone `*`
    outside backticks so reStructuredText does not read it as emphasis."""
    for index, line in enumerate(lines):
        if line.lstrip().startswith("* "):
            continue  # a bullet
        parts = line.split("`")
        parts[::2] = [_LONE_ASTERISK.sub(r"\\*", part) for part in parts[::2]]
        lines[index] = "`".join(parts)


def setup(app):
    app.connect("autodoc-process-docstring", _plain_asterisks, priority=400)
