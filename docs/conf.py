"""Sphinx configuration of the surveydust documentation.

Build: ``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html`` (the test run
builds it too, warnings as errors: ``tests/test_docs.py``). Guide pages are Markdown (MyST);
the API reference is generated from the docstrings (autodoc + napoleon, numpydoc style).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the checkout's package, also without an editable install
# importing the modules that build networks loads Keras; keep its start-up lines off the build log
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from surveydust.provenance import VERSION

project = "surveydust"
author = "the surveydust developers"
copyright = "the surveydust developers, BSD-3-Clause"
release = VERSION
version = ".".join(VERSION.split(".")[:2])

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "build", "Thumbs.db", ".DS_Store"]  # build/: where docs/development.md builds to
root_doc = "index"

# Markdown: `#`-anchors for headings down to ###, so pages link to each other's sections
myst_heading_anchors = 3

# API reference: numpydoc-style sections read by napoleon
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written (``DEMO_SIZE``), not their repr
python_maximum_signature_line_length = 100
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes" as fields, never a second description of the same attribute
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"surveydust {release}"
html_theme_options = {"description": "Dust of z > 6 galaxies from JWST images with CNNs, on Dask",
                      "fixed_sidebar": True, "page_width": "1400px", "sidebar_width": "240px",
                      "body_max_width": "none"}  # code lines of up to 120 characters, wide tables


# ---------------------------------------------------------------- the package's "name : description" lines

#: numpydoc sections whose entries are ``name : type`` lines
_ENTRY_SECTIONS = {"Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Attributes",
                   "Keyword Arguments"}
#: what a numpydoc type looks like: dotted names joined by "or", "of", "to", "|" or commas,
#: optionally subscripted, optionally ", optional" (``pathlib.Path or str``, ``dict of str to
#: xarray.Dataset``, ``list[str]``)
_TYPE = re.compile(r"[\w.]+(?:\[[^\]]*\])?(?:\s*(?:,|\bor\b|\bof\b|\bto\b|\|)\s*[\w.]+(?:\[[^\]]*\])?)*"
                   r"(?:,\s*optional)?")
_RULE = re.compile(r"-{3,}")
#: a line that is only entry names (``name``, ``a, b``, ``**overrides``), with or without `` : ...``
_NAMES = re.compile(r"[\w*]+(?:\s*,\s*[\w*]+)*(?:\s+:.*)?")
_ENTRY = re.compile(r"(?P<indent>\s*)(?P<name>[\w*]+(?:\s*,\s*[\w*]+)*)\s+:\s+(?P<rest>.+)")


def describe_entries(lines: list[str]) -> list[str]:
    """Read the package's numpydoc sections as numpydoc means them.

    Two habits of the package's docstrings are rewritten before napoleon reads a section of
    entries (``Parameters``, ``Returns``, ...):

    - a short parameter written as ``name : what it is`` on one line: napoleon would show the
      prose as the type, so the line becomes ``name`` plus an indented description (its
      continuation lines are already indented under it); ``name : type`` lines (the text after
      `` : `` looks like a type) are kept;
    - a paragraph after the last entry, at the entries' indentation and after a blank line,
      that is neither an entry nor a type (``The client owns any cluster it started ...``):
      numpydoc has no free text inside a section, so it goes under a ``Notes`` heading.

    Parameters
    ----------
    lines
        The docstring's lines.

    Returns
    -------
    list of str
        The lines with those entries rewritten.
    """
    out: list[str] = []
    section: str | None = None
    entry_indent: int | None = None
    previous_blank = False
    for k, line in enumerate(lines):
        nxt = lines[k + 1] if k + 1 < len(lines) else ""
        stripped = line.strip()
        blank = not stripped
        if stripped and _RULE.fullmatch(nxt.strip()) and not _RULE.fullmatch(stripped):
            section, entry_indent = stripped, None
        elif section in _ENTRY_SECTIONS and stripped and not _RULE.fullmatch(stripped):
            indent = len(line) - len(line.lstrip())
            if entry_indent is None:
                entry_indent = indent
            elif indent == entry_indent and previous_blank and not _NAMES.fullmatch(stripped) \
                    and not _TYPE.fullmatch(stripped):
                out += [f"{line[:indent]}Notes", f"{line[:indent]}-----"]
                section = "Notes"
            match = _ENTRY.fullmatch(line)
            if section != "Notes" and indent == entry_indent and match and not _TYPE.fullmatch(match["rest"].strip()):
                out.append(f"{match['indent']}{match['name']}")
                out.append(f"{match['indent']}    {match['rest']}")
                previous_blank = False
                continue
        out.append(line)
        previous_blank = blank
    return out


#: ``|x|`` in a docstring: an absolute value (the package defines no reST substitutions)
_ABS = re.compile(r"(?<![\\|\w`])\|(?=[^\s|])([^|`\n]*?[^\s|\\])\|(?![\w|`])")


def escape_absolute_values(lines: list[str]) -> list[str]:
    """Escape ``|x|`` (absolute values, as the docstrings write them) so reST does not read a
    substitution reference; inline literals are left alone."""
    out = []
    for line in lines:
        parts = line.split("``")
        parts[::2] = [_ABS.sub(r"\\|\1\\|", p) for p in parts[::2]]
        out.append("``".join(parts))
    return out


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = escape_absolute_values(describe_entries(lines))


def setup(app):
    # before napoleon (priority 500), which turns the sections into fields
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    return {"parallel_read_safe": True}
