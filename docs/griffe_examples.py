"""A griffe extension for the documentation build (``mkdocs.yml``), not part of the package.

onebyone's docstrings title their doctest section ``Example:``, which griffe's Google
parser reads as an admonition (Markdown, where ``>>>`` is a block quote). This
extension renames it ``Examples:`` before the docstring is parsed, so mkdocstrings
renders it as code.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

__all__ = ["ExampleSections"]

_EXAMPLE = re.compile(r"^(\s*)Example:(\s*)$", re.MULTILINE)


class ExampleSections(Extension):
    """Read every ``Example:`` section of a docstring as griffe's ``Examples:`` section."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:\2", obj.docstring.value)
